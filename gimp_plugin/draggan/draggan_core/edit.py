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
    crop: geometry.Rect
    continued: bool
    poor_inversion: bool
    reason: str


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
        if choice.continue_session and choice.record and choice.record.model_size != model_size:
            choice = decision.Decision(False, "inverting anew: the model's size changed on the backend")
        if choice.continue_session and choice.record:
            crop = choice.record.crop
        else:
            crop = geometry.plan_crop(drag.all_points(), source_rect, model_size, opts.crop_mode, selection)
        if selection is not None and selection.intersect(crop) is None:
            raise errors.selection_outside_crop()

        progress.text(f"DragGAN: reading a {crop.w}x{crop.h} crop, scaling it to {model.width}x{model.height}")
        rgb = ops.read_rgb(layer, crop)
        sel_bytes = ops.read_selection(image, crop) if selection is not None else None
        model_rgb, model_mask = ops.scale_pixels(rgb, sel_bytes, (crop.w, crop.h), model_size)
        handles = geometry.clamp_to_model(geometry.to_model_points(drag.handles, crop, model_size), model_size)
        targets = geometry.clamp_to_model(geometry.to_model_points(drag.targets, crop, model_size), model_size)
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
                result = backend.continue_session(choice.record.session_id, model_size, handles, targets,
                                                  model_mask, params, on_progress, progress.should_cancel,
                                                  model.name)
            except link.SessionGone:
                state["continued"] = False
                state["mode"] = "inverting anew: the backend no longer holds the previous session"
                choice = decision.Decision(False, str(state["mode"]))
                progress.text(f"DragGAN: {state['mode']}")
        if result is None:
            result = backend.edit(model.name, model_rgb, model_size, handles, targets, model_mask, params,
                                  on_progress, progress.should_cancel)
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
    if (image_out.width, image_out.height) != model_size:
        raise errors.backend_failed(opts.backend_address,
                                    f"the result is {image_out.width}x{image_out.height}, expected "
                                    f"{model_size[0]}x{model_size[1]}")
    progress.text(f"DragGAN: scaling the result back to {crop.w}x{crop.h}")
    back_rgb, _ = ops.scale_pixels(image_out.data, None, model_size, (crop.w, crop.h), image_out.channels)
    name = texts.result_layer_name(layer.get_name(), continued, poor)
    new_record = parasite.SessionRecord(opts.backend_address, result.session_id, crop, model.name,
                                        model_size, bool(opts.pti))
    plan = geometry.plan_mask(crop, selection is not None)
    done_text = "continued the previous drag (no re-inversion)" if continued else "inverted and dragged"
    if state["psnr"] is not None and not continued:
        done_text += "; " + texts.quality_text(float(state["psnr"]), float(state["stlpips"] or 0.0), limits)
    progress.text(f"DragGAN: {done_text}")

    image.undo_group_start()
    try:
        new_layer = ops.insert_result_layer(image, layer, name, crop, back_rgb)
        ops.add_feathered_mask(image, new_layer, crop, plan)
        if result.session_id not in NO_SESSION:   # a backend without cache keeps no sessions
            ops.attach_session(new_layer, new_record)
    finally:
        image.undo_group_end()
    progress.update(1.0)
    return EditOutcome(new_layer, crop, continued, poor, str(state["mode"]))
