"""Crop geometry: the rectangle sent to the model, model coordinates, and the layer-mask plan.

All rectangles are integer pixels in IMAGE coordinates, (x, y, width, height). The crop always lies
inside the layer and has the model's aspect ratio (up to rounding to whole pixels); the plug-in
scales it to the model's size in GIMP and scales the result back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import errors

Point = tuple[float, float]

CROP_AUTO = "auto"            # around the points and the selection, with a margin
CROP_LAYER = "layer"          # as much of the layer as the model's shape allows
CROP_SELECTION = "selection"  # the bounding box of the selection (grown to the model's shape)
CROP_MODES = (CROP_AUTO, CROP_LAYER, CROP_SELECTION)

# Auto crop: margin around the points and the selection, as a fraction of their larger side,
# at least MIN_MARGIN_PX, so the generator sees some context around the edit.
AUTO_MARGIN_FRACTION = 0.25
MIN_MARGIN_PX = 16
MIN_LAYER_SIDE = 8


@dataclass(frozen=True)
class Rect:
    """Integer rectangle, image pixels: left x, top y, width, height."""

    x: int
    y: int
    w: int
    h: int

    @property
    def x2(self) -> int:
        return self.x + self.w

    @property
    def y2(self) -> int:
        return self.y + self.h

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    def contains_point(self, p: Point) -> bool:
        return self.x <= p[0] <= self.x2 and self.y <= p[1] <= self.y2

    def contains_rect(self, other: Rect) -> bool:
        return self.x <= other.x and self.y <= other.y and other.x2 <= self.x2 and other.y2 <= self.y2

    def intersect(self, other: Rect) -> Rect | None:
        x1, y1 = max(self.x, other.x), max(self.y, other.y)
        x2, y2 = min(self.x2, other.x2), min(self.y2, other.y2)
        if x2 <= x1 or y2 <= y1:
            return None
        return Rect(x1, y1, x2 - x1, y2 - y1)

    def inset(self, pixels: int) -> Rect:
        """Shrunk by `pixels` on every side (at least 1x1, centred)."""
        w = max(1, self.w - 2 * pixels)
        h = max(1, self.h - 2 * pixels)
        return Rect(self.x + (self.w - w) // 2, self.y + (self.h - h) // 2, w, h)


def bounding_box(points: Sequence[Point]) -> tuple[float, float, float, float]:
    """(min x, min y, max x, max y) of the points."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _fit_aspect(x0: float, y0: float, x1: float, y1: float, aspect: float) -> tuple[float, float]:
    """Smallest (w, h) with w / h == aspect that covers the region x0..x1, y0..y1."""
    rw, rh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    w = max(rw, rh * aspect)
    return w, w / aspect


def _integer_size(w: float, aspect: float, layer: Rect) -> tuple[int, int]:
    """Whole-pixel size of width ~w with the aspect, never larger than the layer."""
    wi = max(1, min(layer.w, int(round(w))))
    hi = max(1, int(round(wi / aspect)))
    if hi > layer.h:
        hi = layer.h
        wi = max(1, min(layer.w, int(round(hi * aspect))))
    return wi, hi


def _place(center: float, size: int, lo: int, hi: int, need_lo: float, need_hi: float) -> int:
    """Left/top edge for a span of `size` around `center`, inside lo..hi, covering need_lo..need_hi."""
    start = int(math.floor(center - size / 2.0 + 0.5))
    # cover the points first (they are required), then stay inside the layer (a hard limit)
    start = min(start, int(math.floor(need_lo)))
    start = max(start, int(math.ceil(need_hi)) - size)
    return max(lo, min(start, hi - size))


