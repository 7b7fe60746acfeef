"""The DragGAN panel: a window that stays open beside the canvas while the picture moves.

*Drag* reads the path and the selection and starts a drag (continuing the backend session, without
inverting again, while the picture and the settings that shape the inversion stay the same); the
previews are painted into the result layer as they come, and the path's handle anchors follow the
tracked points. *Stop* ends the drag at once and keeps it as it is; *Undo drag* goes back to the state
before the last drag (the backend keeps the session's drag states); *Apply* puts the result into the
image as one undo step and closes the panel; *Close* removes the result layer and closes it.

The result layer lives outside GIMP's undo history while the panel is open (its pixels change many
times a second, and so do the anchors): only *Apply* makes an undo step, the same one a run of the
filter makes (a new layer with its mask and session record).

Threads: this module runs on GTK's thread and makes every GIMP call; the network is live.Worker's,
polled from a GLib timeout every PUMP_MS (see live.py). Only imported for interactive runs.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import dialog, edit, errors, geometry, link, live, options, parasite, points, texts
from . import gimp_ops as ops
from .gimp_ops import Gimp
from .result_layer import ResultLayer

TITLE = "DragGAN Panel"
PUMP_MS = 40
RESPONSE_APPLY, RESPONSE_CLOSE = 104, 105
# mnemonics the settings do not use (Alt+D drags, Alt+S stops, ...). The drag's own buttons sit by its
# status line; Apply and Close, which end the panel, where a dialog's OK and Cancel would be.
LIVE_BUTTONS = (("drag", "_Drag"), ("stop", "_Stop"), ("undo", "Und_o drag"))
END_BUTTONS = (("apply", "App_ly", RESPONSE_APPLY), ("close", "_Close", RESPONSE_CLOSE))
PATH_LABEL = "Pat_h with drag points"
# the backend went away, restarted or is stopping: its sessions with it
CONNECTION_CODES = ("unavailable", "timeout", "shutting_down")


@dataclass
class JobContext:
    """What the panel needs to place a job's previews and result: the crop (image coordinates), the
    size it was sent at, the path whose handles follow the drag, the model."""

    crop: geometry.Rect
    sent: tuple[int, int]
    path: Any
    model: Any
    aligned: bool
    reason: str
    source: int
    with_selection: bool
    started: float


Listener = Callable[[str, dict[str, Any]], None]


class Panel:
    """One panel on one layer. ``listeners`` are told what happened ("preview", "result", "error",
    "idle", "applied", "closed") with a few facts; the real-GIMP tests and the recording script use
    them to know when to look at the canvas."""

    def __init__(self, procedure: Any, config: Any, image: Any, layer: Any,
                 plugin_config: dict[str, Any] | None = None, connect: live.Connect | None = None) -> None:
        import gi

        gi.require_version("GimpUi", "3.0")
        gi.require_version("Gtk", "3.0")
        from gi.repository import GimpUi, GLib, GObject, Gtk

        self.Gtk, self.GLib, self.GObject, self.GimpUi = Gtk, GLib, GObject, GimpUi
        self.config = config
        self.image = image
        self.layer = layer
        self.plugin_config = plugin_config or {}
        self.listeners: list[Listener] = []
        self.models: list[Any] | None = None
        self.session: live.Session | None = None
        self.result_layer = ResultLayer(image, layer)
        self.job: live.Job | None = None     # the running job
        self.context: JobContext | None = None   # the last drag's (undo places its answer there too)
        self.applied: Any = None
        self.closed = False
        self.painted = 0                     # previews painted in the running job
        self.last_result: Any = None
        self.name = texts.result_layer_name(layer.get_name(), False, False)
        self._serial = 0
        self._pending_drag = False
        self._owns_loop = False
        self._model_combo_done = False
        GimpUi.init("draggan")
        self.mailbox = live.Mailbox()
        self.worker = live.Worker(connect or self._connect, self.mailbox)
        self.worker.start()
        build_window(self, procedure)
        self._timer = GLib.timeout_add(PUMP_MS, self._pump)
        self._ask_models()

    # -- the window -----------------------------------------------------------------------------

    def _connect(self, address: str, timeout_s: float) -> Any:
        return link.Backend(address, timeout_s, plugin_config=self.plugin_config)

    @property
    def live(self) -> Any:
        """The result layer while the panel is open (None before the first picture)."""
        return self.result_layer.layer

    @property
    def Gimp(self) -> Any:
        return Gimp

    def show(self) -> None:
        self.window.show()
        self.window.present()

    def run(self) -> Any:
        """Show the panel and run GTK's main loop until it closes; the layer Apply made, or None."""
        self.show()
        self._owns_loop = True
        self.Gtk.main()
        return self.applied

    def press(self, key: str) -> None:
        """Press a button as a user does (its 'clicked' signal, then the dialog's response)."""
        self.buttons[key].clicked()

    def _on_response(self, _dialog: Any, response: int) -> None:
        handler = {RESPONSE_APPLY: self.apply, RESPONSE_CLOSE: self.close}.get(response)
        if handler is not None:
            self._guarded(handler)

    def _on_live_button(self, _button: Any, key: str) -> None:
        self._guarded({"drag": self.drag, "stop": self.stop, "undo": self.undo}[key])

    def _guarded(self, handler: Callable[[], None]) -> None:
        try:
            handler()
        except Exception as exc:   # a bug: said in the panel, never a dead window
            traceback.print_exc()
            self._error(errors.PluginError(f"DragGAN: unexpected error ({type(exc).__name__}: {exc})"))

    def _on_delete(self, *_args: Any) -> bool:
        self.close()
        return True

    def _tell(self, event: str, **facts: Any) -> None:
        for listener in list(self.listeners):
            try:
                listener(event, facts)
            except Exception:
                traceback.print_exc()

    def _say(self, text: str) -> None:
        self.status.set_text(text.replace("DragGAN: ", ""))

    def _error(self, exc: errors.PluginError) -> None:
        self.status.set_markup("<b>" + self.GLib.markup_escape_text(exc.message.replace("DragGAN: ", "")) + "</b>")
        try:
            Gimp.message(exc.message)
        except Exception:
            pass
        self._tell("error", message=exc.message)

    def _sensitive(self) -> None:
        busy = self.job is not None
        drag_running = busy and self.job is not None and self.job.kind in ("edit", "continue")
        self.buttons["drag"].set_sensitive(not busy)
        self.buttons["stop"].set_sensitive(drag_running)
        self.buttons["undo"].set_sensitive(not busy and self.session is not None and self.session.history > 0)
        self.buttons["apply"].set_sensitive(not busy and self.live is not None)
        self.buttons["close"].set_sensitive(True)

    # -- models ---------------------------------------------------------------------------------

    def _ask_models(self) -> None:
        self._submit(live.Job(kind="models"))

    def _models_arrived(self, models: list[Any]) -> None:
        self.models = models
        opts = options.read_options(self.config)
        listed = ", ".join(f"{m.name} ({m.width}x{m.height}{'' if m.loaded else ', not loaded yet'})" for m in models)
        self.models_label.set_text(f"Models at {opts.backend_address}: {listed}")
        if not self._model_combo_done:
            try:
                choices, active = dialog.model_combo_plan(models, opts.model)
                dialog._model_combo(self.GObject, self.Gtk, self.config, self.model_entry, choices, active)
                self._model_combo_done = True
            except Exception:
                traceback.print_exc()

    def _pick_model(self, wanted: str) -> Any:
        assert self.models is not None
        return pick_model(self.models, wanted, self.session)

    # -- the buttons ----------------------------------------------------------------------------

    def _submit(self, job: live.Job) -> None:
        opts = options.read_options(self.config)
        self._serial += 1
        job.serial = self._serial
        job.address, job.timeout_s = opts.backend_address, float(opts.backend_timeout)
        if job.kind != "models":
            self.job = job
            self.painted = 0
            self.mailbox.previews_dropped = 0
        self.worker.submit(job)
        self._sensitive()

    def _layer_ok(self) -> None:
        if not self.layer.is_valid():
            raise errors.PluginError("DragGAN: the layer this panel was opened on is gone; close the panel.")

    def drag(self) -> None:
        """Start a drag from the path's points (the Drag button)."""
        if self.job is not None:
            return
        if self.models is None:   # the backend has not answered yet: drag once it does
            self._pending_drag = True
            self._say("connecting to the backend...")
            if not self.worker.busy.is_set():
                self._ask_models()
            return
        try:
            self._start_drag()
        except errors.PluginError as exc:
            self._error(exc)

    def _start_drag(self) -> None:
        opts = options.read_options(self.config)
        self._layer_ok()
        if self.image.get_floating_sel() is not None:
            raise errors.floating_selection()
        source_rect = ops.layer_rect(self.layer)
        path = points.choose_path(self.image, opts.path)
        drag = points.pairs_from_strokes(points.strokes_of_path(path), path.get_name())
        points.check_inside(drag, source_rect.as_tuple(), self.layer.get_name())
        selection = ops.selection_bounds(self.image)
        if selection is not None and selection.intersect(source_rect) is None:
            selection = None
        model = self._pick_model(opts.model)
        aligned = opts.align == options.ALIGN_AUTO and getattr(model, "alignment", "none") != "none"
        inputs = None
        source = None
        if self.session is not None and self.session.crop.intersect(source_rect) == self.session.crop:
            inputs = edit.crop_inputs(self.image, self.layer, self.session.crop, selection is not None, drag, aligned,
                                      self._say)
            source = live.fingerprint(inputs[0])
        cont, reason = live.may_continue(self.session, opts.backend_address, opts.model or model.name, opts.pti,
                                         opts.inversion_preset, aligned, drag, source)
        if cont:
            assert self.session is not None and inputs is not None
            crop = self.session.crop
        else:
            crop = edit.plan_region(drag, source_rect, model, opts, selection, aligned, self._say)
            inputs = edit.crop_inputs(self.image, self.layer, crop, selection is not None, drag, aligned, self._say)
            source = live.fingerprint(inputs[0])
        if selection is not None and selection.intersect(crop) is None:
            raise errors.selection_outside_crop()
        rgb, mask, size, handles, targets = inputs
        params = options.edit_params(opts, (model.width, model.height), live.preview_every_for(size))
        self.context = JobContext(crop, size, path, model, aligned, reason, int(source or 0), selection is not None,
                                  time.monotonic())
        job = live.Job(kind="continue" if cont else "edit", model=model.name, rgb=rgb, size=size, handles=handles,
                       targets=targets, mask=mask, params=params,
                       align=options.ALIGN_AUTO if aligned else options.ALIGN_OFF, result=opts.result,
                       session_id=self.session.session_id if cont and self.session else "", context=self.context)
        self.result_layer.anchors_at = None
        self._say(reason)
        self.bar.set_fraction(0.0)
        self.bar.set_text("starting")
        self._submit(job)
        self._tell("drag", kind=job.kind, reason=reason)

    def stop(self) -> None:
        """End the running drag now and keep it (the Stop button)."""
        if self.job is not None and self.job.kind in ("edit", "continue"):
            self.worker.stop()
            self._say("stopping: the backend answers the drag as it is now")
            self._tell("stop")

    def undo(self) -> None:
        """Back to the state before the last drag (the Undo drag button)."""
        if self.job is not None or self.session is None or self.session.history <= 0:
            return
        opts = options.read_options(self.config)
        self._say("undoing the last drag")
        context = None if self.context is None else dataclasses.replace(self.context, started=time.monotonic())
        self._submit(live.Job(kind="undo", session_id=self.session.session_id, result=opts.result, context=context))

    def apply(self) -> None:
        """Put the result into the image as one undo step and close (the Apply button)."""
        if self.job is not None or self.live is None or not self.live.is_valid():
            return
        final = self.result_layer.apply(self.name, session_record(self.session, ops.layer_rect(self.live)))
        self.applied = final
        self._tell("applied", layer=final)
        self._finish()

    def close(self) -> None:
        """Close without applying: the result layer goes (the Close button, the window's X)."""
        if self.closed:
            return
        self.result_layer.remove()
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        self.worker.close()
        if self._timer:
            timer, self._timer = self._timer, 0
            if self.GLib.main_context_default().find_source_by_id(timer) is not None:
                self.GLib.source_remove(timer)
        self.window.destroy()
        self._tell("closed")
        if self._owns_loop:
            self.Gtk.main_quit()

    # -- what the worker sends ------------------------------------------------------------------

    def _pump(self) -> bool:
        if self.closed:
            return False
        if not self.image.is_valid():   # the image was closed under the panel: nothing left to show
            self.result_layer.layer = None
            self._finish()
            return False
        try:
            self._take()
        except Exception as exc:   # never let the timer die: say it
            traceback.print_exc()
            self._error(errors.PluginError(f"DragGAN: unexpected error ({type(exc).__name__}: {exc})"))
        return True

    def _take(self) -> None:
        preview, progress, notes, answers = self.mailbox.take()
        job, ctx = self.job, self.context
        current = job.serial if job is not None else -1
        if preview is not None and preview[0] == current and ctx is not None:
            self._paint_preview(preview[1], ctx)
        if progress is not None and progress[0] == current:
            self._progress(progress[1], ctx)
        for serial, text in notes:
            if serial == current and text:
                self._say(text)
        for answer in answers:
            self._answer(answer)

    def _paint_preview(self, message: Any, ctx: JobContext) -> None:
        if getattr(message, "preview_frame", "model") != "crop" or message.preview.channels != 4:
            return   # a backend that sends the model's frame: the progress text is all there is
        opts = options.read_options(self.config)
        rect, rgba = edit.place_in_crop(message.preview, message.preview_offset, ctx.crop, ctx.sent,
                                        opts.backend_address, "preview")
        self._show(rect, rgba, ctx)
        self.painted += 1
        self._tell("preview", step=message.step, total=message.total, rect=rect, painted=self.painted,
                   dropped=self.mailbox.previews_dropped, seconds=time.monotonic() - ctx.started)

    def _progress(self, message: Any, ctx: JobContext | None) -> None:
        continued = self.job is not None and self.job.kind == "continue"
        self.bar.set_fraction(texts.progress_fraction(message, continued))
        if message.phase == "drag" and message.total:
            self.bar.set_text(f"step {message.step}/{message.total}")
        else:
            self.bar.set_text(texts.PHASE_WORDS.get(message.phase, message.phase))
        if message.inversion is not None or message.phase == "queued":
            model = ctx.model if ctx is not None else None
            self._say(texts.progress_text(message, ctx.reason if ctx else "", texts.model_limits(model)))
        if message.phase == "drag" and message.points and ctx is not None and self.job is not None \
                and self.job.kind != "undo":
            self._follow(ctx, message.points)

    def _follow(self, ctx: JobContext, tracked: list[points.Point]) -> None:
        """The path's handle anchors to the tracked points (crop pixels as sent)."""
        self.result_layer.follow(ctx.path, ctx.crop, ctx.sent, tracked, live.move_handles)

    def _answer(self, answer: live.Answer) -> None:
        job = answer.job
        if job.kind == "models":
            if answer.models is not None:
                self._models_arrived(answer.models)
                if self._pending_drag:
                    self._pending_drag = False
                    self.drag()
            elif answer.error is not None:
                self.models_label.set_text("Backend not reachable now: "
                                           + answer.error.message.replace("DragGAN: ", "")[:150])
                if self._pending_drag:
                    self._pending_drag = False
                    self._error(answer.error)
            return
        if self.job is None or job.serial != self.job.serial:
            return
        self.job = None
        ctx = job.context
        if answer.error is not None:
            self._failed(job, answer.error)
        elif answer.result is not None and ctx is not None:
            self._done(job, answer, ctx)
        self._sensitive()
        self._tell("idle", kind=job.kind)

    def _failed(self, job: live.Job, exc: errors.PluginError) -> None:
        if exc.code in CONNECTION_CODES or (job.kind == "undo" and "no longer holds" in exc.message):
            self.session = None
        self.bar.set_text("stopped" if "cancelled" in exc.message else "error")
        self._error(failure_message(job, exc, self.live is not None))

    def _done(self, job: live.Job, answer: live.Answer, ctx: JobContext) -> None:
        result = answer.result
        opts = options.read_options(self.config)
        if job.kind in ("edit", "continue"):
            if answer.inverted or self.session is None:
                self.session = live.Session(result.session_id, opts.backend_address, ctx.model, ctx.crop, ctx.sent,
                                            ctx.aligned, opts.pti, opts.inversion_preset, ctx.source)
        assert self.session is not None
        self.session.history = int(getattr(result, "history", 0))
        rect, rgba = edit._crop_frame_result(result, ctx.crop, ctx.sent, opts.backend_address)
        landed = list(getattr(result, "landed", None) or [])
        short = bool(landed) and not all(landed)
        poor = False
        if result.inversion is not None and answer.inverted:
            poor = texts.is_poor(result.inversion.psnr, result.inversion.stlpips, texts.model_limits(ctx.model))
        self.name = texts.result_layer_name(self.layer.get_name(), False, poor, short)
        self._show(rect, rgba, ctx, final=True)
        if result.points and ctx.path is not None:
            self.result_layer.anchors_at = None
            self._follow(ctx, list(result.points))
        self.last_result = result
        words = result_words(job, answer, ctx, short, landed)
        self._say(words + f". {self.session.history} drag(s) can be undone.")
        self.bar.set_fraction(1.0)
        self.bar.set_text("stopped" if getattr(result, "stopped", False) else "done")
        self._tell("result", kind=job.kind, result=result, rect=rect, inverted=answer.inverted,
                   seconds=time.monotonic() - ctx.started, painted=self.painted,
                   dropped=self.mailbox.previews_dropped)

    # -- the result layer -----------------------------------------------------------------------

    def _show(self, rect: geometry.Rect, rgba: bytes, ctx: JobContext, final: bool = False) -> None:
        """Paint `rgba` into the result layer at `rect`, its mask made for this drag's selection and result."""
        opts = options.read_options(self.config)
        mask_key = (ctx.with_selection, ops.selection_bounds(self.image), ctx.crop, opts.result)
        plan = geometry.plan_mask(rect, ctx.with_selection, opts.result == options.RESULT_DETAIL)
        self.result_layer.show(rect, rgba, self.name, mask_key, plan, final)


