"""The edit pipeline the server's worker thread runs, and the state it keeps between edits.

    decode image -> model (LRU pool, ``loading`` progress) -> inversion.project (latent cache, preset,
    PTI; ``inversion`` progress) -> engine DragSession.run (``drag`` progress + previews) -> result

State, all keyed by *owner* (the CURVE client key, or the hash of the client's identity token; see
backend.server) so one client can never reach, evict or even detect another's data:

* images (an ``OwnedStore``): photos sent with an edit, re-usable by ``image_id``;
* sessions (an ``OwnedStore``): drag sessions (latent + generator) for ``continue``;
  both bounded per owner (an owner evicts its own oldest) and in total (at the total cap the owner
  holding the most gives way, never the item in use nor an owner's most recent one while it holds
  more; see ``OwnedStore``), with a retention time;
* the latent cache on disk, keyed by owner too (``OwnerCache``): another client sending the same
  photo misses, so neither ``from_cache`` nor the timing tells it that someone edited that photo;
* ``ModelPool``: loaded generators, least recently used evicted under a memory budget (shared).

``--no-cache`` keeps none of the photos, latents or sessions beyond the edit that made them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from draggan_wire import protocol
from draggan_wire.protocol import ErrorCode, ProtocolError

from . import models

log = logging.getLogger("draggan.backend")

Emit = Callable[[protocol.Progress], None]
ShouldCancel = Callable[[], bool]


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


# -- model registry (backend.models, install engineer) ---------------------------------------------


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


# -- per-owner stores ---------------------------------------------------------------------------


class OwnedStore:
    """``id -> (owner, value)`` with a per-owner count limit, a total cap and a retention time;
    thread-safe.

    A lookup with the wrong owner behaves exactly like a missing id (no oracle for other clients).

    Room is made fairly, so that nobody is locked out by identities that cost nothing to make:

    * an owner at its own limit gives up its own least recently used item;
    * at the total cap, the owner that holds the most items gives up its least recently used one,
      but never its most recent one (the session its user is working on); among owners holding
      equally many, the one that came to this store last gives way first;
    * when every owner holds a single item, the owner that came last gives it up: a crowd of new
      identities churns through its own items, and an owner that was here before it keeps its one;
    * items in use by the running edit (``pinned``) are never evicted.

    An item evicted to make room leaves a tombstone (``evicted``) so that its owner is told why it
    is gone, and both owners' ``pressure`` rises (the server's queue and peer limit let owners under
    pressure give way first: those that fill a full store are the ones that churn it).
    """

    TOMBSTONES = 4096  # evicted ids remembered (for the "evicted to make room" answer)

    def __init__(self, max_items: int, retention_s: float, max_total: int | None = None,
                 what: str = "items", pressure_window_s: float = 600.0) -> None:
        self.max_items = max(1, max_items)  # per owner
        self.max_total = max(self.max_items, max_total if max_total is not None else 4 * self.max_items)
        self.retention_s = retention_s
        self.what = what
        self.pressure_window_s = pressure_window_s
        # LRU order: the least recently used item first
        self._items: collections.OrderedDict[str, tuple[str, Any, float]] = collections.OrderedDict()
        self._since: dict[str, float] = {}  # owner -> when it came to this store (its items since then)
        self._counts: collections.Counter[str] = collections.Counter()
        self._pinned: collections.Counter[str] = collections.Counter()
        self._tombstones: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self._losses: dict[str, collections.deque[float]] = {}  # owner -> times it lost or took a place
        self.evictions: collections.Counter[str] = collections.Counter()  # "own" / "room" / "expired"
        self._lock = threading.Lock()

    # -- bookkeeping (with the lock held) --------------------------------------------------

    def _drop(self, key: str, reason: str = "") -> None:
        owner, _value, _last = self._items.pop(key)
        self._counts[owner] -= 1
        if self._counts[owner] <= 0:
            del self._counts[owner]
            self._since.pop(owner, None)
        if reason:
            self.evictions[reason] += 1
            self._tombstones[key] = (owner, reason)
            while len(self._tombstones) > self.TOMBSTONES:
                self._tombstones.popitem(last=False)

    def _expire(self, now: float) -> None:
        for key, (_owner, _value, last) in list(self._items.items()):
            if now - last > self.retention_s and not self._pinned[key]:
                self._drop(key, "expired")

    def _owned(self, owner: str) -> list[str]:
        return [k for k, (o, _v, _t) in self._items.items() if o == owner]  # least recently used first

    def _victim(self, newcomer: str) -> str | None:
        """The item to evict so that ``newcomer`` can add one at the total cap (None: all pinned)."""
        newest: dict[str, str] = {}  # owner -> its most recently used item (protected)
        lru: dict[str, str] = {}  # owner -> its least recently used item that may go
        for key, (owner, _v, _t) in self._items.items():
            newest[owner] = key
        for key, (owner, _v, _t) in self._items.items():
            if owner in lru or self._pinned[key]:
                continue
            if owner != newcomer and key == newest[owner]:
                continue  # each other owner keeps its most recent item while it holds more
            lru[owner] = key
        if lru:  # the owner holding the most gives way first; among equals, the latest to come
            owner = max(lru, key=lambda o: (self._counts[o] + (1 if o == newcomer else 0), self._since.get(o, 0.0)))
            return lru[owner]
        singles = [o for o, key in newest.items() if not self._pinned[key]]
        if not singles:
            return None
        return newest[max(singles, key=lambda o: self._since.get(o, 0.0))]

    def _press(self, owner: str, now: float) -> None:
        times = self._losses.get(owner)
        if times is None:
            if len(self._losses) >= 4 * self.TOMBSTONES:  # bounded: forget the stalest owner
                self._losses.pop(next(iter(self._losses)))
            times = self._losses[owner] = collections.deque(maxlen=64)
        times.append(now)

    # -- API --------------------------------------------------------------------------------

    def has_room(self, owner: str) -> bool:
        """Whether ``put`` for ``owner`` would succeed now (false only when everything is pinned)."""
        with self._lock:
            self._expire(time.monotonic())
            if len(self._items) < self.max_total or self._counts[owner]:
                return True
            return self._victim(owner) is not None

    def put(self, owner: str, value: Any, key: str | None = None) -> str:
        key = key or uuid.uuid4().hex
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            existing = self._items.get(key)
            if existing is not None and existing[0] != owner:  # ids are random or owner-salted hashes
                raise ProtocolError(ErrorCode.INTERNAL, f"{self.what}: id collision")
            if existing is None:
                for old in self._owned(owner):  # the owner's own least recently used first
                    if self._counts[owner] < self.max_items:
                        break
                    if not self._pinned[old]:
                        self._drop(old, "own")
                while len(self._items) >= self.max_total:
                    victim = self._victim(owner)
                    if victim is None:
                        raise ProtocolError(ErrorCode.BUSY, f"the DragGAN backend holds the most {self.what} it "
                                                            f"keeps for all clients together ({self.max_total}) and "
                                                            "all are in use; try again in a moment")
                    loser = self._items[victim][0]
                    self._drop(victim, "own" if loser == owner else "room")
                    if loser != owner:  # both sides of a push count as pressure (see pressure())
                        self._press(loser, now)
                        self._press(owner, now)
                self._counts[owner] += 1
                self._since.setdefault(owner, now)
            self._tombstones.pop(key, None)
            self._items[key] = (owner, value, now)
            self._items.move_to_end(key)
        return key

    def count(self, owner: str) -> int:
        with self._lock:
            return self._counts[owner]

    def get(self, owner: str, key: str) -> Any | None:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            item = self._items.get(key)
            if item is None or item[0] != owner:
                return None
            self._items[key] = (owner, item[1], now)
            self._items.move_to_end(key)
            return item[1]

    def contains(self, owner: str, key: str) -> bool:
        with self._lock:
            self._expire(time.monotonic())
            item = self._items.get(key)
            return item is not None and item[0] == owner

    def evicted(self, owner: str, key: str) -> str:
        """Why ``owner``'s ``key`` is gone: "room" (evicted to make room for another client), "own"
        (the owner's own limit), "expired"; "" when unknown (or another owner's: no oracle)."""
        with self._lock:
            tomb = self._tombstones.get(key)
            return tomb[1] if tomb is not None and tomb[0] == owner else ""

    def pressure(self, owner: str) -> int:
        """How often, within the pressure window, ``owner`` lost an item to make room for another
        owner or made another owner lose one: high for the owners that hold and churn the most."""
        with self._lock:
            times = self._losses.get(owner)
            if not times:
                return 0
            horizon = time.monotonic() - self.pressure_window_s
            while times and times[0] < horizon:
                times.popleft()
            return len(times)

    @contextlib.contextmanager
    def pinned(self, key: str | None) -> Iterator[None]:
        """Keep ``key`` from eviction and expiry while the block runs (the running edit's item)."""
        if not key:
            yield
            return
        with self._lock:
            self._pinned[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._pinned[key] -= 1
                if self._pinned[key] <= 0:
                    del self._pinned[key]

    def purge(self, owner: str) -> int:
        with self._lock:
            keys = self._owned(owner)
            for k in keys:
                self._drop(k)
            return len(keys)

    def drop_where(self, predicate: Callable[[Any], bool]) -> int:
        with self._lock:
            keys = [k for k, (_o, v, _t) in self._items.items() if predicate(v)]
            for k in keys:
                self._drop(k)
            return len(keys)

    def figures(self) -> tuple[int, int, int]:
        """(items held, the total cap, owners holding items)."""
        with self._lock:
            self._expire(time.monotonic())
            return len(self._items), self.max_total, len(self._counts)

    def owners(self) -> set[str]:
        with self._lock:
            return set(self._counts)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class HeldSession:
    """A drag session kept for ``continue``: the engine session, what the first edit inverted (the
    native crop, the transform between its frame and the model's, the inversion's latent) and what the
    drags so far asked for (their points and regions, model pixels)."""

    model: str
    session: Any  # backend.engine.DragSession
    inversion: protocol.InversionQuality | None
    image_id: str
    params: protocol.EditParams
    alignment: dict[str, Any]  # alignment.align.Alignment.to_dict: model frame -> crop
    crop_size: tuple[int, int]
    aligned: str = "none"  # the alignment kind when a face was aligned, "none" otherwise
    result: str = "detail"  # protocol RESULT_MODES
    native: Any = None  # uint8 [H, W, 3]: the crop as sent
    ws_initial: Any = None  # [1, num_ws, w_dim]: the inversion's latent (the picture before any drag)
    seeds: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # every drag's points
    allowed: Any = None  # float32 [h, w]: where the drags may move (no selection), None = anywhere
    keep: Any = None  # bool [H, W]: crop pixels outside the last drag's selection
    last: tuple[list[tuple[float, float]], list[tuple[float, float]]] = ([], [])  # the last drag's points
    history: list[DragState] = dataclasses.field(default_factory=list)  # the states before the last drags

    def remember(self) -> None:
        """Keep the state before a drag (for ``undo``); the oldest go beyond MAX_UNDO."""
        session = self.session
        self.history.append(DragState(ws=session.ws, handles=list(session.points), targets=list(session.targets),
                                      seeds=list(self.seeds), allowed=self.allowed, keep=self.keep,
                                      last=self.last, params=self.params, result=self.result))
        del self.history[:-MAX_UNDO]

    def restore(self, state: DragState) -> None:
        """Back to ``state``: the latent, the handles it had, and what the drags up to it asked for."""
        self.session.restart_from(state.ws, state.handles, state.targets)
        self.seeds, self.allowed, self.keep, self.last = list(state.seeds), state.allowed, state.keep, state.last
        self.params, self.result = state.params, state.result


#: The states a session keeps for ``undo`` (each holds a latent and references to the arrays the drags
#: made, which later drags replace rather than modify: a few KB to a few MB each).
MAX_UNDO = 8


@dataclass
class DragState:
    """A session's state between drags: the latent, its handles and targets (model pixels, where the
    next drag starts tracking from), and HeldSession's per-drag fields as they were."""

    ws: Any
    handles: list[tuple[float, float]]
    targets: list[tuple[float, float]]
    seeds: list[tuple[float, float]]
    allowed: Any
    keep: Any
    last: tuple[list[tuple[float, float]], list[tuple[float, float]]]
    params: protocol.EditParams
    result: str


class OwnerCache:
    """One owner's view of the shared on-disk LatentCache: every key is salted with the owner, so
    the same photo from another client is a miss (no ``from_cache`` oracle, no timing oracle)."""

    def __init__(self, cache: Any, owner: str) -> None:
        self._cache = cache
        self._salt = hashlib.sha256(b"draggan-latent-owner\0" + owner.encode()).digest()

    def _key(self, key: str) -> str:
        return hashlib.sha256(self._salt + key.encode()).hexdigest()

    def get(self, key: str) -> Any:
        return self._cache.get(self._key(key))

    def put(self, key: str, entry: Any) -> Any:
        return self._cache.put(self._key(key), entry)

    def path_for(self, key: str) -> Path:
        return Path(self._cache.path_for(self._key(key)))

    def __getattr__(self, name: str) -> Any:  # directory, max_bytes, ...
        return getattr(self._cache, name)


# -- the runner --------------------------------------------------------------------------------


def image_to_rgb(image: protocol.Image, field_name: str) -> np.ndarray:
    """Wire image -> uint8 [H, W, 3] (gray repeated, alpha dropped)."""
    array = np.frombuffer(image.data, dtype=np.uint8).reshape(image.height, image.width, image.channels)
    if image.channels == 1:
        array = np.repeat(array, 3, axis=2)
    elif image.channels == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def mask_to_float(mask: protocol.Image) -> np.ndarray:
    """Wire mask (uint8, 255 = may move) -> float32 [H, W] in [0, 1]."""
    return np.frombuffer(mask.data, dtype=np.uint8).reshape(mask.height, mask.width).astype(np.float32) / 255.0


def rgb_to_image(array: np.ndarray) -> protocol.Image:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return protocol.Image(width=array.shape[1], height=array.shape[0], channels=array.shape[2], data=array.tobytes())


class EditRunner:
    """The production :class:`backend.server.Runner`: real models, inversion and drag engine.

    ``project`` and ``session_factory`` default to ``inversion.project`` and
    ``backend.engine.DragSession``; they are parameters only so that they are imported lazily.
    """

    def __init__(self, models: Mapping[str, Path] | None = None, device: str = "auto",
                 max_memory: int | None = None, cache: bool = True, cache_dir: Path | None = None,
                 cache_bytes: int = 1 << 30, max_sessions: int = 8, max_images: int = 8,
                 retention_s: float = 3600.0, loader: Callable[[Path, str], Any] | None = None,
                 inversion_steps: int | None = None, max_sessions_total: int = 32,
                 max_images_total: int = 64, alignments: Mapping[str, str] | None = None,
                 landmarks: Callable[[np.ndarray], list[Any]] | None = None) -> None:
        self.device = resolve_device(device)
        # model name -> alignment kind, over the registry's (`serve --model-align NAME=KIND`; tests
        # serve tiny files as face models); landmarks: image -> faces (default MTCNN, alignment/landmarks.py)
        self.alignments = dict(alignments or {})
        self.landmarks = landmarks
        self.inversion_steps = inversion_steps  # None = the presets' own step counts
        self.cache = cache
        # per owner (max_sessions, max_images) and for all owners together (the *_total caps)
        self.sessions = OwnedStore(max_sessions, retention_s, max_sessions_total, what="drag sessions")
        self.images = OwnedStore(max_images, retention_s, max_images_total, what="photos")
        self.pool = ModelPool(models or {}, self.device, max_memory, loader=loader, on_evict=self._model_evicted)
        self.pool.probe_sizes()  # welcome must tell the plug-in each model's size before it crops
        self._latent_files: dict[str, set[Path]] = collections.defaultdict(set)  # owner -> files written
        self._latent_lock = threading.Lock()
        self.latent_cache: Any = None
        if cache and cache_dir is not None:
            from inversion import LatentCache

            self.latent_cache = LatentCache(cache_dir, cache_bytes)

    def _model_evicted(self, name: str) -> None:
        dropped = self.sessions.drop_where(lambda held: held.model == name)
        if dropped:
            log.info("dropped %d session(s) of evicted model '%s'", dropped, name)

    def preload(self, name: str | None = None) -> None:
        """Load what the first edit would otherwise wait for: model ``name`` (the first installed one
        when None) with its encoder, and the perceptual networks the inversion uses (VGG for the
        figures, AlexNet for encoder starts). Meant for a background thread at server start; a
        failure is logged, not raised (the edit that needs it reports it properly)."""
        started = time.monotonic()
        try:
            names = self.pool.installed_names()
            if name is None and not names:
                return
            G = self.pool.get(name or names[0])
            from inversion._common import generator_device, shared_stlpips

            device = generator_device(G)
            for net in ("vgg", "alex"):
                shared_stlpips(net, device)
        except Exception as exc:  # noqa: BLE001 - a background warm-up must never take the server down
            log.warning("preloading failed (the first edit will load on demand): %s", exc)
            return
        log.info("preloaded model '%s' and the perceptual networks in %.1f s", name or names[0],
                 time.monotonic() - started)

    # Runner interface ------------------------------------------------------------------------

    def models(self) -> list[protocol.ModelEntry]:
        return [dataclasses.replace(e, alignment=self.alignment_of(e.name)) for e in self.pool.entries()]

    def alignment_of(self, model: str) -> str:
        """Model ``model``'s alignment kind ("none" | "ffhq" | "faces")."""
        return models.model_alignment(model, "auto", self.alignments)

    def memory(self) -> tuple[int, int]:
        return device_memory(self.device)

    def purge(self, owner: str) -> tuple[int, int]:
        """Forget ``owner``'s photos and sessions and delete the latent-cache files its edits wrote."""
        with self._latent_lock:
            files = self._latent_files.pop(owner, set())
        for path in files:
            try:
                path.unlink()
            except OSError:  # already evicted by the cache's own size limit
                pass
        return self.images.purge(owner), self.sessions.purge(owner)

    def _cache_files(self) -> set[Path]:
        directory = getattr(self.latent_cache, "directory", None)
        if directory is None:
            return set()
        try:
            return {p for p in Path(directory).iterdir() if p.suffix == ".pt"}
        except OSError:
            return set()

    def precheck(self, owner: str, request: Any) -> None:
        if isinstance(request, protocol.Edit):
            try:
                self.pool.check(request.model)
            except UnknownModel as exc:
                raise ProtocolError(ErrorCode.UNKNOWN_MODEL, str(exc), "fields.model") from None
            if request.image_id is not None and not self.images.contains(owner, request.image_id):
                raise self._unknown_image(request.image_id, owner)
            # Full stores make room (OwnedStore's fair eviction): busy only when every item is in use.
            if self.cache and not (self.sessions.has_room(owner) and self.images.has_room(owner)):
                raise ProtocolError(ErrorCode.BUSY, "the DragGAN backend holds the most photos and drag sessions "
                                                    "it keeps for all clients together, and all are in use by "
                                                    "running edits; try again in a moment")
        elif isinstance(request, (protocol.Continue, protocol.Undo)):
            if not self.sessions.contains(owner, request.session_id):
                raise self._unknown_session(request.session_id, owner)

    def stores(self) -> dict[str, int]:
        """Figures for ``welcome``/``status``: photos and sessions held, their caps, owners holding any."""
        photos, photos_max, _ = self.images.figures()
        sessions, sessions_max, _ = self.sessions.figures()
        return {"photos": photos, "photos_max": photos_max, "sessions": sessions, "sessions_max": sessions_max,
                "owners": len(self.images.owners() | self.sessions.owners()),
                "evicted_for_room": self.images.evictions["room"] + self.sessions.evictions["room"]}

    def pressure(self, owner: str) -> int:
        """How often ``owner`` lately lost a photo or session to another client, or took one's place
        (the server adds it to the owner's pressure when it decides who gives way)."""
        return self.images.pressure(owner) + self.sessions.pressure(owner)

    def _unknown_image(self, image_id: str, owner: str = "") -> ProtocolError:
        why = "the server runs with --no-cache" if not self.cache else \
            "it expired, was purged, or was sent by another client"
        if owner and self.images.evicted(owner, image_id) == "room":
            why = (f"it was evicted to make room for another client's edit: the backend keeps at most "
                   f"{self.images.max_total} photos for all clients together")
        return ProtocolError(ErrorCode.UNKNOWN_IMAGE, f"fields.image_id: image {image_id!r} is not cached for "
                                                      f"this client ({why}); send the image again", "fields.image_id")

    def _unknown_session(self, session_id: str, owner: str = "") -> ProtocolError:
        why = "the server runs with --no-cache" if not self.cache else \
            "it expired, was purged, its model was unloaded, or it belongs to another client"
        if owner and self.sessions.evicted(owner, session_id) == "room":
            why = (f"it was evicted to make room for another client's edit: the backend keeps at most "
                   f"{self.sessions.max_total} drag sessions for all clients together")
        return ProtocolError(ErrorCode.UNKNOWN_SESSION, f"fields.session_id: session {session_id!r} is not held "
                                                        f"for this client ({why}); start a new edit",
                             "fields.session_id")

    def run(self, owner: str, request: Any, emit: Emit, should_cancel: ShouldCancel,
            should_stop: ShouldCancel | None = None) -> protocol.Result:
        """``should_stop``: the client's ``stop``: the drag ends at its next step and its state so far is
        the result (``stopped``); before the drag began there is nothing to keep (CANCELLED)."""
        stop = should_stop or (lambda: False)
        if isinstance(request, protocol.Edit):
            with self.images.pinned(request.image_id):
                return self._edit(owner, request, emit, should_cancel, stop)
        with self.sessions.pinned(request.session_id):  # the running edit's session is never evicted
            try:
                if isinstance(request, protocol.Undo):
                    return self._undo(owner, request, emit)
                return self._continue(owner, request, emit, should_cancel, stop)
            except ProtocolError as exc:
                if exc.code == ErrorCode.UNKNOWN_SESSION and self.sessions.evicted(owner, request.session_id):
                    raise self._unknown_session(request.session_id, owner) from None  # says why
                raise

    # pipeline --------------------------------------------------------------------------------

    def _edit(self, owner: str, req: protocol.Edit, emit: Emit, should_cancel: ShouldCancel,
              should_stop: ShouldCancel) -> protocol.Result:
        """Protocol 4: the native crop into the model's frame (the whole crop scaled, or a face
        alignment for ``align="auto"`` on a model with one), inversion, drag, and the result in the crop's
        frame (``result="detail"``: the crop's own pixels moved; ``"model"``: the model's pixels)."""
        from alignment import aligned_edit
        from backend.engine import DragSession

        started = time.monotonic()
        try:
            G = self.pool.get(req.model, emit)
        except UnknownModel as exc:
            raise ProtocolError(ErrorCode.UNKNOWN_MODEL, str(exc), "fields.model") from None
        width, height = int(G.img_width), int(G.img_height)
        pixels: np.ndarray | None
        if req.image is not None:
            assert isinstance(req.image, protocol.Image), "the server decodes PNG payloads before the run"
            pixels = image_to_rgb(req.image, "fields.image")
        else:
            assert req.image_id is not None
            pixels = self.images.get(owner, req.image_id)
            if pixels is None:
                raise self._unknown_image(req.image_id)
        H, W = pixels.shape[:2]
        mask = self._mask(req.mask, W, H)
        _check_points(req.handles, W, H, "fields.handles")
        _check_points(req.targets, W, H, "fields.targets")
        kind = "none"
        notes: list[str] = []
        if req.align == "auto" and self.alignment_of(req.model) != "none":
            prepared, kind, note = self._prepare_aligned(req, pixels, mask, width, height, emit)
            notes.append(note)
        else:
            try:
                prepared = aligned_edit.prepare_whole(pixels, width, height, req.handles, req.targets, mask)
            except ValueError as exc:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"fields.handles: {exc}", "fields.handles") from None
        if should_cancel():
            raise ProtocolError(ErrorCode.CANCELLED, "cancelled")

        pti = models.model_pti(req.model) if req.params.pti is None else bool(req.params.pti)
        # a stop before the drag began keeps nothing: the inversion ends as a cancel
        projection = self._project(owner, G, prepared.image, req.params, emit,
                                   lambda: should_cancel() or should_stop(), pti)
        from inversion.colour import local_colour_difference

        colour, where = local_colour_difference(projection.reconstruction, prepared.image)
        quality = protocol.InversionQuality(psnr=float(projection.psnr), stlpips=float(projection.stlpips),
                                            from_cache=bool(projection.from_cache), colour=colour, colour_at=where)
        emit(protocol.Progress(phase="inversion", step=int(projection.steps), total=int(projection.steps),
                               inversion=quality, text="; ".join(["inversion done", *notes])))
        handles = [(float(x), float(y)) for x, y in prepared.handles]
        targets = [(float(x), float(y)) for x, y in prepared.targets]
        drag_mask, allowed, region_note = _drag_region(prepared.mask, req.params, handles, targets, width, height)
        if region_note:
            notes.append(region_note)
        session = DragSession(projection.generator, projection.ws, handle_points=handles, target_points=targets,
                              mask=drag_mask, params=_drag_params(req.params, projection.generator, req.model))
        held = HeldSession(req.model, session, quality, "", req.params, alignment=prepared.alignment.to_dict(),
                           crop_size=(W, H), aligned=kind, result=req.result, native=pixels,
                           ws_initial=projection.ws.detach().clone(), seeds=handles + targets, allowed=allowed,
                           keep=None if mask is None else mask <= 0.0, last=(handles, targets))
        held.remember()   # undo's first state: the inversion, before any drag
        steps, stopped = self._drag(session, emit, should_cancel, quality, prepared.alignment, (W, H),
                                    req.params.preview_frame, should_stop)
        session_id = "none"
        if self.cache:  # the same photo from the same client keeps one id
            held.image_id = req.image_id or hashlib.sha256(owner.encode() + pixels.tobytes()).hexdigest()[:32]
            self.images.put(owner, pixels, key=held.image_id)
            session_id = self.sessions.put(owner, held)
        if stopped:
            notes.append(f"stopped by the client at step {steps}")
        result = self._crop_result(held, session_id, steps, started, "; ".join(notes))
        result.stopped, result.history = stopped, len(held.history)
        return result

    def _prepare_aligned(self, req: protocol.Edit, pixels: np.ndarray, mask: np.ndarray | None, width: int,
                         height: int, emit: Emit) -> tuple[Any, str, str]:
        """Find the face and warp the crop into the model's aligned frame; with no face (or no landmark
        weights) a model-shaped box around the points. -> (prepared edit, alignment kind, note)."""
        from alignment import aligned_edit
        from alignment.landmarks import LandmarksUnavailable

        H, W = pixels.shape[:2]
        emit(protocol.Progress(phase="inversion", step=0, total=0,
                               text=f"looking for the face in the {W}x{H} crop (alignment)"))
        prepared: aligned_edit.PreparedEdit | None = None
        try:
            prepared = aligned_edit.prepare(pixels, width, height, req.handles, req.targets, mask,
                                            landmarks=self.landmarks, kind=self.alignment_of(req.model))
            note = aligned_edit.progress_text(prepared)
        except aligned_edit.NoFace:
            note = aligned_edit.progress_text(None)
        except LandmarksUnavailable as exc:  # the MTCNN weights are not installed: say so, edit unaligned
            note = f"face alignment unavailable ({exc}); editing without alignment"
        except ValueError as exc:  # a point outside the aligned frame
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"fields.handles: {exc}", "fields.handles") from None
        if prepared is None:
            prepared = aligned_edit.prepare_box(pixels, width, height, req.handles, req.targets, mask)
        kind = self.alignment_of(req.model) if prepared.face is not None else "none"
        log.info("native %dx%d crop for '%s': %s", W, H, req.model, note)
        emit(protocol.Progress(phase="inversion", step=0, total=0, text=note))
        return prepared, kind, note

    def _crop_result(self, held: HeldSession, session_id: str, steps: int, started: float,
                     note: str) -> protocol.Result:
        """The session's picture in the crop's frame (RGBA cut to the area the model's frame covers)
        and, per handle of the last drag, whether the dense motion carries it to its target."""
        from alignment import aligned_edit
        from alignment.align import Alignment
        from backend.engine import motion

        al = Alignment.from_dict(held.alignment)
        W, H = held.crop_size
        session = held.session
        settings = motion.MotionSettings()
        with torch.no_grad():
            before = session.G.synthesis(held.ws_initial, noise_mode="const")
            after = session.G.synthesis(session.ws, noise_mode="const")
        flow = motion.dense_motion(session.G, held.ws_initial, session.ws, settings)
        scale = np.array([(flow.shape[-1] - 1) / max(al.width - 1, 1), (flow.shape[-2] - 1) / max(al.height - 1, 1)])
        allowed = None
        if held.allowed is not None:
            allowed = torch.nn.functional.interpolate(torch.from_numpy(held.allowed)[None, None],
                                                      size=tuple(flow.shape[-2:]), mode="area")[0, 0]
        _, soft = motion.motion_region(flow, np.asarray(held.seeds) * scale, settings, allowed)
        handles, targets = held.last
        landed = motion.landed(flow, np.asarray(handles) * scale, np.asarray(targets) * scale,
                               settings.land_tolerance)
        if held.result == "model":
            rgba, offset = aligned_edit.paste_back_cut(al, W, H, session.image())
        else:
            rgb = motion.transfer_detail(held.native, al.inverse_matrix, (al.width, al.height), flow, soft, before,
                                         after, settings.residual_floor, held.keep)
            rgba, offset = aligned_edit.cut_to_produced_area(al, rgb)
        points = [(float(x), float(y)) for x, y in al.to_crop(session.points)]
        if not all(landed):
            short = ", ".join(str(i + 1) for i, ok in enumerate(landed) if not ok)
            note = "; ".join(filter(None, [note, f"stopped short: handle {short} did not reach its target"]))
        return protocol.Result(image=rgb_to_image(rgba), points=points, session_id=session_id,
                               image_id=held.image_id, inversion=held.inversion, steps=steps,
                               seconds=time.monotonic() - started, frame="crop", offset=offset,
                               alignment=held.aligned, note=note, landed=landed)

    def _continue(self, owner: str, req: protocol.Continue, emit: Emit,
                  should_cancel: ShouldCancel, should_stop: ShouldCancel) -> protocol.Result:
        """Drag again on a session: the stored transform maps the new crop-pixel points and mask into the
        model's frame (the same frame as the first drag)."""
        from alignment import aligned_edit
        from alignment.align import Alignment

        started = time.monotonic()
        held: HeldSession | None = self.sessions.get(owner, req.session_id)
        if held is None:
            raise self._unknown_session(req.session_id)
        al = Alignment.from_dict(held.alignment)
        W, H = held.crop_size
        session = held.session
        mask = self._mask(req.mask, W, H)
        _check_points(req.handles, W, H, "fields.handles")
        _check_points(req.targets, W, H, "fields.targets")
        try:
            h, t = aligned_edit.map_points(al, req.handles, req.targets)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"fields.handles: {exc}", "fields.handles") from None
        handles = [(float(x), float(y)) for x, y in h]
        targets = [(float(x), float(y)) for x, y in t]
        model_mask = None if mask is None else al.warp_mask(mask > 0.5).astype(np.float32)
        params = req.params or held.params
        drag_mask, allowed, region_note = _drag_region(model_mask, params, handles, targets, al.width, al.height)
        held.remember()   # the state before this drag, for undo (and for a cancel, which keeps nothing)
        try:
            session.set_points(handles, targets, drag_mask, params=_drag_params(params, session.G, held.model))
        except Exception:
            held.history.pop()
            raise
        held.params = params
        held.result = req.result or held.result
        held.seeds = held.seeds + handles + targets
        held.last = (handles, targets)
        held.allowed = None if held.allowed is None or allowed is None else np.maximum(held.allowed, allowed)
        held.keep = None if mask is None else mask <= 0.0
        reused = ("reusing the previous drag's face alignment" if held.aligned != "none"
                  else "reusing the previous drag's inversion")
        note = "; ".join(filter(None, [reused, region_note]))
        emit(protocol.Progress(phase="drag", step=0, total=0, text=note))
        try:
            steps, stopped = self._drag(session, emit, should_cancel, held.inversion, al, (W, H),
                                        params.preview_frame, should_stop)
        except ProtocolError as exc:
            if exc.code == ErrorCode.CANCELLED:   # a cancelled drag keeps nothing: the session as before it
                held.restore(held.history.pop())
            raise
        if stopped:
            note = "; ".join([note, f"stopped by the client at step {steps}"])
            if steps == 0:   # stopped before its first step: nothing changed, nothing to undo
                held.restore(held.history.pop())
        result = self._crop_result(held, req.session_id, steps, started, note)
        result.stopped, result.history = stopped, len(held.history)
        return result

    def _undo(self, owner: str, req: protocol.Undo, emit: Emit) -> protocol.Result:
        """The session back to the state before its last drag, answered as that state's result (the
        same computation on the same latent as the drag that made it: the same bytes)."""
        started = time.monotonic()
        held: HeldSession | None = self.sessions.get(owner, req.session_id)
        if held is None:
            raise self._unknown_session(req.session_id)
        if not held.history:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"fields.session_id: session {req.session_id!r} has no drag "
                                                       "left to undo", "fields.session_id")
        held.restore(held.history.pop())
        if req.result is not None:
            held.result = req.result
        emit(protocol.Progress(phase="drag", step=0, total=0, text="undoing the last drag"))
        result = self._crop_result(held, req.session_id, 0, started, "the last drag was undone")
        result.history = len(held.history)
        return result

    def _mask(self, mask: protocol.Image | protocol.PendingImage | None, width: int,
              height: int) -> np.ndarray | None:
        if mask is None:
            return None
        assert isinstance(mask, protocol.Image), "the server decodes PNG payloads before the run"
        if (mask.width, mask.height) != (width, height):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"fields.mask: the mask is {mask.width}x{mask.height}, "
                                                       f"the image {width}x{height}", "fields.mask")
        return mask_to_float(mask)

    def _project(self, owner: str, G: Any, pixels: np.ndarray, params: protocol.EditParams, emit: Emit,
                 should_cancel: ShouldCancel, pti: bool) -> Any:
        from inversion import ENCODER_PRESETS, PRESETS, InversionCancelled, project

        def progress(step: int, total: int, metrics: Any) -> None:
            quality = None
            if isinstance(metrics, dict) and "psnr" in metrics and "stlpips" in metrics:
                quality = protocol.InversionQuality(psnr=float(metrics["psnr"]), stlpips=float(metrics["stlpips"]))
            emit(protocol.Progress(phase="inversion", step=int(step), total=int(total), inversion=quality,
                                   loss=_maybe_float(metrics.get("loss")) if isinstance(metrics, dict) else None))

        emit(protocol.Progress(phase="inversion", step=0, total=0, text="projecting the photo into the model"))
        encoder = self.pool.encoder_for(G)
        try:
            settings = None
            if self.inversion_steps is not None:  # a server-wide cap (quick CPU servers, tests)
                base = (ENCODER_PRESETS if encoder is not None else PRESETS)[params.inversion]
                settings = dataclasses.replace(base, steps=self.inversion_steps,
                                               search_samples=min(base.search_samples, self.inversion_steps),
                                               pti_steps=min(base.pti_steps, self.inversion_steps))
            before = self._cache_files() if self.latent_cache is not None else set()
            owner_cache: Any = OwnerCache(self.latent_cache, owner) if self.cache and self.latent_cache else None
            result = project(G, pixels, preset=params.inversion, pti=pti, progress=progress,
                             should_cancel=should_cancel, cache=owner_cache,
                             settings=settings, encoder=encoder)
        except InversionCancelled:
            raise ProtocolError(ErrorCode.CANCELLED, "cancelled") from None
        if self.latent_cache is not None:
            # one job at a time: the files that appeared are this owner's (purged with its data)
            written = self._cache_files() - before
            with self._latent_lock:
                self._latent_files[owner].update(written)
        return result

    def _drag(self, session: Any, emit: Emit, should_cancel: ShouldCancel,
              quality: protocol.InversionQuality | None, alignment: Any = None,
              crop_size: tuple[int, int] | None = None, preview_frame: str = "model",
              should_stop: ShouldCancel | None = None) -> tuple[int, bool]:
        """Run the drag, reporting progress -> (steps, stopped by ``should_stop``). ``alignment``: points
        are reported in the native crop's pixels; ``preview_frame`` "crop" (with ``crop_size``): previews
        are placed in the crop's frame as results are (RGBA at an offset), else they stay in the model's."""
        from alignment import aligned_edit
        from backend.engine import EditCancelled

        stop = should_stop or (lambda: False)
        in_crop = preview_frame == "crop" and alignment is not None and crop_size is not None
        steps = 0
        try:
            for step in session.run(should_cancel=lambda: should_cancel() or stop()):
                steps = step.index + 1
                preview, offset = None, (0, 0)
                if step.preview is not None and in_crop:
                    assert crop_size is not None
                    rgba, offset = aligned_edit.paste_back_cut(alignment, crop_size[0], crop_size[1], step.preview)
                    preview = rgb_to_image(rgba)
                elif step.preview is not None:
                    preview = rgb_to_image(step.preview)
                points = step.points if alignment is None else \
                    [(float(x), float(y)) for x, y in alignment.to_crop(step.points)]
                emit(protocol.Progress(phase="drag", step=steps, total=step.total, points=points,
                                       loss=_maybe_float(step.loss), preview=preview,
                                       preview_frame="crop" if in_crop else "model", preview_offset=offset,
                                       text="done: handles reached their targets" if step.done else ""))
        except EditCancelled:
            if stop() and not should_cancel():
                return steps, True
            raise ProtocolError(ErrorCode.CANCELLED, "cancelled") from None
        return steps, False