def plan_crop(points: Sequence[Point], layer: Rect, model_size: tuple[int, int], mode: str = CROP_AUTO,
              selection: Rect | None = None) -> Rect:
    """The crop to send to the model, in image coordinates, inside `layer`, model-shaped.

    points: every handle and target (image pixels, x then y), already checked to lie on the layer.
    model_size: (width, height) of the model's output in pixels.
    mode: CROP_AUTO (points + selection + margin, at least the model's size when the layer allows),
          CROP_LAYER (the largest model-shaped crop inside the layer, centred on the points),
          CROP_SELECTION (the selection's bounding box grown to the model's shape).
    selection: bounding box of a non-empty selection (image coordinates) or None.
    Raises PluginError when the points cannot fit in one model-shaped crop inside the layer.
    """
    if mode not in CROP_MODES:
        raise errors.PluginError(
            f"DragGAN: unknown crop mode '{mode}'; use one of {', '.join(CROP_MODES)}.", calling=True
        )
    if layer.w < MIN_LAYER_SIDE or layer.h < MIN_LAYER_SIDE:
        raise errors.layer_too_small(layer.w, layer.h)
    mw, mh = model_size
    aspect = mw / mh
    px0, py0, px1, py1 = bounding_box(points)
    sel = selection.intersect(layer) if selection is not None else None

    if mode == CROP_LAYER:
        w, _h = _fit_aspect(0, 0, layer.w, layer.h, aspect)
        region = (px0, py0, px1, py1)
        w = min(w, layer.w, layer.h * aspect)
    else:
        if mode == CROP_SELECTION:
            if sel is None:
                raise errors.selection_mode_without_selection()
            region = (float(sel.x), float(sel.y), float(sel.x2), float(sel.y2))
            if not (region[0] <= px0 and region[1] <= py0 and px1 <= region[2] and py1 <= region[3]):
                raise errors.points_outside_selection_crop()
            w, _h = _fit_aspect(*region, aspect)
        else:
            x0, y0, x1, y1 = px0, py0, px1, py1
            if sel is not None:
                x0, y0 = min(x0, sel.x), min(y0, sel.y)
                x1, y1 = max(x1, sel.x2), max(y1, sel.y2)
            margin = max(MIN_MARGIN_PX, AUTO_MARGIN_FRACTION * max(x1 - x0, y1 - y0))
            region = (x0 - margin, y0 - margin, x1 + margin, y1 + margin)
            w, _h = _fit_aspect(*region, aspect)
            w = max(w, float(mw))  # at least the model's own resolution when the layer allows
        w = min(w, layer.w, layer.h * aspect)  # the largest model-shaped crop inside the layer

    wi, hi = _integer_size(w, aspect, layer)
    # the points (not the margin or the selection) must fit: they are what the model edits
    if px1 - px0 > wi or py1 - py0 > hi:
        raise errors.points_too_far_apart(px1 - px0, py1 - py0, wi, hi, mw, mh)
    cx = (region[0] + region[2]) / 2.0
    cy = (region[1] + region[3]) / 2.0
    x = _place(cx, wi, layer.x, layer.x2, px0, px1)
    y = _place(cy, hi, layer.y, layer.y2, py0, py1)
    return Rect(x, y, wi, hi)


# The backend takes crops of at most 2048 px a side (protocol MAX_IMAGE_SIDE: 2048 x 2048 as raw RGB is
# 12 MiB plus a 4 MiB mask, inside its ZMQ_MAXMSGSIZE frame limit of 2048^2 RGBA + 1/64). Every crop is
# sent at its own resolution up to that; a larger one is scaled down to it and its result scaled back.
MAX_SENT_SIDE = 2048

# Face alignment: the plug-in cannot see the face (GIMP's Python has no detector), so it sends the
# largest region the wire allows around the points; the backend finds the face holding the handles in
# it (the FFHQ quad is about 4x the eye distance) and answers only the area its model's frame covers.
ALIGN_MAX_SIDE = MAX_SENT_SIDE