def build_window(panel: Panel, procedure: Any) -> None:
    """The panel's window: the filter's settings, the path chooser, the live buttons, progress and status."""
    Gtk, GimpUi, GObject = panel.Gtk, panel.GimpUi, panel.GObject
    dlg = GimpUi.ProcedureDialog.new(procedure, panel.config, TITLE)
    panel.window = dlg
    dlg.set_modal(False)
    panel.models_label = dlg.get_label("models-info", "Asking the backend for its models...", False, False)
    panel.models_label.set_line_wrap(True)
    panel.models_label.set_max_width_chars(50)
    panel.model_entry = dlg.get_widget("model", GimpUi.LabelEntry)
    names = [arg.name for arg in options.ARGUMENTS if arg.name != "path"]
    names.insert(names.index("model") + 1, "models-info")
    dlg.fill(names)
    for response in (Gtk.ResponseType.OK, Gtk.ResponseType.CANCEL):
        widget = dlg.get_widget_for_response(response)
        if widget is not None:
            widget.hide()
    panel.buttons = {key: dlg.add_button(label, response) for key, label, response in END_BUTTONS}
    live_row = Gtk.ButtonBox(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
    live_row.set_layout(Gtk.ButtonBoxStyle.START)
    for key, label in LIVE_BUTTONS:
        button = Gtk.Button.new_with_mnemonic(label)
        GObject.Object.connect(button, "clicked", panel._on_live_button, key)
        live_row.add(button)
        panel.buttons[key] = button
    area = dlg.get_content_area()
    panel.status = Gtk.Label(label="Draw handle → target pairs with the Paths tool, then press Drag.",
                            xalign=0.0)
    panel.status.set_line_wrap(True)
    panel.status.set_max_width_chars(50)
    panel.bar = Gtk.ProgressBar()
    panel.bar.set_show_text(True)
    panel.bar.set_text("idle")
    summary = Gtk.Label(label=dialog.points_text(panel.image, panel.config.get_property("path")), xalign=0.0)
    summary.set_line_wrap(True)
    try:
        row = dialog._path_chooser(panel.Gimp, GimpUi, GObject, Gtk, panel.image, panel.config, summary, PATH_LABEL)
    except Exception:   # an extra: without it the active path is used
        traceback.print_exc()
        row = None
    for position, widget in enumerate(w for w in (row, summary, live_row, panel.bar, panel.status) if w is not None):
        area.pack_start(widget, False, False, 0)
        area.reorder_child(widget, position)
        widget.show_all()
    try:
        dlg.get_widget("learning-rate", GimpUi.LabelSpin).set_digits(4)
    except Exception:
        traceback.print_exc()
    GObject.Object.connect(dlg, "response", panel._on_response)
    GObject.Object.connect(dlg, "delete-event", panel._on_delete)
    panel._sensitive()



def pick_model(models: list[Any], wanted: str, session: live.Session | None) -> Any:
    """The model to drag with: the one named, else the session's, else the first loaded (else the first)."""
    if not wanted and session is not None:
        wanted = session.model.name
    return link.choose_model(models, wanted)


def session_record(session: live.Session | None, rect: geometry.Rect) -> parasite.SessionRecord | None:
    """What the applied layer remembers of the backend session (so the filter can drag on from it)."""
    if session is None or session.session_id in edit.NO_SESSION:
        return None
    return parasite.SessionRecord(session.address, session.session_id, rect, session.model.name,
                                  (session.model.width, session.model.height), session.pti,
                                  parasite.FRAME_CROP, session.crop, session.aligned)


def failure_message(job: live.Job, exc: errors.PluginError, has_layer: bool) -> errors.PluginError:
    """What the panel says when a job failed: a lost backend and a Stop before the drag say what the
    layer keeps and what Drag does next; other errors as they came."""
    if exc.code in CONNECTION_CODES:
        kept = " The result layer keeps the last picture it showed." if has_layer else ""
        return errors.PluginError(f"DragGAN: lost the backend during the {'drag' if job.kind != 'undo' else 'undo'}: "
                                  f"{exc.message.replace('DragGAN: ', '')}{kept} Press Drag to start again (the "
                                  "picture is inverted anew).")
    if exc.code == "cancelled":   # Stop before the drag began (queued, inverting): nothing to keep
        return errors.PluginError("DragGAN: stopped before the drag began: nothing changed"
                                  + (" (the layer shows the last result)." if has_layer else "."))
    return exc


def result_words(job: live.Job, answer: live.Answer, ctx: JobContext, short: bool, landed: list[bool]) -> str:
    """The status line after a job: what was done, the backend's note, where a Stop ended it, the
    inversion's quality (when it inverted) and which handles stopped short."""
    result = answer.result
    words = {"edit": "inverted and dragged", "continue": "continued the session (no re-inversion)",
             "undo": "undid the last drag"}[job.kind]
    if answer.note:
        words = answer.note + "; " + words
    if getattr(result, "stopped", False):
        words += f"; stopped at step {result.steps}"
    if result.inversion is not None and answer.inverted:
        words += "; " + texts.quality_text(result.inversion.psnr, result.inversion.stlpips,
                                           texts.model_limits(ctx.model),
                                           float(getattr(result.inversion, "colour", 0.0) or 0.0))
    if short:
        words += "; " + texts.stopped_short_text(0.0, ctx.with_selection, landed)
    return words
