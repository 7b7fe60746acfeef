"""One DragGAN edit, end to end, as the procedure runs it.

Order matters: everything that can fail (drawable, path, points, crop, backend, model, the edit
itself, scaling back) happens BEFORE the undo group opens; inside it only the result layer, its
mask and its session record are made. The source layer is only read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import decision, errors, geometry, link, options, parasite, points, texts
from . import gimp_ops as ops
from .gimp_ops import Gimp


class Progress:
    """Gimp.progress_* with a memory of failure: when GIMP stops answering a progress call the edit
    is treated as cancelled (the backend job is then cancelled politely)."""

    def __init__(self) -> None:
        self.broken = False

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.broken:
            return
        try:
            if fn(*args) is False:
                self.broken = True
        except Exception:
            self.broken = True

    def init(self, text: str) -> None:
        self._call(Gimp.progress_init, text)

    def text(self, text: str) -> None:
        self._call(Gimp.progress_set_text, text)

    def update(self, fraction: float) -> None:
        self._call(Gimp.progress_update, max(0.0, min(1.0, fraction)))

    def end(self) -> None:
        self._call(Gimp.progress_end)

    def should_cancel(self) -> bool:
        return self.broken


@dataclass
class EditOutcome:
    """What an edit made: the new layer and how (for tests and messages)."""

    layer: Any
    crop: geometry.Rect          # the new layer's rectangle (image coordinates)
    continued: bool
    poor_inversion: bool
    reason: str
    alignment: str = ""          # aligned edits (protocol 3): "ffhq" or "none" (no face found); "" otherwise
    note: str = ""               # the backend's alignment note
    region: geometry.Rect | None = None   # the native region sent for an aligned edit
    stopped_short: bool = False  # the handles covered less than texts.SHORT_SHARE of their way


def single_layer(drawables: list[Any]) -> Any:
    if len(drawables) != 1:
        raise errors.wrong_drawables(len(drawables))
    drawable = drawables[0]
    if not isinstance(drawable, Gimp.Layer) or isinstance(drawable, Gimp.LayerMask):
        raise errors.not_a_layer()
    return drawable


# session ids that mean "nothing kept" (`draggan-backend serve --no-cache` answers "none")
NO_SESSION = ("", "none")

BackendFactory = Callable[[str, float], "link.Backend"]


def run_edit(image: Any, drawables: list[Any], opts: options.Options, progress: Progress,
             connect: BackendFactory | None = None, plugin_config: dict[str, Any] | None = None) -> EditOutcome:
    """Run one edit. Raises PluginError (nothing written) or returns the new layer.

    plugin_config: draggan.json beside the plug-in (remote address and CURVE keys), if any."""
    layer = single_layer(drawables)
    if image.get_floating_sel() is not None:   # GIMP cannot add a layer while one floats
        raise errors.floating_selection()
    source_rect = ops.layer_rect(layer)
    drag = points.drag_points_from_image(image, opts.path)
    points.check_inside(drag, source_rect.as_tuple(), layer.get_name())
    selection = ops.selection_bounds(image)
    if selection is not None and selection.intersect(source_rect) is None:
        selection = None  # selected only beside this layer: the layer has nothing selected
    record = parasite.read_record(layer)
    choice = decision.decide(record, source_rect, opts.backend_address, opts.model, opts.pti,
                             drag.all_points(), outdated=record is None and parasite.read_outdated(layer))

    progress.init(f"DragGAN: connecting to {opts.backend_address}")
    # The connection carries the user's identity token (GIMP's config folder), which owns the
    # sessions on the backend: a later run reaches them, an .xcf holds nothing that would.
    connect = connect or (lambda address, timeout: link.Backend(address, timeout, plugin_config=plugin_config))
    with connect(opts.backend_address, float(opts.backend_timeout)) as backend:
        model = backend.pick_model(opts.model or (choice.record.model if choice.continue_session
                                                  and choice.record else ""))
        model_size = (model.width, model.height)
        # Face alignment: for a model trained on aligned faces the backend aligns the face in the crop;
        # for any other model "auto" means none.
        aligned = opts.align == options.ALIGN_AUTO and getattr(model, "alignment", "none") != "none"
        if choice.continue_session and choice.record and choice.record.model_size != model_size:
            choice = decision.Decision(False, "inverting anew: the model's size changed on the backend")
        if choice.continue_session and choice.record and choice.record.aligned != aligned:
            choice = decision.Decision(False, "inverting anew: the face alignment setting changed")

        def plan() -> geometry.Rect:
            return plan_region(drag, source_rect, model, opts, selection, aligned, progress.text)

        crop = choice.record.region if choice.continue_session and choice.record else plan()
        if selection is not None and selection.intersect(crop) is None:
            raise errors.selection_outside_crop()

        def inputs(crop: geometry.Rect) -> tuple[bytes, bytes | None, tuple[int, int], list[geometry.Point],
                                                 list[geometry.Point]]:
            return crop_inputs(image, layer, crop, selection is not None, drag, aligned, progress.text)

        send_rgb, send_mask, send_size, handles, targets = inputs(crop)
        params = options.edit_params(opts, model_size)

        state = {"continued": choice.continue_session, "mode": choice.reason, "psnr": None, "stlpips": None,
                 "colour": 0.0}

        def on_progress(message: Any) -> None:
            if message.inversion is not None:
                state["psnr"], state["stlpips"] = message.inversion.psnr, message.inversion.stlpips
                state["colour"] = float(getattr(message.inversion, "colour", 0.0) or 0.0)
            progress.text(texts.progress_text(message, str(state["mode"]), texts.model_limits(model)))
            progress.update(texts.progress_fraction(message, bool(state["continued"])))

        progress.text(f"DragGAN: {choice.reason}")
        result = None
        if choice.continue_session and choice.record:
            try:
                result = backend.continue_session(choice.record.session_id, send_size, handles, targets,
                                                  send_mask, params, on_progress, progress.should_cancel,
                                                  model.name, opts.result)
            except link.SessionGone:
                state["continued"] = False
                state["mode"] = "inverting anew: the backend no longer holds the previous session"
                choice = decision.Decision(False, str(state["mode"]))
                progress.text(f"DragGAN: {state['mode']}")
                crop = plan()   # the old region may reach past this (result) layer: plan a new one on it
                send_rgb, send_mask, send_size, handles, targets = inputs(crop)
        if result is None:
            result = backend.edit(model.name, send_rgb, send_size, handles, targets, send_mask, params,
                                  on_progress, progress.should_cancel,
                                  align=options.ALIGN_AUTO if aligned else options.ALIGN_OFF, result=opts.result)
        if progress.should_cancel():
            raise errors.cancelled()

    if result.inversion is not None:
        state["psnr"], state["stlpips"] = result.inversion.psnr, result.inversion.stlpips
        state["colour"] = float(getattr(result.inversion, "colour", 0.0) or 0.0)
    continued = bool(state["continued"])
    limits = texts.model_limits(model)   # the model's own thresholds from the backend, else defaults
    poor = (not continued) and texts.is_poor(state["psnr"], state["stlpips"], limits)
    if continued and record is not None and texts.POOR_SUFFIX in layer.get_name():
        poor = True  # the session still comes from that poor inversion
    landed = list(getattr(result, "landed", None) or [])
    # result.points are the tracked handles in the sent frame; the backend's dense-motion check is the
    # verdict when it sent one
    share = texts.share_of_the_way(handles, targets, list(getattr(result, "points", None) or []))
    short = (not all(landed)) if landed else (share is not None and share < texts.SHORT_SHARE)
    name = texts.result_layer_name(layer.get_name(), continued, poor, short)
    target, rgba = _crop_frame_result(result, crop, send_size, opts.backend_address)
    note = str(getattr(result, "note", ""))
    new_record = parasite.SessionRecord(opts.backend_address, result.session_id, target, model.name,
                                        model_size, opts.pti, parasite.FRAME_CROP, crop, aligned)
    detail = opts.result == options.RESULT_DETAIL
    plan_mask = geometry.plan_mask(target, selection is not None, detail)
    done_text = "continued the previous drag (no re-inversion)" if continued else "inverted and dragged"
    if note:
        done_text += "; " + note
    if state["psnr"] is not None and not continued:
        done_text += "; " + texts.quality_text(float(state["psnr"]), float(state["stlpips"] or 0.0), limits,
                                               float(state["colour"] or 0.0))
    if short:
        done_text += "; " + texts.stopped_short_text(share if share is not None else 0.0, send_mask is not None,
                                                     landed)
    progress.text(f"DragGAN: {done_text}")

    image.undo_group_start()
    try:
        new_layer = ops.insert_rgba_layer(image, layer, name, target, rgba)
        ops.add_produced_mask(image, new_layer, plan_mask)
        if result.session_id not in NO_SESSION:   # a backend without cache keeps no sessions
            ops.attach_session(new_layer, new_record)
    finally:
        image.undo_group_end()
    progress.update(1.0)
    return EditOutcome(new_layer, target, continued, poor, str(state["mode"]),
                       str(getattr(result, "alignment", "")) if aligned else "", note, crop, short)


def plan_region(drag: points.DragPoints, source_rect: geometry.Rect, model: Any, opts: options.Options,
                selection: geometry.Rect | None, aligned: bool, say: Callable[[str], Any]) -> geometry.Rect:
    """The crop sent to the backend (image coordinates): a native region around the points for a face
    alignment, the whole layer for a model of whole pictures under Crop: Auto, else the crop mode's."""
    if aligned:
        return geometry.plan_native_region(drag.all_points(), source_rect)
    crop_mode = opts.crop_mode
    if crop_mode == geometry.CROP_AUTO and getattr(model, "framing", "any") == "whole":
        # a model of whole subjects (the built-in faces) cannot draw part of one: a crop around
        # the points of a larger picture would invert poorly
        crop_mode = geometry.CROP_LAYER
        say(f"DragGAN: {model.name} draws whole pictures: sending the whole layer")
    return geometry.plan_crop(drag.all_points(), source_rect, (model.width, model.height), crop_mode, selection)


