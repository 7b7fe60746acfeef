"""The GIMP calls of an edit: read pixels and the selection, scale with GIMP's own interpolation
in temporary images, and build the result layer with its mask and session record.

Imports gi.repository.Gimp/Gegl (the real ones inside GIMP, a fake one in tests/plugin).
Rectangles are geometry.Rect in image coordinates unless a name says "layer".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

from . import parasite  # noqa: E402
from .geometry import MaskPlan, Rect  # noqa: E402

RGB_U8 = "R'G'B' u8"     # babl format: 8-bit sRGB-encoded RGB, 3 bytes per pixel
RGBA_U8 = "R'G'B'A u8"   # 4 bytes per pixel
MASK_U8 = "Y u8"         # one byte per pixel (selection, channels, masks)
FORMATS = {1: "Y' u8", 3: RGB_U8, 4: RGBA_U8}


def layer_rect(layer: Any) -> Rect:
    """The layer's rectangle in image coordinates."""
    _ok, x, y = layer.get_offsets()
    return Rect(int(x), int(y), int(layer.get_width()), int(layer.get_height()))


def selection_bounds(image: Any) -> Rect | None:
    """Bounding box of the selection (image coordinates), None when nothing is selected."""
    _ok, non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
    if not non_empty:
        return None
    return Rect(int(x1), int(y1), int(x2 - x1), int(y2 - y1))


def read_rgb(layer: Any, crop: Rect) -> bytes:
    """RGB bytes (3 per pixel, row-major) of the crop from the layer. Gray layers come out gray in
    RGB; alpha is dropped (the model sees the stored colours)."""
    lr = layer_rect(layer)
    rect = Gegl.Rectangle.new(crop.x - lr.x, crop.y - lr.y, crop.w, crop.h)   # layer coordinates
    return bytes(layer.get_buffer().get(rect, 1.0, RGB_U8, Gegl.AbyssPolicy.CLAMP))


def read_selection(image: Any, crop: Rect) -> bytes:
    """Selection values (0..255, one byte per pixel) over the crop; the selection channel is
    image-sized and in image coordinates."""
    rect = Gegl.Rectangle.new(crop.x, crop.y, crop.w, crop.h)
    return bytes(image.get_selection().get_buffer().get(rect, 1.0, MASK_U8, Gegl.AbyssPolicy.NONE))


def _set_pixels(drawable: Any, w: int, h: int, fmt: str, data: bytes) -> None:
    buf = drawable.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, w, h), fmt, data)
    buf.flush()   # hand the tiles back to GIMP's core before the next PDB call


def _get_pixels(drawable: Any, w: int, h: int, fmt: str) -> bytes:
    return bytes(drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt,
                                           Gegl.AbyssPolicy.CLAMP))


def scale_pixels(rgb: bytes, mask: bytes | None, size: tuple[int, int], new_size: tuple[int, int],
                 channels: int = 3) -> tuple[bytes, bytes | None]:
    """Scale pixels (and optionally a one-byte mask of the same size) to new_size with GIMP's own
    interpolation, in a temporary image that is deleted afterwards. -> (pixels with `channels` bytes
    each, 3 = RGB or 4 = RGBA, mask bytes)."""
    w, h = size
    nw, nh = new_size
    shrinking = nw * nh < w * h
    Gimp.context_push()
    tmp = Gimp.Image.new(w, h, Gimp.ImageBaseType.RGB)
    try:
        # LoHalo is GIMP's best downscaler; cubic is sharp and halo-free enough for 2-4x up
        Gimp.context_set_interpolation(Gimp.InterpolationType.LOHALO if shrinking
                                       else Gimp.InterpolationType.CUBIC)
        kind = Gimp.ImageType.RGBA_IMAGE if channels == 4 else Gimp.ImageType.RGB_IMAGE
        layer = Gimp.Layer.new(tmp, "draggan-scale", w, h, kind, 100.0, Gimp.LayerMode.NORMAL)
        tmp.insert_layer(layer, None, 0)
        _set_pixels(layer, w, h, FORMATS[channels], rgb)
        channel = None
        if mask is not None:
            channel = Gimp.Channel.new(tmp, "draggan-mask", w, h, 100.0, Gegl.Color.new("black"))
            tmp.insert_channel(channel, None, 0)
            _set_pixels(channel, w, h, MASK_U8, mask)
        tmp.scale(nw, nh)
        out_rgb = _get_pixels(layer, nw, nh, FORMATS[channels])
        out_mask = _get_pixels(channel, nw, nh, MASK_U8) if channel is not None else None
    finally:
        tmp.delete()
        Gimp.context_pop()
    return out_rgb, out_mask


def new_layer_type(image: Any) -> Any:
    """RGBA for RGB images, gray+alpha for grayscale images."""
    if image.get_base_type() == Gimp.ImageBaseType.GRAY:
        return Gimp.ImageType.GRAYA_IMAGE
    return Gimp.ImageType.RGBA_IMAGE


def rgb_to_rgba(rgb: bytes) -> bytes:
    """Opaque RGBA from RGB bytes."""
    n = len(rgb) // 3
    out = bytearray(n * 4)
    out[0::4] = rgb[0::3]
    out[1::4] = rgb[1::3]
    out[2::4] = rgb[2::3]
    out[3::4] = b"\xff" * n
    return bytes(out)