def _maybe_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _check_points(points: list[tuple[float, float]], width: int, height: int, field_name: str) -> None:
    for i, (x, y) in enumerate(points):
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{field_name}[{i}]: ({x:g}, {y:g}) is outside the "
                                                       f"{width}x{height} image (x in 0..{width - 1}, "
                                                       f"y in 0..{height - 1})", f"{field_name}[{i}]")


def _drag_region(selection: np.ndarray | None, params: protocol.EditParams, handles: list[tuple[float, float]],
                 targets: list[tuple[float, float]], width: int, height: int
                 ) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(the drag's mask, where its motion may reach, a note): with a selection, the selection (model
    frame) for both; without one, ``params.region == "points"`` makes both a box around the points, so
    that a drag moves what was dragged rather than the whole picture; "whole" leaves both open."""
    from alignment import aligned_edit

    if selection is not None:
        return selection, selection.astype(np.float32), ""
    if params.region == "whole":
        return None, None, ""
    box = aligned_edit.default_region(handles, targets, width, height)
    return box, box, "no selection: the drag may move a box around its points (Region: Whole picture frees it)"


def _drag_params(params: protocol.EditParams, G: Any, model: str) -> Any:
    from backend.engine import DragParams

    # DragGAN reads features after block 5 (128 px at 512); small generators have fewer blocks.
    feature_block = min(DragParams.feature_block, int(G.synthesis.num_blocks) - 1)
    # the model's measured drag settings (larger first steps, stop distance, mask weight when the
    # request leaves it to the model), the official ones otherwise
    own = models.model_drag_defaults(model)
    lambda_mask = own.lambda_mask if params.lambda_mask is None else params.lambda_mask
    return DragParams(max_steps=params.max_steps, lr=params.lr, latent=params.latent,
                      lambda_mask=lambda_mask, r1=params.r1, r2=params.r2,
                      preview_every=params.preview_every, feature_block=feature_block,
                      lr_boost=own.lr_boost, lr_half_life=own.lr_half_life, stop_distance=own.stop_distance)
