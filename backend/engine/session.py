"""The drag edit session: DragGAN's optimise-track loop (paper section 3) over a generator's latent.

Two modes compute the same step:

* ``"reference"`` is the official ``viz/renderer.py`` step operation for operation: full synthesis
  with features, block features resized to image size, per-handle loops. It reproduces the
  official fixtures (``tests/engine/test_official_fixtures.py``).
* ``"fast"`` (default) runs the synthesis only up to the feature block while optimising, reads the
  few feature values the losses and tracking need straight from the low-resolution block output
  (exact, see :mod:`backend.engine.features`), batches all handles, and computes the mask term at
  feature resolution (the one numerical deviation; identical when the feature block already has
  image size). Without a mask, a step synthesises only the boxes of the feature map it reads and
  what they depend on (local synthesis, :mod:`backend.engine.regions`; same drag up to float
  rounding). The full image is synthesised only for previews and :meth:`DragSession.image`.

Step ``k`` (0-based) of a drag: track the handles on the current latent's features (step 0 finds the
handles themselves), report them, stop if every handle is within the stop distance of its target,
else back-propagate motion supervision (+ mask term) and take one Adam step. ``DragStep.preview``
and ``DragStep.points`` describe the latent *before* step ``k``'s update, as the official renderer.

Precision (``DragParams.precision``, fast mode only; reference mode is always float32): ``"bf16"``
runs the truncated synthesis and the previews under ``torch.autocast`` in bfloat16, ``"auto"``
picks bf16 only where it is fast (see :mod:`stylegan2.precision`). Tracking, losses, Adam and the
latent stay float32; :meth:`DragSession.image` is always rendered in float32.

Host synchronisation (``DragParams.sync_every``, fast mode): with ``k = 1`` every step reads its
tracked points, losses and stop flag back to the host (free on a CPU). With ``k > 1`` (the default
on CUDA) :meth:`DragSession.run` queues up to ``k`` steps on the device without reading anything
back: the stop rule is evaluated on the device and, once reached, masks every later update
(latent and points stay as they were at the stop step); the host reads the batch back when ``k``
steps are queued, a preview is due or the run ends, and yields the same steps (the ones after a
stop are discarded), so results are those of ``k = 1``. At most ``k - 1`` wasted steps follow a stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stylegan2.precision import PRECISIONS, autocast, resolve_precision

from . import conventions
from .losses import (
    mask_at_resolution,
    mask_loss,
    motion_loss,
    motion_loss_reference,
    stop_reached,
    stop_reached_tensor,
)
from .regions import Region, feature_regions, step_reach
from .sources import FullResFeatures, LowResFeatures
from .synthesis import block_features
from .tracking import track_points, track_points_reference

MODES = ("fast", "reference")
LATENTS = ("w+", "w")


def warm_lr(lr: float, step_index: int, boost: float, half_life: float) -> float:
    """``lr * (1 + (boost - 1) * 0.5 ** (step_index / half_life))``: ``boost * lr`` at step 0, decaying
    to ``lr`` with a half-life of ``half_life`` steps; exactly ``lr`` when ``boost`` is 1."""
    if boost == 1.0:
        return float(lr)
    return float(lr) * (1.0 + (float(boost) - 1.0) * 0.5 ** (step_index / float(half_life)))


class EditCancelled(Exception):
    """Raised by :meth:`DragSession.run` at the step after a cancel request."""


@dataclass(frozen=True)
class DragParams:
    """Drag settings. Radii ``r1`` (motion supervision) and ``r2`` (tracking window) are in pixels
    *at 512 px* and scale with the image height as the official code does (Python ``round``).

    ``lr_boost``, ``lr_half_life``: larger first steps: step ``i`` of a drag uses
    ``lr * (1 + (lr_boost - 1) * 0.5 ** (i / lr_half_life))`` (:func:`warm_lr`), ``lr_boost`` times
    ``lr`` at step 0, halfway back to ``lr`` after ``lr_half_life`` steps. ``lr_boost`` 1 (default)
    keeps ``lr`` constant, as the official code. Why: far from their targets the handles only gain
    from larger steps; near them the constant ``lr`` keeps the official precision.
    ``lr_schedule``: optional ``step_index -> learning rate``, the general hook; it replaces the two
    fields above when given.

    ``stop_distance``: the stop rule's distance in image pixels (a drag ends once every tracked handle
    is within it of its target); ``0`` (default) = the official ``max(2 / 512 * H, 2)``, which never
    goes below 2 px, coarse for a small model (2 px at 128 px is 8 px at 512).

    ``precision``: ``"fp32"``, ``"bf16"`` or ``"auto"`` (fast mode only, see the module docstring).
    ``sync_every``: steps between host read-backs in :meth:`DragSession.run` (fast mode); ``0`` = auto:
    1 on a CPU, ``preview_every`` (or 10 without previews) on other devices.
    ``local_synthesis`` (fast mode, steps that read their points back, i.e. ``sync_every`` 1): without a
    mask, synthesise only the part of the feature map the step reads (:mod:`backend.engine.regions`).
    """

    max_steps: int = 300
    lr: float = 0.002
    latent: str = "w+"
    optimize_ws: int = 6
    lambda_mask: float = 20.0
    r1: float = 3.0
    r2: float = 12.0
    feature_block: int = 5
    preview_every: int = 10
    mode: str = "fast"
    precision: str = "fp32"
    sync_every: int = 0
    local_synthesis: bool = True
    lr_boost: float = 1.0
    lr_half_life: float = 20.0
    stop_distance: float = 0.0
    lr_schedule: Callable[[int], float] | None = field(default=None, compare=False)

    def lr_at(self, step_index: int) -> float:
        """The learning rate of step ``step_index`` (0-based, counted from the start of each drag)."""
        if self.lr_schedule is not None:
            return float(self.lr_schedule(step_index))
        return warm_lr(self.lr, step_index, self.lr_boost, self.lr_half_life)

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first invalid field."""

        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"params.{name}: expected an integer >= {minimum}, got {value!r}")

        def number(name: str, positive: bool) -> None:
            value = getattr(self, name)
            if not conventions.is_finite_number(value) or value < 0 or (positive and value == 0):
                kind = "> 0" if positive else ">= 0"
                raise ValueError(f"params.{name}: expected a finite number {kind}, got {value!r}")

        integer("max_steps", 1)
        number("lr", positive=True)
        if self.latent not in LATENTS:
            raise ValueError(f"params.latent: expected one of {LATENTS}, got {self.latent!r}")
        integer("optimize_ws", 1)
        number("lambda_mask", positive=False)
        number("r1", positive=True)
        number("r2", positive=False)
        integer("feature_block", 0)
        integer("preview_every", 0)
        if self.mode not in MODES:
            raise ValueError(f"params.mode: expected one of {MODES}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"params.precision: expected one of {PRECISIONS}, got {self.precision!r}")
        integer("sync_every", 0)
        if not isinstance(self.local_synthesis, bool):
            raise ValueError(f"params.local_synthesis: expected true or false, got {self.local_synthesis!r}")
        if not conventions.is_finite_number(self.lr_boost) or self.lr_boost < 1:
            raise ValueError(f"params.lr_boost: expected a finite number >= 1, got {self.lr_boost!r}")
        number("lr_half_life", positive=True)
        number("stop_distance", positive=False)
        if self.lr_schedule is not None and not callable(self.lr_schedule):
            raise ValueError("params.lr_schedule: expected a callable step_index -> lr, or None")


@dataclass
class DragStep:
    """What one step reports. Points are image pixels ``(x, y)``."""

    index: int  # 0-based step within the current drag
    total: int  # params.max_steps
    points: list[tuple[float, float]]  # handles tracked in this step (used by its motion supervision)
    targets: list[tuple[float, float]]
    loss: float  # loss_motion + lambda_mask * loss_mask (back-propagated unless done)
    loss_motion: float
    loss_mask: float  # unweighted mask term, 0 without a mask
    preview: np.ndarray | None  # uint8 [H, W, 3] of the latent this step tracked on, every preview_every
    done: bool  # stop rule reached: no update was made in this step
    seconds: float  # wall time of the step, preview included (with sync_every > 1: the batch's mean)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[1, 3, H, W]`` float (nominal [-1, 1]) -> ``uint8 [H, W, 3]`` with the official truncation."""
    return (images[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class DragSession:
    """One drag edit on one latent; continues with new points via :meth:`set_points`.

    ``G``: a ``stylegan2`` generator (any module with ``synthesis(ws, noise_mode=, return_features=)``,
    ``synthesis.features(ws, stop_block=, noise_mode=)``, ``synthesis.num_blocks``, ``num_ws``,
    ``w_dim`` and ``img_resolution``/``img_height``/``img_width``). It is never modified.
    ``ws``: ``[1, num_ws, w_dim]``. Points: ``(x, y)`` image pixels. ``mask``: ``[H, W]`` float in
    [0, 1], 1 = may move, or None.
    """

    def __init__(
        self,
        G: Any,
        ws: torch.Tensor,
        handle_points: object,
        target_points: object,
        mask: object = None,
        params: DragParams | None = None,
    ) -> None:
        self.G = G
        self.height = int(getattr(G, "img_height", G.img_resolution))
        self.width = int(getattr(G, "img_width", G.img_resolution))
        self.num_ws = int(G.num_ws)
        self.w_dim = int(G.w_dim)
        try:
            self.device = next(G.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        self._cancel_requested = threading.Event()
        self._image_cache: tuple[int, np.ndarray] | None = None
        self._version = 0
        w0 = conventions.validate_ws(ws, self.num_ws, self.w_dim).to(self.device)
        self._start(w0, handle_points, target_points, mask, params or DragParams())

    # -- set-up -------------------------------------------------------------------------------------

    def _start(
        self, w0: torch.Tensor, handle_points: object, target_points: object, mask: object, params: DragParams
    ) -> None:
        """Validates everything first, then (re)initialises the drag state from ``w0``."""
        params.validate()
        num_blocks = int(self.G.synthesis.num_blocks)
        if params.feature_block >= num_blocks:
            raise ValueError(
                f"params.feature_block: {params.feature_block} is out of range, the generator has "
                f"{num_blocks} synthesis blocks"
            )
        r1_px = conventions.pixel_radius(params.r1, self.height)
        if r1_px < 1:
            raise ValueError(
                f"params.r1: {params.r1} (pixels at 512) rounds to a motion radius of 0 pixels at "
                f"{self.height} px; use r1 >= {0.5 * 512 / self.height + 1e-6:.3g}"
            )
        handles = conventions.validate_points(handle_points, self.height, self.width, "handle_points")
        targets = conventions.validate_points(target_points, self.height, self.width, "target_points")
        if len(handles) != len(targets):
            raise ValueError(
                f"target_points: {len(targets)} targets for {len(handles)} handle_points (counts must match)"
            )
        fixed_mask = conventions.fixed_mask_from_editable(mask, self.height, self.width, "mask")

        self.params = params
        self.r1_px = r1_px
        self.r2_px = conventions.pixel_radius(params.r2, self.height)
        self.stop_distance = float(params.stop_distance) or conventions.stop_threshold(self.height)
        self.optimize_ws = min(params.optimize_ws, self.num_ws)
        self._w0 = w0
        self._w_opt = conventions.initial_optimised_latent(w0, params.latent, self.optimize_ws).requires_grad_(True)
        self._optimizer = torch.optim.Adam([self._w_opt], lr=params.lr)
        self._points_rc = conventions.handles_to_rowcol(handles)
        self._targets_rc = conventions.targets_to_rowcol(targets)
        self._points_t = torch.tensor(self._points_rc, dtype=torch.int64, device=self.device)
        self._targets_t = torch.tensor(self._targets_rc, dtype=torch.float64, device=self.device)
        self._stopped_t = torch.zeros((), dtype=torch.bool, device=self.device)
        self._dtype = torch.float32 if params.mode == "reference" else resolve_precision(params.precision, self.device)
        self._fixed_mask = None if fixed_mask is None else fixed_mask.to(self.device)
        self._fixed_mask_low: torch.Tensor | None = None
        self._refs: torch.Tensor | list[torch.Tensor] | None = None
        self._initial_features: torch.Tensor | None = None
        self._step_index = 0
        self._done = False
        self._cancel_requested.clear()
        self._version += 1

    def set_points(
        self, handles: object, targets: object, mask: object = None, params: DragParams | None = None
    ) -> None:
        """Starts a new drag from the current latent: new reference features, a fresh Adam, step 0.

        ``params`` defaults to the current ones.
        """
        self._start(self.ws, handles, targets, mask, params or self.params)

    def restart_from(self, ws: torch.Tensor, handles: object, targets: object) -> None:
        """Back to latent ``ws`` (``[1, num_ws, w_dim]``, e.g. a copy of :attr:`ws` taken earlier) with
        these handles and targets, ready for :meth:`set_points` or a drag from there: undoing drags."""
        w0 = conventions.validate_ws(ws, self.num_ws, self.w_dim).to(self.device)
        self._start(w0, handles, targets, None, self.params)

    # -- state --------------------------------------------------------------------------------------

    @property
    def ws(self) -> torch.Tensor:
        """Current latent ``[1, num_ws, w_dim]`` (a detached copy)."""
        with torch.no_grad():
            return conventions.assemble_ws(self._w_opt, self._w0, self.optimize_ws).detach().clone()

    @property
    def points(self) -> list[tuple[float, float]]:
        """Current handles ``(x, y)``: the last tracked positions (the given handles before step 0)."""
        return conventions.rowcol_to_xy(self._points_rc)

    @property
    def targets(self) -> list[tuple[float, float]]:
        return conventions.rowcol_to_xy(self._targets_rc)

    @property
    def finished(self) -> bool:
        """The stop rule was reached or ``max_steps`` steps were taken."""
        return self._done or self._step_index >= self.params.max_steps

    def image(self) -> np.ndarray:
        """The current latent's image, ``uint8 [H, W, 3]`` (computed once per latent)."""
        if self._image_cache is None or self._image_cache[0] != self._version:
            self._image_cache = (self._version, self._render(self.ws))
        return self._image_cache[1]

    def _render(self, ws: torch.Tensor, dtype: torch.dtype = torch.float32) -> np.ndarray:
        return to_uint8(self._render_tensor(ws, dtype))

    def _render_tensor(self, ws: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        with torch.no_grad(), autocast(dtype, self.device):
            return self.G.synthesis(ws, noise_mode="const").float()

    @property
    def precision(self) -> torch.dtype:
        """The dtype the steps run in (``torch.float32`` or ``torch.bfloat16``)."""
        return self._dtype

    def sync_interval(self) -> int:
        """Steps :meth:`run` queues between host read-backs (see ``DragParams.sync_every``)."""
        params = self.params
        if params.mode == "reference":
            return 1
        if params.sync_every > 0:
            return params.sync_every
        if self.device.type == "cpu":
            return 1
        return params.preview_every if params.preview_every > 0 else 10

    # -- running ------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Thread-safe: :meth:`run` raises :class:`EditCancelled` before its next step."""
        self._cancel_requested.set()

    def run(
        self,
        should_cancel: Callable[[], bool] | None = None,
        progress: Callable[[DragStep], None] | None = None,
    ) -> Iterator[DragStep]:
        """Yields one :class:`DragStep` per step until the stop rule or ``max_steps``.

        Checks ``cancel()`` and ``should_cancel()`` before every step and raises
        :class:`EditCancelled` there; the latent then stays at the last finished step, so the
        session can continue. ``progress`` (optional) is called with each step before it is yielded.
        """
        def cancel_due() -> bool:
            return self._cancel_requested.is_set() or (should_cancel is not None and should_cancel())

        def cancelled() -> EditCancelled:
            self._cancel_requested.clear()
            return EditCancelled(f"drag cancelled before step {self._step_index} of {self.params.max_steps}")

        if self.sync_interval() <= 1:
            while not self.finished:
                if cancel_due():
                    raise cancelled()
                result = self.step()
                if progress is not None:
                    progress(result)
                yield result
            return

        interval = self.sync_interval()
        while not self.finished:
            started = time.perf_counter()
            pending: list[_Pending] = []
            cancel = False
            while not self.finished and len(pending) < interval:
                if cancel_due():
                    cancel = True
                    break
                pending.append(self._queue_step())
                if pending[-1].preview is not None:
                    break
            for result in self._read_back(pending, started):
                if progress is not None:
                    progress(result)
                yield result
            if cancel and not self.finished:
                raise cancelled()

    def step(self) -> DragStep:
        """Runs one step (see the module docstring). Raises ``RuntimeError`` when already finished."""
        if self.finished:
            raise RuntimeError("the drag is finished; call set_points() to drag again")
        started = time.perf_counter()
        params = self.params
        index = self._step_index
        lr = params.lr_at(index)
        for group in self._optimizer.param_groups:
            group["lr"] = lr

        ws = conventions.assemble_ws(self._w_opt, self._w0, self.optimize_ws)
        if params.mode == "reference":
            image, loss_motion, loss_fix, stop = self._reference_forward(ws)
        else:
            image = None
            tracked, loss_motion, loss_fix, stop_t = self._fast_forward(ws, self._local_regions())
            self._points_t = tracked
            self._points_rc = [(int(r), int(c)) for r, c in tracked.tolist()]
            stop = bool(stop_t)
        loss = loss_motion if loss_fix is None else loss_motion + params.lambda_mask * loss_fix

        if not stop:
            (grad,) = torch.autograd.grad(loss, [self._w_opt])
            self._optimizer.zero_grad(set_to_none=True)
            self._w_opt.grad = grad
            self._optimizer.step()
            self._w_opt.grad = None
            self._version += 1

        preview = None
        want_preview = params.preview_every > 0 and (index + 1) % params.preview_every == 0
        if want_preview or stop:
            preview = to_uint8(image.detach()) if image is not None else self._render(ws.detach(), self._dtype)
        self._step_index += 1
        self._done = stop
        return DragStep(
            index=index,
            total=params.max_steps,
            points=self.points,
            targets=self.targets,
            loss=float(loss.detach()),
            loss_motion=float(loss_motion.detach()),
            loss_mask=0.0 if loss_fix is None else float(loss_fix.detach()),
            preview=preview,
            done=stop,
            seconds=time.perf_counter() - started,
        )

    def _reference_forward(
        self, ws: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """The official step: full synthesis, full-size features, per-handle loops."""
        image, block_features = self.G.synthesis(ws, noise_mode="const", return_features=True)
        full = FullResFeatures.from_block(block_features[self.params.feature_block], self.height, self.width).full
        if self._refs is None:
            self._initial_features = full.detach()
            self._refs = [self._initial_features[:, :, row, col] for row, col in self._points_rc]
        assert isinstance(self._refs, list) and self._initial_features is not None
        self._points_rc = track_points_reference(full, self._refs, self._points_rc, self.r2_px)
        stop = stop_reached(torch.tensor(self._points_rc), torch.tensor(self._targets_rc), self.stop_distance)
        loss_motion = motion_loss_reference(full, self._points_rc, self._targets_rc, self.r1_px)
        loss_fix = None
        if self._fixed_mask is not None:
            loss_fix = mask_loss(full, self._initial_features, self._fixed_mask)
        return image, loss_motion, loss_fix, stop

    def _local_regions(self) -> list[Region] | None:
        """The feature-map boxes this step reads (None = synthesise the whole map): fast mode without
        a mask, on generators that can synthesise regions."""
        if (not self.params.local_synthesis or self._fixed_mask is not None
                or not hasattr(self.G.synthesis, "features_in_regions")):
            return None
        feature_size = tuple(self.G.synthesis.block_shape(self.params.feature_block))
        return feature_regions(self._points_rc, step_reach(self.r1_px, self.r2_px), (self.height, self.width),
                               feature_size)

    def _fast_forward(
        self, ws: torch.Tensor, regions: list[Region] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Synthesis up to the feature block; losses and tracking on the low-resolution map.

        ``regions``: synthesise only these boxes of the map (they must hold every value the step
        reads: :meth:`_local_regions`). Returns (tracked points ``[P, 2]`` int64, motion loss, mask
        loss or None, stop flag 0-d bool), all on the device: nothing is read back to the host here.
        """
        with autocast(self._dtype, self.device):
            block = block_features(self.G.synthesis, ws, self.params.feature_block, fused_modconv=False,
                                   regions=regions)
        block = block.float()
        source = LowResFeatures(block, self.height, self.width)
        points = self._points_t
        if self._refs is None:
            self._initial_features = block.detach()
            with torch.no_grad():
                self._refs = source.at_pixels(points[:, 0], points[:, 1]).t().contiguous()  # [P, C]
            if self._fixed_mask is not None:
                self._fixed_mask_low = mask_at_resolution(self._fixed_mask, block.shape[2], block.shape[3])
        assert isinstance(self._refs, torch.Tensor) and self._initial_features is not None
        points = track_points(source.detach(), self._refs, points, self.r2_px)
        stop = stop_reached_tensor(points, self._targets_t, self.stop_distance)
        loss_motion = motion_loss(source, points, self._targets_t, self.r1_px)
        loss_fix = None
        if self._fixed_mask_low is not None:
            loss_fix = mask_loss(block, self._initial_features, self._fixed_mask_low)
        return points, loss_motion, loss_fix, stop

    # -- steps queued without host synchronisation (sync_every > 1) ---------------------------------

    def _queue_step(self) -> _Pending:
        """One fast step whose results stay on the device; masked out once the stop rule was reached."""
        params = self.params
        index = self._step_index
        lr = params.lr_at(index)
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        stopped_before = self._stopped_t
        ws = conventions.assemble_ws(self._w_opt, self._w0, self.optimize_ws)
        tracked, loss_motion, loss_fix, stop = self._fast_forward(ws)
        loss = loss_motion if loss_fix is None else loss_motion + params.lambda_mask * loss_fix
        stopped_now = stopped_before | stop
        (grad,) = torch.autograd.grad(loss, [self._w_opt])
        previous = self._w_opt.detach().clone()
        self._optimizer.zero_grad(set_to_none=True)
        self._w_opt.grad = grad
        self._optimizer.step()
        self._w_opt.grad = None
        with torch.no_grad():
            self._w_opt.copy_(torch.where(stopped_now, previous, self._w_opt))
        self._version += 1
        self._points_t = torch.where(stopped_before, self._points_t, tracked)
        self._stopped_t = stopped_now
        preview = None
        if params.preview_every > 0 and (index + 1) % params.preview_every == 0:
            preview = self._render_tensor(ws.detach(), self._dtype)
        zero = loss.new_zeros(())
        scalars = torch.stack([loss.detach(), loss_motion.detach(), zero if loss_fix is None else loss_fix.detach(),
                               stop.to(loss.dtype), stopped_before.to(loss.dtype)])
        self._step_index += 1
        return _Pending(index=index, points=tracked, scalars=scalars, preview=preview)

    def _read_back(self, pending: list[_Pending], started: float) -> list[DragStep]:
        """Reads a batch of queued steps back in one transfer; drops the steps after a stop."""
        if not pending:
            return []
        count = len(pending)
        scalars = torch.stack([p.scalars.float() for p in pending]).cpu().tolist()
        points = torch.stack([p.points for p in pending]).cpu().tolist()
        final_points = self._points_t.cpu().tolist()
        seconds = (time.perf_counter() - started) / count
        steps = []
        for record, values, tracked in zip(pending, scalars, points):
            loss, loss_motion, loss_mask, stop, stopped_before = values
            if stopped_before:
                break
            preview = None if record.preview is None else to_uint8(record.preview)
            done = bool(stop)
            if done:
                self._done = True
                self._step_index = record.index + 1
                if preview is None:
                    preview = self._render(self.ws, self._dtype)  # updates after the stop were masked out
            steps.append(DragStep(
                index=record.index, total=self.params.max_steps,
                points=conventions.rowcol_to_xy([(int(r), int(c)) for r, c in tracked]), targets=self.targets,
                loss=loss, loss_motion=loss_motion, loss_mask=loss_mask if self._fixed_mask_low is not None else 0.0,
                preview=preview, done=done, seconds=seconds,
            ))
            if done:
                break
        self._points_rc = [(int(r), int(c)) for r, c in final_points]
        return steps


@dataclass
class _Pending:
    """A queued step's results, still on the device."""

    index: int
    points: torch.Tensor  # [P, 2] int64, tracked in this step
    scalars: torch.Tensor  # [5]: loss, loss_motion, loss_mask, stop, stopped before this step
    preview: torch.Tensor | None  # [1, 3, H, W] float, or None
