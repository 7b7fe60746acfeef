"""Strokes under the handles, moved as wholes in the picture's own pixels.

A brow is a stroke: a mark of one flat colour, clearly darker or lighter than what is around it and
much longer than it is wide. Dragged by its ends, a person expects the whole stroke to go with them;
dragged by one end, the stroke to bend, its far end staying. The model's drag does neither well at a
small model's scale (it moves the features near the points and leaves the middle of the stroke behind,
or takes the hair above a brow with it), so when every handle lies on such a stroke the server moves the
strokes themselves, in the layer's pixels:

* :func:`find_stroke`: the stroke under a handle: the pixels of the handle's colour connected to it,
  accepted only if it is distinct from its surroundings, elongated, big enough and ends within
  ``window`` model pixels of the handle (a face's skin or a background is not a stroke).
* :func:`move_strokes`: each stroke pixel moves by a displacement spread along the stroke from the
  handles on it (Gaussians of the distance *along the stroke*, interpolating: each handle lands exactly
  on its target); what the stroke uncovers is filled from around it; edges keep their anti-aliasing
  (each pixel's share of the stroke's colour moves, the rest stays).

Points are x then y in the crop's pixels; ``unit`` is crop pixels per model pixel (the sizes below are in
model pixels, so a stroke means the same at every layer size). No ZeroMQ, no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .motion import warp

__all__ = ["Stroke", "StrokeSettings", "find_stroke", "move_strokes"]


@dataclass(frozen=True)
class StrokeSettings:
    """``window``: a stroke must end within this many model pixels of its handle; ``min_contrast``: the
    least distance (RGB levels) between the stroke's colour and the nearest other colour within 4 model
    pixels of the handle; ``min_elongation``: the least ratio of the stroke's length to its width
    (square root of its shape's principal variances); ``min_area``: model pixels squared;
    ``falloff_per_move``/``min_falloff``: how far along the stroke a handle's pull reaches (the width of
    its Gaussian: this many times its move, and at least this many model pixels); ``min_gap``: two
    different strokes dragged together must lie at least this many model pixels apart;
    ``min_ground_ahead``: the least share of the ground's colour 1.5 model pixels ahead of a stroke, the
    way it is dragged (a lip dragged over the mouth's inside is not moved as a stroke)."""

    window: float = 30.0
    min_contrast: float = 35.0
    min_elongation: float = 1.8
    min_area: float = 8.0
    falloff_per_move: float = 2.0
    min_falloff: float = 4.0
    min_gap: float = 3.0
    min_ground_ahead: float = 0.15


@dataclass
class Stroke:
    """A stroke found on the analysis grid: ``mask`` bool ``[h, w]``, its ``colour`` (RGB, 0-255) and
    ``contrast`` (levels to the nearest other colour around the handle)."""

    mask: torch.Tensor
    colour: torch.Tensor
    contrast: float


def _grow(region: torch.Tensor, allowed: torch.Tensor, limit: int) -> torch.Tensor:
    """``region`` grown (8-neighbourhood) through ``allowed`` until it stops (at most ``limit`` steps)."""
    region, allowed_f = region.float()[None, None], allowed.float()[None, None]
    for _ in range(max(limit, 1)):
        grown = F.max_pool2d(region, 3, 1, 1) * allowed_f
        grown = torch.maximum(grown, region)
        if torch.equal(grown, region):
            break
        region = grown
    return region[0, 0] > 0


def _geodesic(mask: torch.Tensor, x: int, y: int, limit: int) -> torch.Tensor:
    """Distance (grid pixels, 8-neighbour chamfer) from ``(x, y)`` to every pixel of ``mask`` through it;
    ``inf`` elsewhere."""
    h, w = mask.shape
    dist = torch.full((h, w), math.inf)
    dist[y, x] = 0.0
    steps = [(dx, dy, math.hypot(dx, dy)) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dx or dy]
    for _ in range(max(limit, 1)):
        padded = F.pad(dist[None, None], (1, 1, 1, 1), value=math.inf)[0, 0]
        best = dist
        for dx, dy, cost in steps:
            best = torch.minimum(best, padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] + cost)
        best = torch.where(mask, best, dist)
        if torch.equal(best, dist):
            break
        dist = best
    return dist