def crop_inputs(image: Any, layer: Any, crop: geometry.Rect, with_selection: bool, drag: points.DragPoints,
                aligned: bool, say: Callable[[str], Any]) -> tuple[bytes, bytes | None, tuple[int, int],
                                                                   list[geometry.Point], list[geometry.Point]]:
    """(pixels, selection mask, their size, handles, targets) as the backend gets them: the crop at its
    own resolution, scaled down only to the backend's limit."""
    rgb = ops.read_rgb(layer, crop)
    sel_bytes = ops.read_selection(image, crop) if with_selection else None
    size = geometry.sent_size(crop)
    if size != (crop.w, crop.h):
        say(f"DragGAN: the {crop.w}x{crop.h} crop is larger than the backend takes "
            f"({geometry.MAX_SENT_SIDE} px a side): sending it at {size[0]}x{size[1]}, the result is scaled back up")
        rgb, sel_bytes = ops.scale_pixels(rgb, sel_bytes, (crop.w, crop.h), size)
    else:
        say(f"DragGAN: sending the {crop.w}x{crop.h} crop at its own resolution"
            + ("; the backend aligns the face in it" if aligned else ""))
    return (rgb, sel_bytes, size, geometry.to_sent_points(drag.handles, crop, size),
            geometry.to_sent_points(drag.targets, crop, size))


