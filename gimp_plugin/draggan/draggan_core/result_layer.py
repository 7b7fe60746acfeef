"""The panel's result layer: made above the user's layer, repainted with each preview, kept outside GIMP's
undo history while the panel is open, and put into the image as one undo step by *Apply*.

Runs on GTK's thread (it makes GIMP calls). The user's layer is only read.
"""

from __future__ import annotations

from typing import Any

from . import geometry, parasite, points
from . import gimp_ops as ops
from .gimp_ops import Gimp


class ResultLayer:
    """The layer a panel paints into (``layer``: None until the first picture, and after Close/Apply)."""

    def __init__(self, image: Any, source: Any) -> None:
        self.image = image
        self.source = source            # the user's layer: the result goes directly above it
        self.layer: Any = None
        self.rect: geometry.Rect | None = None
        self.mask_key: Any = None
        self.anchors_at: Any = None     # the tracked points the path's handles were last moved to

    def show(self, rect: geometry.Rect, rgba: bytes, name: str, mask_key: Any, mask_plan: Any,
             final: bool = False) -> None:
        """Paint ``rgba`` at ``rect`` (image pixels), making the layer there (with its mask) when it is
        missing or elsewhere; ``mask_key`` says when the mask must be made again from ``mask_plan``."""
        with ops.undo_frozen(self.image):
            if self.layer is not None and (not self.layer.is_valid() or rect != self.rect):
                if self.layer.is_valid():
                    self.image.remove_layer(self.layer)
                self.layer = None
            if self.layer is None:
                self.layer = ops.insert_rgba_layer(self.image, self.source, name, rect, rgba)
                self.rect = rect
                self.mask_key = None
                self.image.set_selected_layers([self.source])
            else:
                ops.write_rgba(self.layer, rgba)
                if final and self.layer.get_name() != name:
                    self.layer.set_name(name)
            if self.mask_key != mask_key:
                if self.layer.get_mask() is not None:
                    self.layer.remove_mask(Gimp.MaskApplyMode.DISCARD)
                ops.add_produced_mask(self.image, self.layer, mask_plan)
                self.mask_key = mask_key
        Gimp.displays_flush()

    def follow(self, path: Any, crop: geometry.Rect, sent: tuple[int, int], tracked: list[points.Point],
               move_handles: Any) -> None:
        """The path's handle anchors to the tracked points (crop pixels as sent); once per new position."""
        key = tuple((round(x, 2), round(y, 2)) for x, y in tracked)
        if key == self.anchors_at:
            return
        self.anchors_at = key
        if path is None or not path.is_valid():
            return
        handles = geometry.from_sent_points(list(tracked), crop, sent)
        try:
            strokes = move_handles(ops.path_strokes(path), handles)
        except ValueError:   # the path changed meanwhile: leave it as the user made it
            return
        with ops.undo_frozen(self.image):
            ops.set_path_strokes(path, strokes)
        Gimp.displays_flush()

    def apply(self, name: str, record: parasite.SessionRecord | None) -> Any:
        """Replace the live layer by the same pixels, mask and session record added as one undo step;
        the new layer."""
        rect = ops.layer_rect(self.layer)
        rgba = ops.read_rgba(self.layer)
        mask = self.layer.get_mask()
        mask_bytes = ops.read_mask(mask, rect) if mask is not None else None
        with ops.undo_frozen(self.image):
            self.image.remove_layer(self.layer)
        self.layer = None
        self.image.undo_group_start()
        try:
            final = ops.insert_rgba_layer(self.image, self.source, name, rect, rgba)
            if mask_bytes is not None:
                ops.add_mask_bytes(final, mask_bytes)
            if record is not None:
                ops.attach_session(final, record)
        finally:
            self.image.undo_group_end()
        Gimp.displays_flush()
        return final

    def remove(self) -> None:
        """Take the live layer out (outside the undo history)."""
        if self.layer is not None and self.layer.is_valid():
            with ops.undo_frozen(self.image):
                self.image.remove_layer(self.layer)
            Gimp.displays_flush()
        self.layer = None
