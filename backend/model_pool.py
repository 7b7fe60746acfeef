"""Loaded generators, least recently used evicted under a memory budget (shared by all clients), and
the devices and model files they come from (``backend.models`` is the registry)."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from draggan_wire import protocol

from . import models

log = logging.getLogger("draggan.backend")
Emit = Callable[[protocol.Progress], None]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; anything else is checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is usable by this torch build; use --device cpu")
    torch.device(device)  # raises for nonsense
    return device


def device_memory(device: str) -> tuple[int, int]:
    """(total, used) bytes of the device's memory (host RAM for the CPU); (0, 0) when unknown."""
    try:
        if device.startswith("cuda"):
            free, total = torch.cuda.mem_get_info(torch.device(device))
            return int(total), int(total - free)
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        avail = page * os.sysconf("SC_AVPHYS_PAGES")
        return int(total), int(total - avail)
    except (ValueError, OSError, RuntimeError, AttributeError):
        return 0, 0


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class UnknownModel(LookupError):
    pass


def resolve_model(name: str, extra: Mapping[str, Path]) -> Path:
    """The file of model ``name`` (``extra``: name -> file given on the command line), else UnknownModel."""
    try:
        return models.resolve_model(name, extra=extra)
    except models.ModelError as exc:
        raise UnknownModel(str(exc)) from None


@dataclass
class LoadedModel:
    name: str
    G: Any  # stylegan2.Generator
    nbytes: int
    last_used: float
    encoder: Any = None  # inversion.encoder.LatentEncoder trained for this file, when one ships with it


def encoder_path(model_path: Path) -> Path:
    """Where a model file's W+ encoder lives: ``NAME.encoder.pt`` beside ``NAME.pt``."""
    return model_path.with_name(model_path.stem + ".encoder.pt")


class ModelPool:
    """Generators by name, loaded on demand; least recently used ones are dropped when the sum of
    their weights would exceed ``max_bytes`` (None = no limit; the model in use is never dropped).

    ``loader(path, device) -> G`` defaults to ``stylegan2.load_generator``. Thread-safe.
    """

    def __init__(self, extra: Mapping[str, Path], device: str, max_bytes: int | None = None,
                 loader: Callable[[Path, str], Any] | None = None,
                 on_evict: Callable[[str], None] | None = None) -> None:
        self.extra = {k: Path(v) for k, v in extra.items()}
        self.device = device
        self.max_bytes = max_bytes
        self._loader = loader
        self._on_evict = on_evict
        self._loaded: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._sizes: dict[str, tuple[int, int]] = {}  # name -> (width, height) learnt from loading
        self._lock = threading.RLock()
        self.evictions = 0

    def _load_file(self, path: Path) -> Any:
        if self._loader is not None:
            return self._loader(path, self.device)
        import stylegan2

        return stylegan2.load_generator(path, device=self.device)

    def _load_encoder(self, path: Path) -> Any:
        """The encoder beside model file ``path`` (None without one, or when it was trained for other
        weights or is unreadable: the projection then starts without it, as before; logged)."""
        enc = encoder_path(path)
        if not enc.is_file():
            return None
        from draggan_util.hashing import sha256_file
        from inversion.encoder import load_encoder

        try:
            encoder = load_encoder(enc, sha256_file(path), device=self.device)
        except (ValueError, OSError) as exc:
            log.warning("ignoring the encoder %s: %s", enc, exc)
            return None
        log.info("W+ encoder %s loaded: inversions start from its prediction", enc.name)
        return encoder

    def encoder_for(self, G: Any) -> Any:
        """The encoder loaded with generator ``G`` (None when it has none)."""
        with self._lock:
            for entry in self._loaded.values():
                if entry.G is G:
                    return entry.encoder
        return None

    def entries(self) -> list[protocol.ModelEntry]:
        """Installed models for ``welcome`` (size 0 x 0 until known)."""
        out = []
        with self._lock:
            for model in models.available_models(self.extra):
                if not model.installed:
                    continue
                width, height = self._sizes.get(model.name, (model.width, model.height))
                poor = models.poor_inversion(model.name)
                out.append(protocol.ModelEntry(name=model.name, width=width, height=height,
                                               loaded=model.name in self._loaded, poor_stlpips=poor.stlpips,
                                               poor_psnr_db=poor.psnr_db, framing=models.model_framing(model.name)))
        return out

    def installed_names(self) -> list[str]:
        return [model.name for model in models.available_models(self.extra) if model.installed]

    def check(self, name: str) -> None:
        """Raises UnknownModel when ``name`` cannot be served (cheap: no loading)."""
        with self._lock:
            if name in self._loaded:
                return
        resolve_model(name, self.extra)

    def probe_sizes(self) -> None:
        """Learn width x height of models whose registry entry does not say (loads each once)."""
        for model in models.available_models(self.extra):
            if (model.installed and model.path is not None and not (model.width and model.height)
                    and model.name not in self._sizes):
                G = self._load_file(model.path)
                self._sizes[model.name] = (int(G.img_width), int(G.img_height))
                del G

    def get(self, name: str, emit: Emit | None = None) -> Any:
        with self._lock:
            entry = self._loaded.get(name)
            if entry is not None:
                self._loaded.move_to_end(name)
                entry.last_used = time.monotonic()
                return entry.G
        path = resolve_model(name, self.extra)
        if emit is not None:
            emit(protocol.Progress(phase="loading", text=f"loading model '{name}'"))
        started = time.monotonic()
        G = self._load_file(path)
        encoder = self._load_encoder(path) if self._loader is None else None
        nbytes = module_bytes(G)
        with self._lock:
            self._make_room(nbytes)
            self._loaded[name] = LoadedModel(name, G, nbytes, time.monotonic(), encoder)
            self._sizes[name] = (int(G.img_width), int(G.img_height))
        log.info("model '%s' loaded from %s in %.1f s (%.1f MB of weights)", name, path,
                 time.monotonic() - started, nbytes / 1e6)
        return G

    def _make_room(self, nbytes: int) -> None:
        if self.max_bytes is None:
            return
        while self._loaded and sum(m.nbytes for m in self._loaded.values()) + nbytes > self.max_bytes:
            name, _ = self._loaded.popitem(last=False)
            self.evictions += 1
            log.info("model '%s' evicted (least recently used; --max-memory %d bytes)", name, self.max_bytes)
            if self._on_evict is not None:
                self._on_evict(name)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._loaded)
