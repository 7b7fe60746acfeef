"""The motion a drag made, and the edit carried by the picture's own pixels.

A drag changes the generator's latent from ``ws_before`` (the inversion) to ``ws_after``. The model's
own pixels are the model's idea of the picture, at the model's size and with what it cannot draw left
out; the user's layer has its own detail at its own resolution. So the edit a person wants is the
layer's own pixels *moved* the way the drag moved the content, with the model's pixels only where the
drag made content that was not there before (an opened mouth, the far side of a turned head).

* :func:`dense_motion`: the backward flow from the picture after the drag to the one before, by block
  matching the generator's features over a three-level pyramid (coarse displacements first, then
  refined; sub-pixel by a parabola). A pixel moves only where some displacement matches clearly better
  than none, so where the content did not change the flow is exactly zero.
* :func:`motion_region`: the part of that motion which belongs to the drag: the pixels that moved at
  least ``threshold`` and are connected to a handle or target, grown and feathered. The drag also nudges
  things far from the points (the latent is shared by the whole picture); that drift stays out.
* :func:`landed`: whether the dense motion carries each handle's content to its target: an independent
  check of the point tracker, which can lock onto something that merely looks alike.
* :func:`turning`: whether the points turn as one in the picture's plane (the server then lets the motion
  reach well around them).
* :func:`rigid_move` / :func:`transfer_rigid`: a drag whose points all move by one shift and scale
  moves the part they lie on, in the native crop's own pixels (the model's drag moves the features
  under the points and leaves the outline behind).
* :func:`transfer_detail`: the native crop warped by the motion (through the crop <-> model affine map),
  plus the model's change where the warp does not explain it (new content), only inside the region;
  every pixel outside it is the original, byte for byte.

Conventions: images and maps are ``[1, C, H, W]`` tensors; flows are ``[1, 2, h, w]`` in pixels of
their own grid, x then y, pixel-centre coordinates (as ``grid_sample(..., align_corners=True)``); a
*backward* flow ``u`` says that the content at ``q`` after the drag came from ``q + u(q)`` before it.
No ZeroMQ, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MotionSettings", "carried_to", "dense_motion", "feature_pyramid_inputs", "feathered", "flow_at", "landed",
           "match_flow", "motion_region", "resize_flow", "rigid_move", "transfer_detail", "transfer_rigid", "turning",
           "warp"]


@dataclass(frozen=True)
class MotionSettings:
    """``work_size``: the flow's grid (pixels a side, at most the model's); ``radii``: search radius of
    each pyramid level, coarse (work/4) to fine (work); ``box``: side of the window the feature
    distance is summed over; ``stay_margin``: how much better than no motion (a fraction of the mean cost
    of no motion) a displacement must match for a pixel to move at all; ``threshold``: least
    motion (work pixels) that counts as moved; ``grow``/``feather``: the region's margin and soft edge
    (work pixels); ``residual_floor``: model changes smaller than this (on [-1, 1] images; 0.1 = 13
    levels) are not added; ``land_tolerance``/``land_fraction``: how far the motion may leave a handle's
    content from its target and still count as landed: ``land_tolerance`` work pixels, and at most
    ``land_fraction`` of the move (a 2 px move carried 1 px did not land); ``smooth``: the Gaussian (work
    pixels) that spreads confident motion into flat areas; ``allowed_feather``: the width (work pixels) over which the
    motion fades out inside the edge of ``allowed`` (a box the drag may change), so that something the
    model moved across that edge bends instead of breaking; ``pin``/``pin_sigma``/``pin_width_per_move``:
    take each handle's content the rest of the way to its target in the picture's own pixels
    (:func:`transfer_detail`'s ``pins``), with a field at least ``pin_sigma`` model pixels wide and at least
    ``pin_width_per_move`` times the longest way it carries content; ``rigid_tolerance``/``rigid_min_span``:
    when a drag is a rigid move (:func:`rigid_move`): how far (a fraction of the mean move) a point may be
    from one shift-and-scale, and how much of the model's height the points must span on both axes."""

    work_size: int = 128
    radii: tuple[int, int, int] = (4, 2, 2)
    box: int = 5
    stay_margin: float = 0.05
    threshold: float = 1.0
    grow: int = 3
    feather: int = 3
    residual_floor: float = 0.1
    land_tolerance: float = 1.5
    land_fraction: float = 0.4
    smooth: float = 1.0
    pin: bool = True
    pin_sigma: float = 4.0
    pin_width_per_move: float = 2.0
    rigid_tolerance: float = 0.02
    rigid_min_span: float = 0.15
    allowed_feather: int = 4
    turn_min_degrees: float = 3.0
    turn_tolerance: float = 0.25


# ------------------------------------------------------------------------------------------ sampling


def _grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    return xs, ys


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``image`` ``[N, C, H, W]`` sampled at ``q + flow(q)`` (``flow`` ``[N, 2, H, W]``, pixels of the same
    grid); positions outside are clamped to the border. A zero flow returns the image up to float
    rounding (1e-6: 8-bit pictures come back unchanged)."""
    _, _, h, w = image.shape
    xs, ys = _grid(h, w, image.device)
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1
    grid = torch.stack([gx, gy], dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A flow on another grid ``(h, w)`` of the same picture: values rescaled with the pixel size."""
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=True)
    scale = torch.tensor([(size[1] - 1) / max(w - 1, 1), (size[0] - 1) / max(h - 1, 1)], device=flow.device)
    return out * scale.view(1, 2, 1, 1)