def plan_native_region(points: Sequence[Point], layer: Rect, max_side: int = ALIGN_MAX_SIDE) -> Rect:
    """The native-resolution region sent for an aligned edit, in image coordinates: at most
    `max_side` pixels on each side, inside `layer`, centred on the points (x then y, image pixels)
    as far as the layer allows, and always covering them. Raises PluginError when the points span
    more than `max_side`."""
    if layer.w < MIN_LAYER_SIDE or layer.h < MIN_LAYER_SIDE:
        raise errors.layer_too_small(layer.w, layer.h)
    px0, py0, px1, py1 = bounding_box(points)
    if px1 - px0 > max_side or py1 - py0 > max_side:
        raise errors.points_too_far_apart_to_align(px1 - px0, py1 - py0, max_side)
    w, h = min(max_side, layer.w), min(max_side, layer.h)
    x = _place((px0 + px1) / 2.0, w, layer.x, layer.x2, px0, px1)
    y = _place((py0 + py1) / 2.0, h, layer.y, layer.y2, py0, py1)
    return Rect(x, y, w, h)


def sent_size(crop: Rect, max_side: int = MAX_SENT_SIDE) -> tuple[int, int]:
    """(width, height) the crop is sent at: its own, or scaled down (aspect kept) to fit `max_side`."""
    scale = min(1.0, max_side / max(crop.w, crop.h))
    if scale >= 1.0:
        return crop.w, crop.h
    return max(1, min(max_side, round(crop.w * scale))), max(1, min(max_side, round(crop.h * scale)))


def to_sent_points(points: Sequence[Point], crop: Rect, size: tuple[int, int]) -> list[Point]:
    """Image coordinates -> pixel-centre coordinates of the crop as sent at `size` (the backend's crop
    pixels: the centre of pixel i is i), kept on its pixel grid (an anchor on the crop's very edge would
    otherwise fall half a pixel outside).

    GIMP's coordinates are continuous (pixel i spans i..i+1, its centre is i + 0.5)."""
    w, h = size
    sx, sy = w / crop.w, h / crop.h
    return [(min(max((x - crop.x) * sx - 0.5, 0.0), w - 1.0), min(max((y - crop.y) * sy - 0.5, 0.0), h - 1.0))
            for x, y in points]


def from_sent_points(points: Sequence[Point], crop: Rect, size: tuple[int, int]) -> list[Point]:
    """Inverse of to_sent_points (before its clamping)."""
    w, h = size
    sx, sy = w / crop.w, h / crop.h
    return [((x + 0.5) / sx + crop.x, (y + 0.5) / sy + crop.y) for x, y in points]


@dataclass(frozen=True)
class MaskPlan:
    """How the result layer's mask is made, in pixels of the crop (image scale).

    grow: the selection is grown by this much (0 without a selection: the whole crop may change);
    inset: the mask is cut to the crop shrunk by this much on every side, so the feathered edge
           fades out before the crop border and no seam shows;
    feather: feather radius of the final mask.
    """

    use_selection: bool
    grow: int
    inset: int
    feather: int


GROW_FRACTION = 0.03      # of the crop's larger side
FEATHER_FRACTION = 0.03   # with a selection
BORDER_FRACTION = 0.06    # without a selection: a soft frame inside the crop
MIN_FEATHER_PX = 2


def plan_mask(crop: Rect, has_selection: bool, detail: bool = False) -> MaskPlan:
    """Grow/feather/inset sizes for the result layer's mask (see MaskPlan). `detail`: the result holds
    the layer's own pixels wherever the drag moved nothing (the backend keeps them byte for byte), so
    the mask is the produced area as it is, nothing to hide."""
    if detail:
        return MaskPlan(False, 0, 0, 0)
    side = max(crop.w, crop.h)
    if has_selection:
        grow = max(2, int(round(GROW_FRACTION * side)))
        feather = max(MIN_FEATHER_PX, int(round(FEATHER_FRACTION * side)))
    else:
        grow = 0
        feather = max(MIN_FEATHER_PX, int(round(BORDER_FRACTION * min(crop.w, crop.h))))
    # keep at least a quarter of the crop inside the inset rectangle
    inset = min(feather, max(0, min(crop.w, crop.h) // 4))
    return MaskPlan(has_selection, grow, inset, feather)
