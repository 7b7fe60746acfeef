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
        # Face alignment (protocol 3): for a model trained on aligned faces the backend gets a native
        # region and aligns it; for any other model "auto" means none.
        native = opts.align == options.ALIGN_AUTO and getattr(model, "alignment", "none") != "none"
        if choice.continue_session and choice.record and choice.record.model_size != model_size:
            choice = decision.Decision(False, "inverting anew: the model's size changed on the backend")
        if choice.continue_session and choice.record and choice.record.native != native:
            choice = decision.Decision(False, "inverting anew: the face alignment setting changed")
        if native:
            crop = (choice.record.region if choice.continue_session and choice.record and choice.record.region
                    else geometry.plan_native_region(drag.all_points(), source_rect))
        elif choice.continue_session and choice.record:
            crop = choice.record.crop
        else:
            crop_mode = opts.crop_mode
            if crop_mode == geometry.CROP_AUTO and getattr(model, "framing", "any") == "whole":
                # a model of whole subjects (the built-in faces) cannot draw part of one: a crop around
                # the points of a larger picture would invert poorly
                crop_mode = geometry.CROP_LAYER
                progress.text(f"DragGAN: {model.name} draws whole pictures: sending the whole layer")
            crop = geometry.plan_crop(drag.all_points(), source_rect, model_size, crop_mode, selection)
        if selection is not None and selection.intersect(crop) is None:
            raise errors.selection_outside_crop()

        def inputs(crop: geometry.Rect) -> tuple[bytes, bytes | None, tuple[int, int], list[geometry.Point],
                                                 list[geometry.Point]]:
            """(pixels, selection mask, their size, handles, targets) as the backend gets them."""
            rgb = ops.read_rgb(layer, crop)
            sel_bytes = ops.read_selection(image, crop) if selection is not None else None
            if native:
                progress.text(f"DragGAN: sending a {crop.w}x{crop.h} region at full resolution; the backend "
                              "aligns the face in it")
                return (rgb, sel_bytes, (crop.w, crop.h), geometry.to_region_points(drag.handles, crop),
                        geometry.to_region_points(drag.targets, crop))
            progress.text(f"DragGAN: reading a {crop.w}x{crop.h} crop, scaling it to {model.width}x{model.height}")
            model_rgb, model_mask = ops.scale_pixels(rgb, sel_bytes, (crop.w, crop.h), model_size)
            return (model_rgb, model_mask, model_size,
                    geometry.clamp_to_model(geometry.to_model_points(drag.handles, crop, model_size), model_size),
                    geometry.clamp_to_model(geometry.to_model_points(drag.targets, crop, model_size), model_size))

        send_rgb, send_mask, send_size, handles, targets = inputs(crop)
        params = options.edit_params(opts, model_size)

        state = {"continued": choice.continue_session, "mode": choice.reason, "psnr": None, "stlpips": None}

        def on_progress(message: Any) -> None:
            if message.inversion is not None:
                state["psnr"], state["stlpips"] = message.inversion.psnr, message.inversion.stlpips
            progress.text(texts.progress_text(message, str(state["mode"]), texts.model_limits(model)))
            progress.update(texts.progress_fraction(message, bool(state["continued"])))

        progress.text(f"DragGAN: {choice.reason}")
        result = None
        if choice.continue_session and choice.record:
            try:
                result = backend.continue_session(choice.record.session_id, send_size, handles, targets,
                                                  send_mask, params, on_progress, progress.should_cancel,
                                                  model.name)
            except link.SessionGone:
                state["continued"] = False
                state["mode"] = "inverting anew: the backend no longer holds the previous session"
                choice = decision.Decision(False, str(state["mode"]))
                progress.text(f"DragGAN: {state['mode']}")
                if native:   # the old region may reach past this (result) layer: plan a new one on it
                    crop = geometry.plan_native_region(drag.all_points(), source_rect)
                    send_rgb, send_mask, send_size, handles, targets = inputs(crop)
        if result is None:
            result = backend.edit(model.name, send_rgb, send_size, handles, targets, send_mask, params,
                                  on_progress, progress.should_cancel,
                                  align=options.ALIGN_AUTO if native else options.ALIGN_OFF)
        if progress.should_cancel():
            raise errors.cancelled()

    if result.inversion is not None:
        state["psnr"], state["stlpips"] = result.inversion.psnr, result.inversion.stlpips
    continued = bool(state["continued"])
    limits = texts.model_limits(model)   # the model's own thresholds from the backend, else defaults
    poor = (not continued) and texts.is_poor(state["psnr"], state["stlpips"], limits)
    if continued and record is not None and texts.POOR_SUFFIX in layer.get_name():
        poor = True  # the session still comes from that poor inversion
    image_out = result.image
    # result.points are the tracked handles in the frame the points were sent in (model or crop)
    share = texts.share_of_the_way(handles, targets, list(getattr(result, "points", None) or []))
    short = share is not None and share < texts.SHORT_SHARE
    name = texts.result_layer_name(layer.get_name(), continued, poor, short)
    note = ""
    if native:
        target = _crop_frame_rect(result, crop, opts.backend_address)   # the produced area's box
        note = str(getattr(result, "note", ""))
        new_record = parasite.SessionRecord(opts.backend_address, result.session_id, target, model.name,
                                            model_size, bool(opts.pti), parasite.FRAME_CROP, crop)
    else:
        if (image_out.width, image_out.height) != model_size or getattr(result, "frame", "model") != "model":
            raise errors.backend_failed(opts.backend_address,
                                        f"the result is {image_out.width}x{image_out.height}, expected "
                                        f"{model_size[0]}x{model_size[1]}")
        progress.text(f"DragGAN: scaling the result back to {crop.w}x{crop.h}")
        back_rgb, _ = ops.scale_pixels(image_out.data, None, model_size, (crop.w, crop.h), image_out.channels)
        target = crop
        new_record = parasite.SessionRecord(opts.backend_address, result.session_id, crop, model.name,
                                            model_size, bool(opts.pti))
    plan = geometry.plan_mask(target, selection is not None)
    done_text = "continued the previous drag (no re-inversion)" if continued else "inverted and dragged"
    if note:
        done_text += "; " + note
    if state["psnr"] is not None and not continued:
        done_text += "; " + texts.quality_text(float(state["psnr"]), float(state["stlpips"] or 0.0), limits)
    if short and share is not None:
        done_text += "; " + texts.stopped_short_text(share, send_mask is not None)
    progress.text(f"DragGAN: {done_text}")

    image.undo_group_start()
    try:
        if native:
            new_layer = ops.insert_rgba_layer(image, layer, name, target, image_out.data)
            ops.add_produced_mask(image, new_layer, plan)
        else:
            new_layer = ops.insert_result_layer(image, layer, name, crop, back_rgb)
            ops.add_feathered_mask(image, new_layer, crop, plan)
        if result.session_id not in NO_SESSION:   # a backend without cache keeps no sessions
            ops.attach_session(new_layer, new_record)
    finally:
        image.undo_group_end()
    progress.update(1.0)
    return EditOutcome(new_layer, target, continued, poor, str(state["mode"]),
                       str(getattr(result, "alignment", "")) if native else "", note, crop if native else None,
                       short)


def _crop_frame_rect(result: Any, region: geometry.Rect, address: str) -> geometry.Rect:
    """Where an aligned result goes (image coordinates): RGBA of the produced area's box at
    result.offset in the region sent. Anything else is the backend's fault (nothing is written)."""
    image_out = result.image
    ox, oy = (int(v) for v in getattr(result, "offset", (0, 0)))
    if (getattr(result, "frame", "model") != "crop" or image_out.channels != 4
            or ox + image_out.width > region.w or oy + image_out.height > region.h):
        raise errors.backend_failed(address, f"the aligned result ({getattr(result, 'frame', '?')} frame, "
                                             f"{image_out.width}x{image_out.height}x{image_out.channels} at "
                                             f"{ox},{oy}) does not fit the {region.w}x{region.h} region sent")
    return geometry.Rect(region.x + ox, region.y + oy, image_out.width, image_out.height)