def _fill(values: torch.Tensor, unknown: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
    """``values`` ``[C, h, w]`` with the ``unknown`` pixels filled from the known ones, ring by ring from
    the outside in (each the mean of its known neighbours). ``sources`` (bool ``[h, w]``): only these
    known pixels feed the fill (the ground around a stroke, not a lid line beside it); unknown pixels
    they cannot reach are filled from every known pixel."""
    feeding = ~unknown if sources is None else sources & ~unknown
    known = feeding.float()[None, None]
    out = (values * known[0])[None]
    todo = unknown.clone()
    for _ in range(sum(unknown.shape)):
        if not bool(todo.any()):
            break
        total = F.avg_pool2d(F.pad(out, (1, 1, 1, 1)), 3, 1)[0]
        count = F.avg_pool2d(F.pad(known, (1, 1, 1, 1)), 3, 1)[0, 0]
        ready = todo & (count > 0)
        if not bool(ready.any()):
            break
        mean = total / count.clamp_min(1e-9)
        out[0][:, ready] = mean[:, ready]
        known[0, 0][ready] = 1.0
        todo &= ~ready
    filled = torch.where(unknown, out[0], values)
    if sources is not None and bool(todo.any()):
        filled = _fill(filled, todo)
    return filled


def _strokes_close(found: list[Stroke], gap: float) -> bool:
    """Whether two different strokes lie within ``gap`` grid pixels of each other (a mouth's two lips: what
    lies between them goes with a drag of both, and cannot be filled in from around them)."""
    reach = max(int(math.ceil(gap)), 1)
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            if bool((a.mask & b.mask).any()):
                continue   # one stroke under two handles
            grown = F.max_pool2d(a.mask.float()[None, None], 2 * reach + 1, 1, reach)[0, 0] > 0
            if bool((grown & b.mask).any()):
                return True
    return False


def _pull(alongs: list[torch.Tensor], cells: list[tuple[int, int]], moves: np.ndarray, widths: list[float],
          slack: float) -> torch.Tensor:
    """The displacement ``[2, h, w]`` (crop pixels) of every stroke pixel: between handles on one stroke the
    handles' moves blended by inverse squared distance along it (a stroke dragged by both ends moves
    whole); beyond the outermost handles it fades as a Gaussian of the distance (``widths``). Each handle
    gets exactly its move. ``alongs``: each handle's distance along its stroke, ``cells``: its (row, col);
    ``slack``: how much longer than the way between two handles the way through a pixel may be for the
    pixel to count as between them (the stroke's width: its edges go with its centre line)."""
    h, w = alongs[0].shape
    weights = [torch.where(torch.isfinite(a), 1.0 / (a * a + 1e-3), torch.zeros(())) for a in alongs]
    total = torch.stack(weights).sum(0)
    field = torch.zeros(2, h, w)
    for weight, move in zip(weights, moves, strict=True):
        field[0] += weight * float(move[0])
        field[1] += weight * float(move[1])
    field = field / total.clamp_min(1e-12)
    fade = torch.zeros(h, w)
    for a, width in zip(alongs, widths, strict=True):
        gauss = torch.exp(-a * a / (2 * width * width))
        fade = torch.maximum(fade, torch.where(torch.isfinite(a), gauss, torch.zeros(())))
    for i, (a, cell) in enumerate(zip(alongs, cells, strict=True)):
        for b, width in zip(alongs[i + 1:], widths[i + 1:], strict=True):
            apart = float(b[cell])
            if math.isfinite(apart):   # two handles on one stroke: what lies between them goes all the way
                excess = (a + b - apart - slack).clamp_min(0)
                between = torch.exp(-excess * excess / (2 * min(width, widths[i]) ** 2))
                fade = torch.maximum(fade, torch.where(torch.isfinite(excess), between, torch.zeros(())))
    return field * fade


def _ground_ahead(picture: torch.Tensor, stroke: Stroke, move: np.ndarray, unit: float) -> float:
    """The share of what lies 1.5 model pixels ahead of the stroke, the way it is dragged, that has the
    colour of the ground around it (1: a brow moving over skin; near 0: a lip moving over the mouth's
    inside, the edge of something the model should move whole)."""
    length = float(np.hypot(*move))
    if length == 0:
        return 1.0
    mask = stroke.mask.float()[None, None]
    rim = F.max_pool2d(mask, 5, 1, 2)[0, 0] > 0
    reach = max(int(round(unit)), 1)
    around = (F.max_pool2d(mask, 2 * (reach + 2) + 1, 1, reach + 2)[0, 0] > 0) & ~rim
    if not bool(around.any()):
        return 1.0
    ground = picture[:, around].median(1).values
    tolerance = 0.3 * float((ground - stroke.colour).norm())
    dx, dy = (int(round(1.5 * unit * float(c) / length)) for c in move)
    ahead = torch.roll(stroke.mask, shifts=(dy, dx), dims=(0, 1)) & ~rim
    if not bool(ahead.any()):
        return 1.0
    return float(((picture[:, ahead] - ground[:, None]).norm(dim=0) < tolerance).float().mean())


def find_stroke(picture: torch.Tensor, handle_xy: tuple[float, float], unit: float,
                settings: StrokeSettings = StrokeSettings()) -> Stroke | None:
    """The stroke under a handle in ``picture`` (``[3, h, w]`` float, 0-255; ``unit``: its pixels per
    model pixel), or None when there is none that passes the settings' checks.

    The stroke's colour is the handle's own where the handle sits inside a flat patch; on an edge, the
    colour around the handle that differs most from its surroundings (the mark, not the skin)."""
    _, h, w = picture.shape
    hx, hy = float(handle_xy[0]), float(handle_xy[1])
    x, y = int(min(max(round(hx), 0), w - 1)), int(min(max(round(hy), 0), h - 1))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    radius = torch.hypot(xs - hx, ys - hy)
    centre = picture[:, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].reshape(3, -1)
    if float(centre.std(1).max()) < 8.0:
        colour = centre.median(1).values
    else:
        ring = picture[:, (radius > 3 * unit) & (radius < 4 * unit)]
        disk = picture[:, radius <= 1.5 * unit]
        if ring.shape[1] == 0 or disk.shape[1] == 0:
            return None
        away = (disk - ring.median(1).values[:, None]).norm(dim=0)
        colour = disk[:, away >= away.quantile(0.7)].median(1).values
    distance = (picture - colour[:, None, None]).norm(dim=0)
    others = distance[(radius < 4 * unit) & (distance > 10.0)]
    if others.numel() == 0:
        return None
    contrast = float(others.quantile(0.05))
    if contrast < settings.min_contrast:
        return None
    reach = settings.window * unit
    alike = (distance < 0.5 * contrast) & (radius < reach)
    seed = alike & (radius <= max(unit, 1.0))
    if not bool(seed.any()):
        return None
    mask = _grow(seed, alike, int(2 * reach) + 2)
    if bool((mask & (radius > 0.95 * reach)).any()):
        return None   # it runs on past the window: a region, not a stroke
    area = float(mask.sum())
    if area < settings.min_area * unit * unit:
        return None
    py, px = torch.nonzero(mask, as_tuple=True)
    spread = torch.linalg.eigvalsh(torch.cov(torch.stack([px.float(), py.float()])))
    if float(spread[1]) < settings.min_elongation ** 2 * float(spread[0].clamp_min(1e-6)):
        return None
    return Stroke(mask, colour, contrast)


def move_strokes(native: np.ndarray, handles_xy: Any, targets_xy: Any, unit: float, keep: np.ndarray | None = None,
                 settings: StrokeSettings = StrokeSettings()) -> np.ndarray | None:
    """The crop with the stroke under each handle moved so that each handle lands on its target, uint8
    ``[H, W, 3]``; None when some handle lies on no stroke (the caller then makes the edit another way).

    ``native``: the crop, uint8 ``[H, W, 3]`` (or RGBA: the alpha is ignored); ``handles_xy``/``targets_xy``:
    ``[N, 2]`` crop pixels; ``unit``: crop pixels per model pixel; ``keep`` (bool ``[H, W]``): pixels that
    stay the original's whatever moves. Pixels farther than ``window`` model pixels from every point are
    the original's, byte for byte."""
    original = np.ascontiguousarray(native[..., :3])
    H, W = original.shape[:2]
    handles = np.asarray(handles_xy, np.float64).reshape(-1, 2)
    targets = np.asarray(targets_xy, np.float64).reshape(-1, 2)
    if len(handles) == 0 or len(handles) != len(targets):
        return None
    moves = targets - handles
    pad = settings.window * unit + float(np.abs(moves).max()) + 4.0
    points = np.concatenate([handles, targets])
    x0, y0 = (max(int(math.floor(v - pad)), 0) for v in points.min(0))
    x1, y1 = min(int(math.ceil(points[:, 0].max() + pad)) + 1, W), min(int(math.ceil(points[:, 1].max() + pad)) + 1, H)
    patch = torch.from_numpy(np.array(original[y0:y1, x0:x1])).permute(2, 0, 1).float()
    # find the strokes on a grid of four to eight pixels per model pixel: a large crop costs no more
    factor = max(1, int(unit // 4))
    grid = F.avg_pool2d(patch[None], factor, ceil_mode=True)[0] if factor > 1 else patch
    unit_grid = unit / factor

    def on_grid(p: np.ndarray) -> np.ndarray:
        return (p - [x0, y0] - (factor - 1) / 2) / factor

    strokes = [find_stroke(grid, tuple(on_grid(h)), unit_grid, settings) for h in handles]
    if any(s is None for s in strokes):
        return None
    found: list[Stroke] = [s for s in strokes if s is not None]
    if _strokes_close(found, settings.min_gap * unit_grid):
        return None
    if any(_ground_ahead(grid, stroke, move, unit_grid) < settings.min_ground_ahead
           for stroke, move in zip(found, moves, strict=True)):
        return None
    gh, gw = grid.shape[-2:]
    limit = int(2 * settings.window * unit_grid) + 2
    # distances along the strokes from each handle (crop pixels; inf off its stroke)
    alongs, cells = [], []
    gys, gxs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                              indexing="ij")
    # each stroke with its anti-aliased rim (one grid pixel around its mask)
    grid_rims = [F.max_pool2d(stroke.mask.float()[None, None], 3, 1, 1) for stroke in found]
    for grid_rim, h in zip(grid_rims, handles, strict=True):
        gx, gy = on_grid(h)
        x, y = int(min(max(round(gx), 0), gw - 1)), int(min(max(round(gy), 0), gh - 1))
        # the handle may sit on the rim
        near = (grid_rim[0, 0] > 0) | (torch.hypot(gxs - float(gx), gys - float(gy)) <= max(unit_grid, 1.5))
        alongs.append(_geodesic(near, x, y, limit) * factor)
        cells.append((y, x))
    widths = [max(settings.falloff_per_move * float(np.hypot(*m)), settings.min_falloff * unit) for m in moves]
    field = _pull(alongs, cells, moves, widths, settings.min_falloff * unit)
    on_stroke = torch.stack([torch.isfinite(a) for a in alongs]).any(0)
    # beyond the strokes the field takes the nearest stroke's value: a smooth map to invert, not a motion
    field = _fill(field, ~on_stroke)
    ph, pw = patch.shape[-2:]
    if factor > 1:
        field = F.interpolate(field[None], scale_factor=factor, mode="bilinear", align_corners=False)[0, :, :ph, :pw]
    # each crop pixel's share of a stroke's colour: its anti-aliased rim is a mix of the stroke and what
    # lies behind it, which is filled in from around the stroke
    rims = []
    for grid_rim in grid_rims:
        if factor > 1:
            grid_rim = F.interpolate(grid_rim, scale_factor=factor, mode="nearest")[..., :ph, :pw]
        rims.append(grid_rim[0, 0] > 0)
    rim = torch.stack(rims).any(0)
    # what the strokes uncover is their ground (skin), filled only from ground-coloured pixels: a lid line
    # the brow touched must not bleed into it
    reach = max(int(round(2 * unit)), 1)
    band = (F.max_pool2d(rim.float()[None, None], 2 * reach + 1, 1, reach)[0, 0] > 0) & ~rim
    ground = patch[:, band].median(1).values if bool(band.any()) else patch.reshape(3, -1).median(1).values
    tolerance = 0.3 * min(float((ground - stroke.colour).norm()) for stroke in found)
    behind = _fill(patch, rim, (patch - ground[:, None, None]).norm(dim=0) < tolerance)
    alpha = torch.zeros(ph, pw)
    for stroke, rim in zip(found, rims, strict=True):
        towards = stroke.colour[:, None, None] - behind
        length = (towards * towards).sum(0).clamp_min(1.0)
        share = (((patch - behind) * towards).sum(0) / length).clamp(0, 1)
        # a pixel off the line from the background to the stroke's colour is something else (a lid line
        # the stroke touches): it stays
        off_line = (patch - behind - share * towards).norm(dim=0) > 0.25 * length.sqrt()
        alpha = torch.maximum(alpha, torch.where(rim & ~off_line, share, torch.zeros(())))
    front = torch.where(alpha > 0.02, (patch - (1 - alpha) * behind) / alpha.clamp_min(0.02), patch).clamp(0, 255)
    # backward: the stroke pixel that lands on q is q - u(q) with u(q) = field(q - u(q)) (fixed point)
    u = field[None]
    for _ in range(8):
        u = warp(field[None], -u)
    ys, xs = torch.meshgrid(torch.arange(ph, dtype=torch.float32), torch.arange(pw, dtype=torch.float32), indexing="ij")
    px, py = xs - u[0, 0], ys - u[0, 1]
    inside = (px >= 0) & (px <= pw - 1) & (py >= 0) & (py <= ph - 1)
    carried = warp(alpha[None, None], -u)[0, 0] * inside
    out = carried * warp(front[None], -u)[0] + (1 - carried) * behind
    result = original.copy()
    edited = out.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    region = result[y0:y1, x0:x1]
    if keep is not None:
        edited = np.where(keep[y0:y1, x0:x1, None], region, edited)
    result[y0:y1, x0:x1] = edited
    return result
