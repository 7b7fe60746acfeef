"""Drag sessions held for ``continue`` and ``undo`` (``HeldSession``, ``DragState``), running a
session's drag with progress (``run_drag``), and its picture as a result in the crop's frame
(``crop_result``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from draggan_wire import protocol
from draggan_wire.protocol import ErrorCode, ProtocolError

from .images import rgb_to_image

if TYPE_CHECKING:
    from .engine.motion import MotionSettings

#: The note for a drag without a selection whose points lie in a row or a cluster (backend.edit_runner) ...
POINT_BOXES_NOTE = ("no selection: the points lie in a row or a cluster, so each moves a box around it, not the face "
                    "between them (Region: Whole picture frees it)")
#: ... and what it becomes when every handle lies on a stroke, which then moves as a whole
STROKES_NOTE = ("the points lie on strokes (a brow, a line): each stroke moved as a whole, bending where one end "
                "stayed, in your own pixels; the model's drag was not used for the picture (Region: Whole picture "
                "gives the model's motion)")

Emit = Callable[[protocol.Progress], None]
ShouldCancel = Callable[[], bool]


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


def maybe_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def run_drag(session: Any, emit: Emit, should_cancel: ShouldCancel,
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
                                   loss=maybe_float(step.loss), preview=preview,
                                   preview_frame="crop" if in_crop else "model", preview_offset=offset,
                                   text="done: handles reached their targets" if step.done else ""))
    except EditCancelled:
        if stop() and not should_cancel():
            return steps, True
        raise ProtocolError(ErrorCode.CANCELLED, "cancelled") from None
    return steps, False


def crop_result(held: HeldSession, session_id: str, steps: int, started: float,
                note: str, settings: MotionSettings | None = None) -> protocol.Result:
    """The session's picture in the crop's frame (RGBA cut to the area the model's frame covers)
    and, per handle of the last drag, whether the dense motion (or, for a rigid move, that move)
    carries it to its target. ``settings``: how the motion is measured and applied (the defaults when
    None; benchmarks/refinish.py tunes them)."""
    from alignment import aligned_edit
    from alignment.align import Alignment
    from backend.engine import motion, strokes

    al = Alignment.from_dict(held.alignment)
    W, H = held.crop_size
    session = held.session
    settings = motion.MotionSettings() if settings is None else settings
    handles, targets = held.last
    pinned = False
    # a first drag whose points move as one moves the part they lie on, rigidly, in the picture's own
    # pixels: the model's motion is not needed
    rigid = (motion.rigid_move(handles, targets, al.height, settings)
             if held.result != "model" and handles and len(held.history) <= 1 else None)
    moved_strokes = None
    # points in a row or a cluster that all lie on strokes (brows): the strokes move as wholes, in the
    # picture's own pixels (the model's drag moves the features at the points and leaves the middle of a
    # stroke behind, or takes the hair above a brow along)
    if (rigid is None and held.result != "model" and handles and len(held.history) <= 1
            and (held.keep is not None or held.params.region != "whole")
            and not motion.spread_out(handles, targets, al.height, settings)):
        moved_strokes = strokes.move_strokes(held.native, al.to_crop(handles), al.to_crop(targets), al.scale,
                                             held.keep)
    if moved_strokes is not None:
        rgba, offset = aligned_edit.cut_to_produced_area(al, moved_strokes)
        # each handle is carried exactly to its target, unless the target lies in what must be kept
        landed = [held.keep is None or not bool(held.keep[min(max(round(y), 0), H - 1), min(max(round(x), 0), W - 1)])
                  for x, y in al.to_crop(targets)]
        note = "; ".join([part for part in note.split("; ") if part and part != POINT_BOXES_NOTE] + [STROKES_NOTE])
    elif rigid is not None:
        feather = round(settings.allowed_feather * al.height / min(settings.work_size, al.height))  # model px
        area = (motion.feathered(torch.from_numpy(np.asarray(held.allowed, np.float32)), feather)
                if held.allowed is not None else torch.ones(1, 1, al.height, al.width))
        rgb = motion.transfer_rigid(held.native, al.inverse_matrix, (al.width, al.height), rigid, area, held.keep)
        rgba, offset = aligned_edit.cut_to_produced_area(al, rgb)
        t = np.asarray(targets, np.float64)
        landed = [bool(d <= settings.land_tolerance) for d in
                  np.hypot(*(t @ rigid[:, :2].T + rigid[:, 2] - np.asarray(handles, np.float64)).T)]
        note = "; ".join(filter(None, [note, "the points move as one: the part they lie on moved with them, "
                                             "in your own pixels"]))
    else:
        flow = motion.dense_motion(session.G, held.ws_initial, session.ws, settings)
        scale = np.array([(flow.shape[-1] - 1) / max(al.width - 1, 1), (flow.shape[-2] - 1) / max(al.height - 1, 1)])
        landed = motion.landed(flow, np.asarray(handles) * scale, np.asarray(targets) * scale,
                               settings.land_tolerance, settings.land_fraction)
        if held.result == "model":
            rgba, offset = aligned_edit.paste_back_cut(al, W, H, session.image())
        else:
            allowed = None
            if held.allowed is not None:
                allowed = torch.nn.functional.interpolate(torch.from_numpy(held.allowed)[None, None],
                                                          size=tuple(flow.shape[-2:]), mode="area")[0, 0]
            _, soft = motion.motion_region(flow, np.asarray(held.seeds) * scale, settings, allowed)
            with torch.no_grad():
                before = session.G.synthesis(held.ws_initial, noise_mode="const")
                after = session.G.synthesis(session.ws, noise_mode="const")
            pins = None
            # the flow maps to the picture before any drag, where only the first drag's handles lie
            if settings.pin and handles and len(held.history) <= 1:
                # where the motion as applied (faded by the region) put each handle, not the model's whole motion
                sources = motion.carried_to(flow * soft, np.asarray(handles) * scale,
                                            np.asarray(session.points) * scale)
                pins = (sources / scale, np.asarray(targets, np.float64))
                pinned = True
            rgb = motion.transfer_detail(held.native, al.inverse_matrix, (al.width, al.height), flow, soft, before,
                                         after, settings.residual_floor, held.keep, pins, settings.pin_sigma,
                                         settings.pin_width_per_move)
            rgba, offset = aligned_edit.cut_to_produced_area(al, rgb)
    points = [(float(x), float(y)) for x, y in al.to_crop(session.points)]
    if not all(landed):
        short = ", ".join(str(i + 1) for i, ok in enumerate(landed) if not ok)
        why = f"stopped short: handle {short} did not reach its target"
        if pinned:
            why = (f"stopped short: the model did not carry handle {short} to its target; the rest of the way "
                   "is your pixels warped")
        note = "; ".join(filter(None, [note, why]))
    return protocol.Result(image=rgb_to_image(rgba), points=points, session_id=session_id,
                           image_id=held.image_id, inversion=held.inversion, steps=steps,
                           seconds=time.monotonic() - started, frame="crop", offset=offset,
                           alignment=held.aligned, note=note, landed=landed)