def insert_rgba_layer(image: Any, source: Any, name: str, rect: Rect, rgba: bytes) -> Any:
    """A new layer of `rect`'s size at its offsets, directly above `source`, holding RGBA bytes as
    they are (alpha 0 outside the area the model's frame covers)."""
    layer = Gimp.Layer.new(image, name, rect.w, rect.h, new_layer_type(image), 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, source.get_parent(), image.get_item_position(source))
    layer.set_offsets(rect.x, rect.y)
    _set_pixels(layer, rect.w, rect.h, RGBA_U8, rgba)
    layer.update(0, 0, rect.w, rect.h)
    return layer


def add_produced_mask(image: Any, layer: Any, plan: MaskPlan) -> Any:
    """Give a result `layer` a mask inside the area the model's frame covers (the layer's alpha):
    that area shrunk by plan.inset (intersected with the selection grown by plan.grow, if any),
    feathered by plan.feather, then cut hard to the produced area, so no pixel outside it (the
    padding of a face near the layer's edge, the corners of a rotated frame) can show. The user's
    selection is restored afterwards."""
    Gimp.context_push()
    try:
        Gimp.context_set_feather(False)
        Gimp.context_set_antialias(False)
        saved = Gimp.Selection.save(image) if selection_bounds(image) is not None else None
        grown = None
        if plan.use_selection and saved is not None:
            if plan.grow > 0:
                Gimp.Selection.grow(image, plan.grow)
            grown = Gimp.Selection.save(image)
        image.select_item(Gimp.ChannelOps.REPLACE, layer)   # a layer's item shape is its alpha
        if plan.inset > 0:
            Gimp.Selection.shrink(image, plan.inset)
        if grown is not None:
            image.select_item(Gimp.ChannelOps.INTERSECT, grown)
            image.remove_channel(grown)
        if plan.feather > 0:
            Gimp.Selection.feather(image, float(plan.feather))
        image.select_item(Gimp.ChannelOps.INTERSECT, layer)   # feathering spreads: cut to the area again
        mask = _mask_from_selection(image, layer, saved)
    finally:
        Gimp.context_pop()
    return mask


def _mask_from_selection(image: Any, layer: Any, saved: Any) -> Any:
    """Add the current selection to `layer` as its mask, then restore the user's selection
    (`saved`, a channel, or none)."""
    mask = layer.create_mask(Gimp.AddMaskType.SELECTION)
    layer.add_mask(mask)
    if saved is not None:
        image.select_item(Gimp.ChannelOps.REPLACE, saved)
        image.remove_channel(saved)
    else:
        Gimp.Selection.none(image)
    return mask


def attach_session(layer: Any, record: parasite.SessionRecord) -> None:
    parasite.attach_record(layer, record, Gimp)


# -- live drags (the panel) ------------------------------------------------------------------------


@contextlib.contextmanager
def undo_frozen(image: Any) -> Iterator[None]:
    """GIMP records nothing in the image's undo history inside this block: the panel's live layer,
    its previews and the handle anchors that follow the drag are not steps a user could undo one by
    one (Apply makes the one step that matters)."""
    image.undo_freeze()
    try:
        yield
    finally:
        image.undo_thaw()


def write_rgba(layer: Any, rgba: bytes) -> None:
    """Replace a layer's pixels (RGBA bytes of its whole size) and show them; no undo step."""
    w, h = layer.get_width(), layer.get_height()
    _set_pixels(layer, w, h, RGBA_U8, rgba)
    layer.update(0, 0, w, h)


def read_rgba(layer: Any) -> bytes:
    """A layer's pixels, RGBA bytes of its whole size."""
    return _get_pixels(layer, layer.get_width(), layer.get_height(), RGBA_U8)


def path_strokes(path: Any) -> list[tuple[Any, list[float], bool]]:
    """Every stroke of a path as (type, floats: 6 per anchor, closed), in order."""
    out = []
    for stroke_id in path.get_strokes() or []:
        kind, floats, closed = path.stroke_get_points(stroke_id)
        out.append((kind, list(floats), bool(closed)))
    return out


def set_path_strokes(path: Any, strokes: list[tuple[Any, list[float], bool]]) -> None:
    """Replace a path's strokes, keeping their order (GIMP has no call that moves one anchor)."""
    for stroke_id in list(path.get_strokes() or []):
        path.remove_stroke(stroke_id)
    for kind, floats, closed in strokes:
        path.stroke_new_from_points(kind, floats, closed)


def read_mask(mask: Any, rect: Rect) -> bytes:
    """A layer mask's values (one byte per pixel) over its layer's `rect` size."""
    return _get_pixels(mask, rect.w, rect.h, MASK_U8)


def add_mask_bytes(layer: Any, data: bytes) -> Any:
    """Give `layer` a mask holding `data` (one byte per pixel of the layer's size)."""
    mask = layer.create_mask(Gimp.AddMaskType.WHITE)
    layer.add_mask(mask)
    w, h = layer.get_width(), layer.get_height()
    _set_pixels(mask, w, h, MASK_U8, data)
    mask.update(0, 0, w, h)
    return mask
