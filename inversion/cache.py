"""On-disk cache of projection results, so a second drag on the same crop starts at once.

One file per entry, named by a key derived from (sha256 of the pixels sent, model id, settings).
A file holds only tensors, numbers and strings (``torch.save``), so it loads with
``torch.load(weights_only=True)``: the latent ``ws`` [1, num_ws, w_dim], the reconstruction
(uint8 [H, W, 3]), its quality figures, and when the generator was changed (pivotal tuning or
optimised noise) only the changed tensors of its state dict (``generator_delta``).

Properties the server relies on:

* bounded: after every write the least recently used entries (file mtime; a hit touches the
  file) are deleted until the total is at most ``max_bytes``; an entry bigger than the bound
  is not stored at all;
* atomic: entries are written to a temporary file in the same folder and renamed into place,
  so a reader never sees half a file;
* safe to delete: the folder (or any file in it) may vanish at any time; it is recreated on the
  next write;
* corruption means recompute: an entry that does not load or does not match its key is
  deleted and reported as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CacheEntry", "LatentCache", "cache_key"]

_FORMAT = "draggan-latent-cache"
_VERSION = 1
_SUFFIX = ".pt"


def cache_key(pixels: np.ndarray, model_id: str, settings: dict[str, Any]) -> str:
    """Hex key for an image (uint8 [H, W, 3]), a model id and a JSON-serialisable settings dict.

    The pixel hash covers the shape and the bytes, so two crops that differ in size never share
    a key even when their bytes happen to coincide.
    """
    pixels = np.ascontiguousarray(pixels)
    pixel_hash = hashlib.sha256()
    pixel_hash.update(repr((pixels.shape, str(pixels.dtype))).encode())
    pixel_hash.update(pixels.tobytes())
    blob = json.dumps(
        {"format": _FORMAT, "version": _VERSION, "pixels": pixel_hash.hexdigest(), "model": model_id,
         "settings": settings},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CacheEntry:
    """What one cache file holds.

    ``ws``: [1, num_ws, w_dim] float32 (CPU); ``reconstruction``: uint8 [H, W, 3];
    ``generator_delta``: state-dict entries of the generator that differ from the base model
    (empty when the base generator is used as is); ``psnr`` in dB; ``stlpips`` on the ST-LPIPS
    (VGG) scale; ``steps``: optimisation steps that produced it.
    """

    ws: torch.Tensor
    reconstruction: np.ndarray
    psnr: float
    stlpips: float
    steps: int
    generator_delta: dict[str, torch.Tensor] = field(default_factory=dict)


class LatentCache:
    """A bounded folder of :class:`CacheEntry` files (see the module docstring).

    ``directory`` is created on demand; ``max_bytes`` bounds the total size of the entries.
    Thread-safe within a process; safe (atomic renames, tolerant reads) across processes.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 512 * 1024 * 1024) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()

    def path_for(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be lower-case hex, got {key!r}")
        return self.directory / f"{key}{_SUFFIX}"

    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key``, or None (missing, or corrupt: then the file is deleted)."""
        path = self.path_for(key)
        with self._lock:
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                entry = self._decode(payload, key)
            except FileNotFoundError:
                return None
            except Exception:  # noqa: BLE001 - any unreadable entry is recomputed, never fatal
                self._discard(path)
                return None
            try:
                os.utime(path)  # mark as recently used for the LRU eviction
            except OSError:
                pass
            return entry

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under ``key`` atomically, then evict; False if it was not kept."""
        path = self.path_for(key)
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "key": key,
            "ws": entry.ws.detach().to("cpu", torch.float32).contiguous(),
            "reconstruction": torch.from_numpy(np.ascontiguousarray(entry.reconstruction, dtype=np.uint8)),
            "psnr": float(entry.psnr),
            "stlpips": float(entry.stlpips),
            "steps": int(entry.steps),
            "generator_delta": {
                name: t.detach().to("cpu").contiguous() for name, t in entry.generator_delta.items()
            },
        }
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=_SUFFIX, dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    torch.save(payload, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                if os.path.getsize(tmp_name) > self.max_bytes:
                    os.unlink(tmp_name)
                    return False
                os.replace(tmp_name, path)
            except BaseException:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass
                raise
            self._evict(keep=path)
            return path.exists()

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def clear(self) -> None:
        """Delete every entry (the folder itself stays)."""
        with self._lock:
            for path, _, _ in self._entries():
                self._discard(path)

    # ------------------------------------------------------------------------------------------

    def _entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, mtime) of every entry file; vanished files are skipped."""
        found = []
        try:
            candidates = list(self.directory.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        for path in candidates:
            if path.suffix != _SUFFIX or path.name.startswith(".tmp-"):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            found.append((path, st.st_size, st.st_mtime))
        return found

    def _evict(self, keep: Path) -> None:
        entries = sorted(self._entries(), key=lambda e: e[2])  # oldest first
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            self._discard(path)
            total -= size

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass

    @staticmethod
    def _decode(payload: Any, key: str) -> CacheEntry:
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError("not a latent cache entry")
        if payload.get("version") != _VERSION or payload.get("key") != key:
            raise ValueError("cache entry from another version or for another key")
        ws = payload["ws"]
        recon = payload["reconstruction"]
        delta = payload["generator_delta"]
        if not isinstance(ws, torch.Tensor) or ws.ndim != 3 or ws.shape[0] != 1 or not torch.isfinite(ws).all():
            raise ValueError("bad ws in cache entry")
        if not isinstance(recon, torch.Tensor) or recon.dtype != torch.uint8 or recon.ndim != 3:
            raise ValueError("bad reconstruction in cache entry")
        if not isinstance(delta, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in delta.items()
        ):
            raise ValueError("bad generator delta in cache entry")
        return CacheEntry(
            ws=ws, reconstruction=recon.numpy(), psnr=float(payload["psnr"]),
            stlpips=float(payload["stlpips"]), steps=int(payload["steps"]), generator_delta=dict(delta),
        )