def flow_at(flow: torch.Tensor, points_xy: Any) -> np.ndarray:
    """The flow ``[1, 2, h, w]`` read bilinearly at points ``[N, 2]`` (x, y pixels of its grid) -> ``[N, 2]``."""
    pts = torch.as_tensor(np.asarray(points_xy, np.float32).reshape(-1, 2), device=flow.device)
    h, w = flow.shape[-2:]
    grid = torch.stack([pts[:, 0] * (2.0 / max(w - 1, 1)) - 1, pts[:, 1] * (2.0 / max(h - 1, 1)) - 1], -1)
    out = F.grid_sample(flow, grid.view(1, 1, -1, 2), mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].t().cpu().numpy().astype(np.float64)


def _box_mean(x: torch.Tensor, box: int) -> torch.Tensor:
    if box <= 1:
        return x
    pad = box // 2
    return F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), box, 1)


# ---------------------------------------------------------------------------------------- matching


def match_flow(before: torch.Tensor, after: torch.Tensor, settings: MotionSettings = MotionSettings()) -> torch.Tensor:
    """Backward flow ``[1, 2, h, w]`` from ``after`` to ``before`` (feature maps ``[1, C, h, w]`` of one
    size): for each pixel ``q`` of ``after`` the displacement ``u`` that minimises the window-averaged
    squared feature distance ``|after(q) - before(q + u)|^2`` (none where that is not clearly better
    than no motion). Three levels (h/4, h/2, h) with ``settings.radii``; each refines twice the level
    above; then a 3x3 median and a confidence-weighted smoothing."""
    if before.shape != after.shape or before.ndim != 4 or before.shape[0] != 1:
        raise ValueError(f"before and after must be feature maps [1, C, h, w] of one size, got "
                         f"{list(before.shape)} and {list(after.shape)}")
    h, w = before.shape[-2:]
    flow = torch.zeros(1, 2, max(1, h // 4), max(1, w // 4), device=before.device)
    confidence = torch.ones(h, w, device=before.device)
    for level, radius in enumerate(settings.radii):
        size = (max(1, h >> (2 - level)), max(1, w >> (2 - level)))
        if flow.shape[-2:] != size:
            flow = resize_flow(flow, size)
        a = F.interpolate(before, size=size, mode="area") if size != (h, w) else before
        b = F.interpolate(after, size=size, mode="area") if size != (h, w) else after
        flow, confidence = _refine(a, b, flow, radius, settings, subpixel=level == len(settings.radii) - 1)
    moving = flow.abs().sum(1, keepdim=True) > 0
    flow = _median3(flow)
    flow = torch.where(moving, _lucas_kanade(before, after, flow, settings.box), flow)
    return _confident_smooth(flow, confidence, settings.smooth)


def _lucas_kanade(before: torch.Tensor, after: torch.Tensor, flow: torch.Tensor, box: int,
                  iterations: int = 3) -> torch.Tensor:
    """Sub-pixel refinement of a flow by Gauss-Newton on the window-averaged squared difference
    (Lucas-Kanade): each iteration linearises ``before`` around the current match and solves the 2x2
    normal equations of every window, damped so flat windows barely move, each step at most 0.5 px."""
    gx = F.pad(before[..., :, 2:] - before[..., :, :-2], (1, 1, 0, 0), mode="replicate") * 0.5
    gy = F.pad(before[..., 2:, :] - before[..., :-2, :], (0, 0, 1, 1), mode="replicate") * 0.5
    for _ in range(iterations):
        residual = warp(before, flow) - after
        jx, jy = warp(gx, flow), warp(gy, flow)
        a11 = _box_mean((jx * jx).sum(1, keepdim=True), box)
        a12 = _box_mean((jx * jy).sum(1, keepdim=True), box)
        a22 = _box_mean((jy * jy).sum(1, keepdim=True), box)
        b1 = _box_mean((jx * residual).sum(1, keepdim=True), box)
        b2 = _box_mean((jy * residual).sum(1, keepdim=True), box)
        damping = 1e-2 * (a11 + a22).mean().clamp_min(1e-12)
        a11, a22 = a11 + damping, a22 + damping
        det = a11 * a22 - a12 * a12
        dx = -(a22 * b1 - a12 * b2) / det
        dy = -(a11 * b2 - a12 * b1) / det
        flow = flow + torch.cat([dx, dy], 1).clamp(-0.5, 0.5)
    return flow


def _refine(before: torch.Tensor, after: torch.Tensor, base: torch.Tensor, radius: int,
            settings: MotionSettings, subpixel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One pyramid level: the best displacement within ``radius`` of ``base`` for every pixel, and how
    sure the match is (``[h, w]`` in [0, 1]: how much better the best cost is than the window's mean,
    against the picture's typical contrast; low on flat areas).

    A pixel keeps no motion at all unless some displacement matches clearly better than none: by more
    than ``settings.stay_margin`` of the mean cost of no motion. The content that did not change stays
    exactly still, and the content that moved is placed by the data alone (a price on length would
    pull it short)."""
    offsets = [(dx, dy) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    costs = []
    for dx, dy in offsets:
        shift = base + torch.tensor([float(dx), float(dy)], device=base.device).view(1, 2, 1, 1)
        diff = (warp(before, shift) - after).pow(2).sum(1, keepdim=True)
        costs.append(_box_mean(diff, settings.box))
    cost = torch.cat(costs, 1)[0]  # [K, h, w]
    best = cost.argmin(0)
    side = 2 * radius + 1
    by, bx = best // side, best % side
    fx = bx.float() - radius
    fy = by.float() - radius
    if subpixel and radius >= 1:
        def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
            return cost.gather(0, (yy.clamp(0, side - 1) * side + xx.clamp(0, side - 1))[None])[0]

        def vertex(c_minus: torch.Tensor, c0: torch.Tensor, c_plus: torch.Tensor) -> torch.Tensor:
            curvature = c_minus - 2 * c0 + c_plus
            safe = torch.where(curvature > 1e-12, curvature, torch.ones_like(curvature))
            return torch.where(curvature > 1e-12, 0.5 * (c_minus - c_plus) / safe,
                               torch.zeros_like(curvature)).clamp(-0.5, 0.5)

        c0 = at(by, bx)
        inner_x = (bx > 0) & (bx < side - 1)
        inner_y = (by > 0) & (by < side - 1)
        fx = fx + torch.where(inner_x, vertex(at(by, bx - 1), c0, at(by, bx + 1)), torch.zeros_like(c0))
        fy = fy + torch.where(inner_y, vertex(at(by - 1, bx), c0, at(by + 1, bx)), torch.zeros_like(c0))
    flow = base + torch.stack([fx, fy])[None]
    if subpixel:   # the finest level decides what stays (coarser ones only guide the search)
        still = _box_mean((before - after).pow(2).sum(1, keepdim=True), settings.box)[0, 0]
        stay = still <= cost.min(0).values + settings.stay_margin * still.mean()
        flow = torch.where(stay[None, None], torch.zeros_like(flow), flow)
    contrast = cost.mean(0) - cost.min(0).values
    confidence = (contrast / contrast.mean().clamp_min(1e-12)).clamp(0.0, 1.0)
    return flow, confidence


def _confident_smooth(flow: torch.Tensor, confidence: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian average of the flow weighted by each pixel's match confidence (normalised
    convolution): flat areas, where the match says little, take their neighbours' motion."""
    if sigma <= 0:
        return flow
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=flow.dtype, device=flow.device) ** 2
                     / (2 * sigma ** 2))
    taps = taps / taps.sum()

    def blur(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
        x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        x = F.pad(x, (0, 0, radius, radius), mode="replicate")
        return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    weight = confidence.view(1, 1, *confidence.shape) + 1e-3
    return blur(flow * weight) / blur(weight)


def _median3(flow: torch.Tensor) -> torch.Tensor:
    padded = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    windows = padded.unfold(2, 3, 1).unfold(3, 3, 1)
    return windows.reshape(*windows.shape[:4], 9).median(-1).values


# --------------------------------------------------------------------------------- generator side


def feature_pyramid_inputs(G: Any, ws: torch.Tensor, work_size: int) -> torch.Tensor:
    """What the matcher compares for one latent: the image and the outputs of the blocks whose
    resolution lies between ``work_size / 4`` and the image size, each resized to ``work_size`` (area)
    and scaled to unit mean square per block, so every block counts alike. ``[1, C, work, work*W/H]``."""
    with torch.no_grad():
        image, features = G.synthesis(ws, noise_mode="const", return_features=True)
    height, width = image.shape[-2:]
    work = (int(work_size), max(1, round(work_size * width / height)))
    parts = []
    for block in features:
        if block.shape[-2] * 4 < work[0]:
            continue
        f = block.float()
        f = F.interpolate(f, size=work, mode="area") if f.shape[-2] > work[0] else \
            F.interpolate(f, size=work, mode="bilinear", align_corners=False)
        parts.append(f / f.pow(2).mean().sqrt().clamp_min(1e-8))
    rgb = image.float()
    rgb = F.interpolate(rgb, size=work, mode="area") if rgb.shape[-2] > work[0] else rgb
    parts.append(rgb / rgb.pow(2).mean().sqrt().clamp_min(1e-8))
    return torch.cat(parts, 1)


def dense_motion(G: Any, ws_before: torch.Tensor, ws_after: torch.Tensor,
                 settings: MotionSettings = MotionSettings()) -> torch.Tensor:
    """The drag's backward flow ``[1, 2, work, work*W/H]`` (work pixels; ``work`` = the smaller of
    ``settings.work_size`` and the model's height)."""
    height = int(getattr(G, "img_height", G.img_resolution))
    work = min(int(settings.work_size), height)
    before = feature_pyramid_inputs(G, ws_before, work)
    after = feature_pyramid_inputs(G, ws_after, work)
    return match_flow(before, after, settings)


# ---------------------------------------------------------------------------------------- region


def motion_region(flow: torch.Tensor, seeds_xy: Sequence[Sequence[float]], settings: MotionSettings = MotionSettings(),
                  allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard ``[h, w]`` bool, soft ``[1, 1, h, w]`` in [0, 1]): the pixels that moved at least
    ``settings.threshold`` and connect (8-neighbourhood) to one of ``seeds_xy`` (x, y on the flow's
    grid: the drag's handles and targets), grown by ``grow`` and feathered over ``feather`` pixels.
    ``allowed`` (``[h, w]`` in [0, 1], e.g. the selection) multiplies the soft region."""
    h, w = flow.shape[-2:]
    moving = (flow[0].norm(dim=0) >= settings.threshold).float()[None, None]
    seeds = torch.zeros(1, 1, h, w, device=flow.device)
    for x, y in seeds_xy:
        c = int(min(max(round(float(x)), 0), w - 1))
        r = int(min(max(round(float(y)), 0), h - 1))
        seeds[0, 0, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = 1.0
    region = seeds * moving
    for _ in range(h * w):  # flood fill; stops as soon as nothing grows (at most the region's diameter)
        grown = F.max_pool2d(region, 3, 1, 1) * moving
        if torch.equal(grown, region):
            break
        region = grown
    hard = region[0, 0] > 0
    soft = region
    if settings.grow > 0:
        soft = F.max_pool2d(soft, 2 * settings.grow + 1, 1, settings.grow)
    soft = _box_mean(soft, 2 * settings.feather + 1) if settings.feather > 0 else soft
    if allowed is not None:
        soft = soft * feathered(allowed.to(soft).view(h, w), int(settings.allowed_feather))
    return hard, soft


def landed(flow: torch.Tensor, handles_xy: Any, targets_xy: Any, tolerance: float,
           fraction: float = 1.0) -> list[bool]:
    """For each handle: does the backward flow at its target point back to it, within ``tolerance``
    pixels of the flow's grid and within ``fraction`` of the handle's move? Points are on the flow's grid."""
    h = np.asarray(handles_xy, np.float64).reshape(-1, 2)
    t = np.asarray(targets_xy, np.float64).reshape(-1, 2)
    source = t + flow_at(flow, t)
    allowed = np.minimum(tolerance, fraction * np.hypot(*(t - h).T))
    return [bool(d <= a) for d, a in zip(np.hypot(*(source - h).T), allowed, strict=True)]


def carried_to(flow: torch.Tensor, handles_xy: Any, start_xy: Any, iterations: int = 20) -> np.ndarray:
    """Where the motion put each handle's content: the point ``q`` with ``q + flow(q) = handle`` (the
    backward flow inverted by fixed-point iteration from ``start_xy``, e.g. the tracked points). Points
    ``[N, 2]`` on the flow's grid, x then y."""
    h = np.asarray(handles_xy, np.float64).reshape(-1, 2)
    q = np.asarray(start_xy, np.float64).reshape(-1, 2).copy()
    height, width = flow.shape[-2:]
    for _ in range(iterations):
        q = np.clip(h - flow_at(flow, q), 0, [width - 1, height - 1])
    return q


def _spread_points(handles_xy: Any, targets_xy: Any, least: int, height: int, settings: MotionSettings
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """(handles, targets) ``[N, 2]`` when there are at least ``least`` points and, with their targets, they
    span ``settings.rigid_min_span`` of ``height`` on both axes (the gate of :func:`rigid_move` and
    :func:`turning`: the drag is about a part, not one feature); None otherwise."""
    h = np.asarray(handles_xy, np.float64).reshape(-1, 2)
    t = np.asarray(targets_xy, np.float64).reshape(-1, 2)
    if len(h) < least:
        return None
    points = np.concatenate([h, t])
    if float((points.max(0) - points.min(0)).min()) < settings.rigid_min_span * height:
        return None
    return h, t


def spread_out(handles_xy: Any, targets_xy: Any, height: int, settings: MotionSettings = MotionSettings()) -> bool:
    """Do the points, with their targets, span ``settings.rigid_min_span`` of ``height`` on both axes
    (a drag about a part, e.g. a head, rather than features in a row or a cluster)? ``[N, 2]`` model
    pixels, x then y."""
    return _spread_points(handles_xy, targets_xy, 1, height, settings) is not None


def rigid_move(handles_xy: Any, targets_xy: Any, height: int, settings: MotionSettings = MotionSettings()
               ) -> np.ndarray | None:
    """The backward map of a drag whose points move as one, or None.

    When three or more points, spread over at least ``settings.rigid_min_span`` of ``height`` on both
    axes, all move by one shift and uniform scale (each within ``settings.rigid_tolerance`` of the mean
    move), the drag asks to move (or resize) the part they lie on as a whole: a head put elsewhere, not
    its features rearranged. The model's drag tends to move the features it can see under the points
    and leave the outline behind, so such a drag is carried by the picture's own pixels alone. Returns
    the 2x3 map from a pixel after the move to where its content was before (``targets`` -> ``handles``;
    points ``[N, 2]`` model pixels, x then y)."""
    points = _spread_points(handles_xy, targets_xy, 3, height, settings)
    if points is None:
        return None
    h, t = points
    moves = np.hypot(*(t - h).T)
    tc, hc = t - t.mean(0), h - h.mean(0)
    spread = float((tc ** 2).sum())
    if spread < 1e-9 or float(moves.mean()) <= 0:
        return None
    scale = float((tc * hc).sum()) / spread
    fit = np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]])
    fit[:, 2] = h.mean(0) - scale * t.mean(0)
    residual = np.hypot(*(t @ fit[:, :2].T + fit[:, 2] - h).T)
    if float(residual.max()) > settings.rigid_tolerance * float(moves.mean()):
        return None
    return fit


def turning(handles_xy: Any, targets_xy: Any, height: int, settings: MotionSettings = MotionSettings()) -> bool:
    """Do the points turn as one, in the picture's plane (a head tilted to one side)?

    Two or more points spread over at least ``settings.rigid_min_span`` of ``height`` on both axes, whose
    moves one rotation (with a shift and uniform scale) about their centre explains within
    ``settings.turn_tolerance`` of the mean move, by at least ``settings.turn_min_degrees``. Such a drag
    turns the part the points lie on, which reaches well beyond them (hair, outline), unlike points that
    all move one way (a head turned away, nodded: the model's motion past the features is unreliable
    there). Points ``[N, 2]`` model pixels, x then y."""
    points = _spread_points(handles_xy, targets_xy, 2, height, settings)
    if points is None:
        return False
    h, t = points
    hc = (h - h.mean(0)) @ np.array([1.0, 1j])
    tc = (t - t.mean(0)) @ np.array([1.0, 1j])
    moves = np.hypot(*(t - h).T)
    spread = float(np.vdot(hc, hc).real)
    if spread < 1e-12 or float(moves.mean()) <= 0:
        return False
    turn = complex(np.vdot(hc, tc) / spread)   # the best rotation and scale, as one complex number
    misfit = float(np.abs(tc - turn * hc).max())
    return (abs(math.degrees(math.atan2(turn.imag, turn.real))) >= settings.turn_min_degrees
            and misfit <= settings.turn_tolerance * float(moves.mean()))


def feathered(area: torch.Tensor, feather: int) -> torch.Tensor:
    """``area`` (``[h, w]`` in [0, 1]) eroded by ``feather`` pixels, then blurred by a box of ``2 *
    feather + 1``: zero outside as before, a ramp inside its edge. ``[1, 1, h, w]``."""
    limit = area.view(1, 1, *area.shape[-2:]).float()
    if feather <= 0:
        return limit
    return _box_mean(-F.max_pool2d(-limit, 2 * feather + 1, 1, feather), 2 * feather + 1)


def _pin_field(x: torch.Tensor, y: torch.Tensor, sources: np.ndarray, targets: np.ndarray, sigma: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth backward displacement (model pixels) that is ``sources - targets`` at each target and fades
    with distance (Gaussian radial basis of width ``sigma``): interpolating, so the pins are exact."""
    d = sources - targets
    gram = np.exp(-((targets[:, None] - targets[None]) ** 2).sum(-1) / (2 * sigma ** 2))
    coef = np.linalg.solve(gram + 1e-6 * np.eye(len(targets)), d)
    fx, fy = torch.zeros_like(x), torch.zeros_like(y)
    for (tx, ty), (cx, cy) in zip(targets, coef, strict=True):
        g = torch.exp(-((x - float(tx)) ** 2 + (y - float(ty)) ** 2) / (2 * sigma ** 2))
        fx, fy = fx + float(cx) * g, fy + float(cy) * g
    return fx, fy


# -------------------------------------------------------------------------------------- transfer


def _affine_grid(matrix: np.ndarray, out_w: int, out_h: int, device: torch.device,
                 origin: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """For every pixel centre of an ``out_w x out_h`` grid whose first pixel is ``origin`` (x, y) of a
    larger frame, its position through ``matrix`` (2x3): x, y."""
    m = torch.as_tensor(np.asarray(matrix, np.float64), dtype=torch.float32, device=device)
    xs, ys = _grid(out_h, out_w, device)
    xs, ys = xs + origin[0], ys + origin[1]
    return m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]


def _sample_at(src: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    h, w = src.shape[-2:]
    grid = torch.stack([x * (2.0 / max(w - 1, 1)) - 1, y * (2.0 / max(h - 1, 1)) - 1], -1)[None]
    return F.grid_sample(src, grid.to(src.dtype), mode=mode, padding_mode="border", align_corners=True)


def _crop_box(model_box: tuple[float, float, float, float], model_to_crop: np.ndarray, width: int, height: int,
              margin: float = 0.0) -> tuple[int, int, int, int]:
    """The crop pixels ``(x0, y0, x1, y1)`` (end exclusive) covering a model-pixel box, plus ``margin``."""
    x0, y0, x1, y1 = model_box
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ model_to_crop.T
    lo = np.floor(corners.min(0) - margin - 1).astype(int)
    hi = np.ceil(corners.max(0) + margin + 2).astype(int)
    return max(lo[0], 0), max(lo[1], 0), min(hi[0], width), min(hi[1], height)


class _CropWindow:
    """The crop pixels an edit may change: the crop pixels over a box of the model frame (``x0, y0, x1, y1``,
    end exclusive), with, for each of them, its model position (``mx``, ``my``; ``inside`` the model frame)
    and the patch of the crop it may read from (the box grown by ``reach`` model pixels). The rest of the
    crop is copied as it is, so a 2048 px crop costs no more than the part the edit touches."""

    def __init__(self, native: np.ndarray, crop_to_model: np.ndarray, model_size: tuple[int, int],
                 model_box: tuple[float, float, float, float], reach: float, device: torch.device) -> None:
        self.original = np.ascontiguousarray(native[..., :3])
        H, W = self.original.shape[:2]
        model_to_crop = np.linalg.inv(np.vstack([np.asarray(crop_to_model, np.float64), [0, 0, 1]]))[:2]
        crop_per_model = float(np.sqrt(abs(np.linalg.det(model_to_crop[:, :2]))))
        self.x0, self.y0, self.x1, self.y1 = x0, y0, x1, y1 = _crop_box(model_box, model_to_crop, W, H)
        X0, Y0, X1, Y1 = _crop_box(model_box, model_to_crop, W, H, reach * crop_per_model + 2.0)
        patch = np.array(self.original[Y0:Y1, X0:X1])
        self.src = torch.from_numpy(patch).to(device).permute(2, 0, 1)[None].float()
        h, w = max(y1 - y0, 0), max(x1 - x0, 0)
        self.mx, self.my = _affine_grid(crop_to_model, w, h, device, (x0, y0))
        model_w, model_h = model_size
        self.inside = (self.mx >= -0.5) & (self.mx <= model_w - 0.5) & (self.my >= -0.5) & (self.my <= model_h - 0.5)
        self._a = torch.as_tensor(model_to_crop[:, :2], dtype=torch.float32, device=device)
        cx, cy = _grid(h, w, device)
        self._cx, self._cy = cx + (x0 - X0), cy + (y0 - Y0)   # window pixel centres in the patch's pixels
        self.unchanged = self.src[:, :, y0 - Y0:y1 - Y0, x0 - X0:x1 - X0]

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    def allowed(self, keep: np.ndarray | None) -> torch.Tensor | None:
        """Where the window may change: not ``keep`` (bool ``[H, W]`` of the crop); None = anywhere."""
        if keep is None:
            return None
        return torch.as_tensor(~np.asarray(keep, bool)[self.y0:self.y1, self.x0:self.x1], device=self.mx.device)

    def sample(self, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        """The crop read at each window pixel displaced by (``dx``, ``dy``) model pixels, ``[1, 3, h, w]``.
        Bicubic: a fractional shift resampled bilinearly blurs every edge it moves, which at the model's
        own size costs more likeness than a small move gains (tuning cases, 128 px layers: 5 of 13 closer
        than no edit bilinear, 10 of 13 bicubic)."""
        a = self._a
        return _sample_at(self.src, self._cx + a[0, 0] * dx + a[0, 1] * dy, self._cy + a[1, 0] * dx + a[1, 1] * dy,
                          mode="bicubic")

    def paste(self, moving: torch.Tensor, edited: torch.Tensor) -> np.ndarray:
        """The crop with ``edited`` (``[1, 3, h, w]``) where ``moving`` (bool ``[h, w]``), the original elsewhere."""
        window = torch.where(moving[None, None], edited, self.unchanged)
        result = self.original.copy()
        result[self.y0:self.y1, self.x0:self.x1] = \
            window[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return result


def transfer_detail(native: np.ndarray, crop_to_model: np.ndarray, model_size: tuple[int, int], flow: torch.Tensor,
                    region: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                    residual_floor: float = 0.1, keep: np.ndarray | None = None,
                    pins: tuple[np.ndarray, np.ndarray] | None = None, pin_sigma: float = 4.0,
                    pin_width_per_move: float = 2.0) -> np.ndarray:
    """The edit in the native crop's frame, uint8 ``[H, W, 3]``.

    ``native``: the crop, uint8 ``[H, W, 3]``; ``crop_to_model``: 2x3 map from crop pixel centres to model
    pixel centres; ``model_size``: (width, height); ``flow``/``region``: on the work grid of the model
    frame (:func:`dense_motion`, :func:`motion_region`'s soft region); ``before``/``after``: the model's
    pictures ``[1, 3, h, w]`` in [-1, 1] before and after the drag. ``keep`` (bool ``[H, W]``): pixels that
    must stay the original's whatever the motion (outside the selection). Where the region is 0 (and no
    pin's neighbourhood reaches), or ``keep``, the original pixel is returned unchanged.

    ``pins`` (``sources``, ``targets``: ``[N, 2]`` model pixels): where the motion put each handle's content
    (:func:`carried_to`) and where the user asked for it. The moved picture is then moved once more by a
    smooth field that takes each source onto its target, so the handles land where asked even when the
    model's drag stopped short or overshot. Its width is ``pin_sigma`` model pixels, or
    ``pin_width_per_move`` times the longest source -> target distance when that is more: a Gaussian
    that carries content ``d`` pixels squeezes the picture by at most ``0.61 d / width`` (0.3 at twice the
    distance), so a long way left moves the part around the handle instead of folding it over itself.
    The field fades to nothing away from the targets, and besides the region it may move only the pins'
    own neighbourhoods (a Gaussian of twice its width; never ``keep``)."""
    model_w, model_h = model_size
    work_h, work_w = flow.shape[-2:]
    sx, sy = (work_w - 1) / max(model_w - 1, 1), (work_h - 1) / max(model_h - 1, 1)
    sources = targets = np.zeros((0, 2))
    if pins is not None:
        sources, targets = (np.asarray(p, np.float64).reshape(-1, 2) for p in pins)
    pinned = len(targets) > 0
    longest_left = float(np.hypot(*(sources - targets).T).max()) if pinned else 0.0   # model pixels
    pin_sigma = max(pin_sigma, pin_width_per_move * longest_left)
    # Only the crop pixels the region (or the pins' neighbourhoods) covers can change.
    rows, cols = torch.nonzero(region[0, 0] > 0, as_tuple=True)
    boxes = []
    if len(rows):
        boxes.append((float(cols.min()) / sx, float(rows.min()) / sy, float(cols.max()) / sx, float(rows.max()) / sy))
    if pinned:
        reach = 6.0 * pin_sigma  # where the pins' weight (a Gaussian of 2 sigma) is above 0.01
        pts = np.concatenate([sources, targets])
        boxes.append((pts[:, 0].min() - reach, pts[:, 1].min() - reach, pts[:, 0].max() + reach,
                      pts[:, 1].max() + reach))
    if not boxes:
        return np.ascontiguousarray(native[..., :3]).copy()
    model_box = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    # a window pixel may read as far as the largest displacement (model pixels)
    reach_model = float(flow.abs().max()) / min(sx, sy) + longest_left
    win = _CropWindow(native, crop_to_model, model_size, model_box, reach_model, flow.device)
    if win.empty:
        return win.original.copy()
    mx, my, inside = win.mx, win.my, win.inside
    # window pixel -> model pixel -> work pixel
    weight = _sample_at(region, mx * sx, my * sy)[0, 0] * inside
    allowed = win.allowed(keep)
    if allowed is not None:
        weight = weight * allowed
    moving = weight > 0
    # The pins' field comes first: a pixel shows what the motion put at the point the field moves it from.
    # Composing the two displacements samples the crop once (two warps in a row would blur it twice).
    fx = fy = torch.zeros_like(mx)
    if pinned:
        fx, fy = _pin_field(mx, my, sources, targets, pin_sigma)
        # the pins' neighbourhoods may move even where the model's motion was too small to count
        near = torch.zeros_like(mx)
        for tx, ty in np.concatenate([sources, targets]):
            near = torch.maximum(near, torch.exp(-((mx - float(tx)) ** 2 + (my - float(ty)) ** 2)
                                                 / (2 * (2 * pin_sigma) ** 2)))
        pin_weight = torch.maximum(weight, near * inside)
        if allowed is not None:
            pin_weight = pin_weight * allowed
        fx, fy = fx * pin_weight, fy * pin_weight
        moving = moving | (pin_weight > 0.01)
    wx, wy = (mx + fx) * sx, (my + fy) * sy
    # the flow in crop pixels: model displacement (work px / scale) through the model -> crop linear part
    u = _sample_at(flow * region, wx, wy)[0]
    warped = win.sample(fx + u[0] / sx, fy + u[1] / sy)   # the pins' field and the motion, composed

    # what the warp does not explain: the model's change after warping its own "before" picture
    def on_work_grid(picture: torch.Tensor) -> torch.Tensor:
        picture = picture.float()
        return F.interpolate(picture, size=(work_h, work_w), mode="area") if picture.shape[-2] != work_h else picture

    change = on_work_grid(after) - warp(on_work_grid(before), flow * region)
    # only in the region's core: at its soft edge the warp fades out while the model's content moved on,
    # and their difference there is the moved content again (a doubled edge), not new content
    core = _box_mean((region >= 0.99).float(), 3)
    change = torch.sign(change) * (change.abs() - residual_floor).clamp_min(0) * core
    residual = _sample_at(change, wx, wy, mode="bicubic") * 127.5
    edited = warped + residual
    if not bool(moving.any()):
        return win.original.copy()
    return win.paste(moving, edited)


def transfer_rigid(native: np.ndarray, crop_to_model: np.ndarray, model_size: tuple[int, int], move: np.ndarray,
                   area: torch.Tensor, keep: np.ndarray | None = None) -> np.ndarray:
    """A rigid move (:func:`rigid_move`'s 2x3 backward map, model pixels) of the native crop, uint8
    ``[H, W, 3]``, weighted by ``area`` (soft ``[1, 1, h, w]`` on any grid over the model frame: 1 moves
    fully, 0 stays; e.g. :func:`feathered` of the selection or the default box). Pixels where ``area`` is
    0, outside the model frame, or in ``keep`` (bool ``[H, W]``) are the original's, byte for byte; the
    crop is sampled once."""
    model_w, model_h = model_size
    grid_h, grid_w = area.shape[-2:]
    sx, sy = (grid_w - 1) / max(model_w - 1, 1), (grid_h - 1) / max(model_h - 1, 1)
    rows, cols = torch.nonzero(area[0, 0] > 0, as_tuple=True)
    if not len(rows):
        return np.ascontiguousarray(native[..., :3]).copy()
    model_box = (float(cols.min()) / sx, float(rows.min()) / sy, float(cols.max()) / sx, float(rows.max()) / sy)
    corners = np.array([[model_box[0], model_box[1]], [model_box[2], model_box[1]], [model_box[0], model_box[3]],
                        [model_box[2], model_box[3]]])
    reach = float(np.abs(corners @ move[:, :2].T + move[:, 2] - corners).max())
    win = _CropWindow(native, crop_to_model, model_size, model_box, reach, area.device)
    if win.empty:
        return win.original.copy()
    mx, my = win.mx, win.my
    weight = _sample_at(area.float(), mx * sx, my * sy)[0, 0] * win.inside
    allowed = win.allowed(keep)
    if allowed is not None:
        weight = weight * allowed
    m = torch.as_tensor(np.asarray(move, np.float64), dtype=torch.float32, device=area.device)
    dx = (m[0, 0] * mx + m[0, 1] * my + m[0, 2] - mx) * weight
    dy = (m[1, 0] * mx + m[1, 1] * my + m[1, 2] - my) * weight
    return win.paste(weight > 0, win.sample(dx, dy))
