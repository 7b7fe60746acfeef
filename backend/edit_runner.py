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
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from draggan_wire import protocol
from draggan_wire.protocol import ErrorCode, ProtocolError

from . import models
from .images import checked_mask, image_to_rgb
from .model_pool import ModelPool, UnknownModel, device_memory, resolve_device
from .sessions import POINT_BOXES_NOTE, Emit, HeldSession, ShouldCancel, crop_result, maybe_float, run_drag
from .stores import OwnedStore, OwnerCache

log = logging.getLogger("draggan.backend")


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
        mask = checked_mask(req.mask, W, H)
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
        drag_mask, allowed, region_note = _drag_region(prepared.mask, req.params, handles, targets, width, height,
                                                       rigid_ok=req.result != "model")
        if region_note:
            notes.append(region_note)
        session = DragSession(projection.generator, projection.ws, handle_points=handles, target_points=targets,
                              mask=drag_mask, params=_drag_params(req.params, projection.generator, req.model))
        held = HeldSession(req.model, session, quality, "", req.params, alignment=prepared.alignment.to_dict(),
                           crop_size=(W, H), aligned=kind, result=req.result, native=pixels,
                           ws_initial=projection.ws.detach().clone(), seeds=handles + targets, allowed=allowed,
                           keep=None if mask is None else mask <= 0.0, last=(handles, targets))
        held.remember()   # undo's first state: the inversion, before any drag
        steps, stopped = run_drag(session, emit, should_cancel, quality, prepared.alignment, (W, H),
                                    req.params.preview_frame, should_stop)
        session_id = "none"
        if self.cache:  # the same photo from the same client keeps one id
            held.image_id = req.image_id or hashlib.sha256(owner.encode() + pixels.tobytes()).hexdigest()[:32]
            self.images.put(owner, pixels, key=held.image_id)
            session_id = self.sessions.put(owner, held)
        if stopped:
            notes.append(f"stopped by the client at step {steps}")
        result = crop_result(held, session_id, steps, started, "; ".join(notes))
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
        mask = checked_mask(req.mask, W, H)
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
            steps, stopped = run_drag(session, emit, should_cancel, held.inversion, al, (W, H),
                                        params.preview_frame, should_stop)
        except ProtocolError as exc:
            if exc.code == ErrorCode.CANCELLED:   # a cancelled drag keeps nothing: the session as before it
                held.restore(held.history.pop())
            raise
        if stopped:
            note = "; ".join([note, f"stopped by the client at step {steps}"])
            if steps == 0:   # stopped before its first step: nothing changed, nothing to undo
                held.restore(held.history.pop())
        result = crop_result(held, req.session_id, steps, started, note)
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
        result = crop_result(held, req.session_id, 0, started, "the last drag was undone")
        result.history = len(held.history)
        return result

    def _project(self, owner: str, G: Any, pixels: np.ndarray, params: protocol.EditParams, emit: Emit,
                 should_cancel: ShouldCancel, pti: bool) -> Any:
        from inversion import ENCODER_PRESETS, PRESETS, InversionCancelled, project

        def progress(step: int, total: int, metrics: Any) -> None:
            quality = None
            if isinstance(metrics, dict) and "psnr" in metrics and "stlpips" in metrics:
                quality = protocol.InversionQuality(psnr=float(metrics["psnr"]), stlpips=float(metrics["stlpips"]))
            emit(protocol.Progress(phase="inversion", step=int(step), total=int(total), inversion=quality,
                                   loss=maybe_float(metrics.get("loss")) if isinstance(metrics, dict) else None))

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


def _check_points(points: list[tuple[float, float]], width: int, height: int, field_name: str) -> None:
    for i, (x, y) in enumerate(points):
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{field_name}[{i}]: ({x:g}, {y:g}) is outside the "
                                                       f"{width}x{height} image (x in 0..{width - 1}, "
                                                       f"y in 0..{height - 1})", f"{field_name}[{i}]")


def _drag_region(selection: np.ndarray | None, params: protocol.EditParams, handles: list[tuple[float, float]],
                 targets: list[tuple[float, float]], width: int, height: int, rigid_ok: bool = False
                 ) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(the drag's mask, where its motion may reach, a note): with a selection, the selection (model
    frame) for both; without one, ``params.region == "points"`` makes both a box around the points, so
    that a drag moves what was dragged rather than the whole picture; "whole" leaves both open. With
    ``rigid_ok`` (a first drag whose result is the picture's own pixels), points that move as one
    (motion.rigid_move) or turn as one (motion.turning) get a box that reaches the part they lie on, and
    points in a row or a cluster (not motion.spread_out) may move the picture only in a box around each."""
    from alignment import aligned_edit

    if selection is not None:
        return selection, selection.astype(np.float32), ""
    if params.region == "whole":
        return None, None, ""
    from backend.engine import motion

    if rigid_ok and motion.rigid_move(handles, targets, height) is not None:
        box = aligned_edit.default_region(handles, targets, width, height, wide=True)
        return box, box, ("no selection: the points move as one, so a box around them moves with them "
                          "(Region: Whole picture frees it)")
    if rigid_ok and motion.turning(handles, targets, height):
        box = aligned_edit.default_region(handles, targets, width, height, wide=True)
        return box, box, ("no selection: the points turn as one, so a box well around them may turn with them "
                          "(Region: Whole picture frees it)")
    box = aligned_edit.default_region(handles, targets, width, height)
    if rigid_ok and not motion.spread_out(handles, targets, height):
        # the model still gets the one box to make its change in; the picture moves only near each point
        return box, aligned_edit.point_boxes(handles, targets, width, height), POINT_BOXES_NOTE
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