def _crop_frame_result(result: Any, crop: geometry.Rect, sent: tuple[int, int], address: str
                       ) -> tuple[geometry.Rect, bytes]:
    """Where the result goes (image coordinates) and its RGBA bytes at that size: the backend answers
    RGBA of the produced area's box at result.offset in the crop it was sent (scaled back to the crop
    when the crop was sent smaller). Anything else is the backend's fault (nothing is written)."""
    if getattr(result, "frame", "model") != "crop":
        raise errors.backend_failed(address, f"the result is in the {getattr(result, 'frame', '?')} frame, "
                                             "not the crop's")
    return place_in_crop(result.image, getattr(result, "offset", (0, 0)), crop, sent, address, "result")


def place_in_crop(image_out: Any, offset: Any, crop: geometry.Rect, sent: tuple[int, int], address: str,
                  what: str) -> tuple[geometry.Rect, bytes]:
    """An RGBA picture at `offset` in the crop as sent (a result, or a preview placed in the crop's
    frame) -> where it goes (image coordinates) and its RGBA bytes at that size."""
    ox, oy = (int(v) for v in offset)
    sw, sh = sent
    if image_out.channels != 4 or ox + image_out.width > sw or oy + image_out.height > sh:
        raise errors.backend_failed(address, f"the {what} ({image_out.width}x{image_out.height}x"
                                             f"{image_out.channels} at {ox},{oy}) does not fit the {sw}x{sh} crop sent")
    if (sw, sh) == (crop.w, crop.h):
        return geometry.Rect(crop.x + ox, crop.y + oy, image_out.width, image_out.height), image_out.data
    # scaled back to the crop's pixels: the box's edges at the same fractions of the crop
    x0, y0 = round(ox * crop.w / sw), round(oy * crop.h / sh)
    x1, y1 = round((ox + image_out.width) * crop.w / sw), round((oy + image_out.height) * crop.h / sh)
    rgba, _ = ops.scale_pixels(image_out.data, None, (image_out.width, image_out.height),
                               (max(1, x1 - x0), max(1, y1 - y0)), 4)
    return geometry.Rect(crop.x + x0, crop.y + y0, max(1, x1 - x0), max(1, y1 - y0)), rgba
