"""The interactive dialog (GimpUi.ProcedureDialog): a path chooser and a line saying what the path
holds, the procedure's arguments, and a line listing the backend's models with their sizes. GIMP
remembers the values between runs. Only imported for interactive runs (it needs a display).

The Model field: the PDB argument stays a string (GIMP fixes a choice argument's values when the
procedure is registered, long before the backend is asked), but the dialog asks the backend
(`welcome`) and shows its models in a combo box, preselecting a sensible one (the previous choice
when the backend still serves it, else the first loaded model, else the first listed). When the
backend cannot be reached the field stays a free-text entry."""

from __future__ import annotations

import traceback
from typing import Any

from . import errors, options, points


def backend_models(address: str, timeout_s: float,
                   plugin_config: dict[str, Any] | None = None) -> tuple[list[Any] | None, str]:
    """(the models at `address`, one line about them) after a short handshake; (None, why) when the
    backend cannot be asked."""
    try:
        from . import link

        with link.Backend(address, timeout_s, connect_timeout_s=min(2.0, timeout_s), retries=1,
                          plugin_config=plugin_config) as backend:
            models = backend.models()
    except errors.PluginError as exc:
        return None, "Backend not reachable now: " + exc.message.replace("DragGAN: ", "")[:150] + "..."
    listed = ", ".join(f"{m.name} ({m.width}x{m.height}{'' if m.loaded else ', not loaded yet'})"
                       for m in models)
    return list(models), f"Models at {address}: {listed}"


def models_text(address: str, timeout_s: float, plugin_config: dict[str, Any] | None = None) -> str:
    """One line about the models at `address` (a short handshake), or why it failed."""
    return backend_models(address, timeout_s, plugin_config)[1]


def model_combo_plan(models: list[Any], current: str) -> tuple[list[str], int]:
    """(names for the Model combo box, index to preselect): the models the backend reported, in its
    order; `current` (the remembered value) when it is still served, else the first loaded model,
    else the first listed one. `models` holds link.ModelChoice-like objects (name, loaded)."""
    names = [str(m.name) for m in models]
    if not names:
        return [], -1
    if current in names:
        return names, names.index(current)
    loaded = [i for i, m in enumerate(models) if getattr(m, "loaded", False)]
    return names, (loaded[0] if loaded else 0)


def _model_combo(GObject: Any, Gtk: Any, config: Any, entry_widget: Any, names: list[str], active: int) -> Any:
    """A combo box with the backend's models in place of the Model text entry (same config property;
    the combo keeps an entry, so a name the backend did not list can still be typed)."""
    combo = Gtk.ComboBoxText.new_with_entry()
    for name in names:
        combo.append_text(name)
    combo.set_active(active)
    config.set_property("model", names[active])

    def changed(widget: Any) -> None:
        config.set_property("model", (widget.get_active_text() or "").strip())

    GObject.Object.connect(combo, "changed", changed)
    row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
    label = Gtk.Label.new_with_mnemonic(next(a.label for a in options.ARGUMENTS if a.name == "model"))
    label.set_mnemonic_widget(combo)
    row.pack_start(label, False, False, 0)
    row.pack_start(combo, True, True, 0)
    parent = entry_widget.get_parent()
    parent.pack_start(row, False, False, 0)
    parent.reorder_child(row, parent.get_children().index(entry_widget) + 1)
    row.show_all()
    entry_widget.set_no_show_all(True)
    entry_widget.hide()
    return combo


def points_text(image: Any, path: Any) -> str:
    """What the path holds ('2 drags from path "x"'), or what is wrong with it."""
    try:
        chosen = points.choose_path(image, path)
        drag = points.pairs_from_strokes(points.strokes_of_path(chosen), chosen.get_name())
    except errors.PluginError as exc:
        return exc.message.replace("DragGAN: ", "").split(". ")[0] + "."
    n = len(drag.handles)
    return f"{n} drag{'s' if n != 1 else ''} (handle → target) from path '{chosen.get_name()}'"


def _path_chooser(Gimp: Any, GimpUi: Any, GObject: Any, Gtk: Any, image: Any, config: Any, summary: Any,
                  label: str = options.ARGUMENTS[0].label) -> Any:
    """A row 'Path with drag points: [combo]' bound to the config's 'path' property."""
    combo = GimpUi.PathComboBox.new(lambda img, item, *data: img.get_id() == image.get_id())
    current = config.get_property("path")
    if current is None:
        selected = list(image.get_selected_paths() or []) or list(image.get_paths() or [])
        current = selected[0] if selected else None
    if current is not None:
        combo.set_active(current.get_id())   # shown only; the config keeps None = "the active path"

    def changed(widget: Any) -> None:
        ok, item_id = widget.get_active()
        path = Gimp.Path.get_by_id(item_id) if ok else None
        config.set_property("path", path)
        summary.set_text(points_text(image, path))

    # GimpIntComboBox.connect() is GIMP's own (value, callback) helper; the GObject signal API is this one
    GObject.Object.connect(combo, "changed", changed)
    row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
    text = Gtk.Label.new_with_mnemonic(label)
    text.set_mnemonic_widget(combo)
    row.pack_start(text, False, False, 0)
    row.pack_start(combo, True, True, 0)
    return row


def show(procedure: Any, config: Any, image: Any, plugin_config: dict[str, Any] | None = None) -> bool:
    """Show the dialog; True when the user pressed OK."""
    import gi

    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import Gimp, GimpUi, GObject, Gtk

    GimpUi.init("draggan")
    address = config.get_property("backend-address") or options.DEFAULT_ADDRESS
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "DragGAN")
    models, info = backend_models(address, 2.0, plugin_config)
    dialog.get_label("models-info", info, False, False)
    model_entry = dialog.get_widget("model", GimpUi.LabelEntry)
    names = [arg.name for arg in options.ARGUMENTS if arg.name != "path"]
    names.insert(names.index("model") + 1, "models-info")
    dialog.fill(names)
    if models:   # the backend answered: pick from its models (on any failure the text entry stays)
        try:
            choices, active = model_combo_plan(models, (config.get_property("model") or "").strip())
            _model_combo(GObject, Gtk, config, model_entry, choices, active)
        except Exception:
            traceback.print_exc()
    try:  # extras: a failure here must not cost the user the dialog
        area = dialog.get_content_area()
        summary = Gtk.Label(label=points_text(image, config.get_property("path")), xalign=0.0)
        summary.set_line_wrap(True)
        row = _path_chooser(Gimp, GimpUi, GObject, Gtk, image, config, summary)
        for position, widget in enumerate((row, summary)):
            area.pack_start(widget, False, False, 0)
            area.reorder_child(widget, position)
            widget.show_all()
        spin = dialog.get_widget("learning-rate", GimpUi.LabelSpin)
        spin.set_digits(4)
        spin.set_increments(0.0005, 0.005)
    except Exception:
        traceback.print_exc()
    ok = bool(dialog.run())
    dialog.destroy()
    return ok
