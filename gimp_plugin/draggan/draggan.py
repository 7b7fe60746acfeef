#!/usr/bin/env python3
"""DragGAN for GIMP 3: drag points of a photo with a StyleGAN backend.

The thin GIMP entry: registers the procedure and hands each run to draggan_core (beside this
file; pure-Python logic). GIMP loads it only as PLUG-IN-DIR/draggan/draggan.py, executable.
Menu: Filters > Generic > DragGAN (Drag Points)...   Procedure: python-fu-draggan.
Menu: Filters > Generic > DragGAN Panel...           Procedure: python-fu-draggan-panel (interactive:
a window that stays open while the picture moves live; see draggan_core/panel.py).
"""

import os
import sys

# draggan_core/ and draggan_wire/ sit next to this file
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
from draggan_core import errors, options  # noqa: E402
from gi.repository import Gimp, GLib, GObject  # noqa: E402

PLUGIN_DIR = os.path.dirname(os.path.realpath(__file__))


def _fail(procedure, error):
    status = Gimp.PDBStatusType.CALLING_ERROR if error.calling else Gimp.PDBStatusType.EXECUTION_ERROR
    return procedure.new_return_values(status, GLib.Error(error.message))


def run(procedure, run_mode, image, drawables, config, _data):
    try:  # imported per run: a broken install shows as an error message, not a crash
        from draggan_core import edit
    except Exception as exc:
        return _fail(procedure, errors.wire_missing(f"draggan_core: {type(exc).__name__}: {exc}"))
    plugin_config = options.read_plugin_config(PLUGIN_DIR)   # remote backend address and CURVE keys
    if run_mode == Gimp.RunMode.INTERACTIVE:
        from draggan_core import dialog

        if not dialog.show(procedure, config, image, plugin_config):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    progress = edit.Progress()
    try:
        outcome = edit.run_edit(image, list(drawables), options.read_options(config), progress,
                                plugin_config=plugin_config)
    except errors.PluginError as exc:
        return _fail(procedure, exc)
    except Exception as exc:  # a bug: still a message, never a traceback dialog
        import traceback

        traceback.print_exc()
        return _fail(procedure, errors.PluginError(
            f"DragGAN: unexpected error ({type(exc).__name__}: {exc}). The image was not changed; "
            "please report this with the text GIMP printed on its console."))
    finally:
        progress.end()
    Gimp.displays_flush()
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    values.remove(1)
    values.insert(1, GObject.Value(Gimp.Layer, outcome.layer))
    return values


def run_panel(procedure, run_mode, image, drawables, config, _data):
    """The live panel: interactive only (its buttons are the interface); returns the layer Apply made."""
    if run_mode != Gimp.RunMode.INTERACTIVE:
        return _fail(procedure, errors.PluginError(
            f"DragGAN: {options.PANEL_PROCEDURE_NAME} is interactive (a window with Drag, Stop, Undo and Apply); "
            f"scripts call {options.PROCEDURE_NAME}, which takes the same arguments.", calling=True))
    try:
        from draggan_core import edit, panel
    except Exception as exc:
        return _fail(procedure, errors.wire_missing(f"draggan_core: {type(exc).__name__}: {exc}"))
    try:
        layer = edit.single_layer(list(drawables))
        applied = panel.Panel(procedure, config, image, layer, options.read_plugin_config(PLUGIN_DIR)).run()
    except errors.PluginError as exc:
        return _fail(procedure, exc)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        return _fail(procedure, errors.PluginError(f"DragGAN: unexpected error in the panel ({type(exc).__name__}: "
                                                   f"{exc}); please report it with the text GIMP printed."))
    if applied is None:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    values.remove(1)
    values.insert(1, GObject.Value(Gimp.Layer, applied))
    return values


class DragGAN(Gimp.PlugIn):
    def do_query_procedures(self):
        return [options.PROCEDURE_NAME, options.PANEL_PROCEDURE_NAME]

    def do_set_i18n(self, _name):
        return False

    def do_create_procedure(self, name):
        panel = name == options.PANEL_PROCEDURE_NAME
        proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_panel if panel else run, None)
        proc.set_image_types("RGB*, GRAY*")
        proc.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        proc.set_menu_label(options.PANEL_MENU_LABEL if panel else options.MENU_LABEL)
        proc.add_menu_path(options.MENU_PATH)
        if panel:
            proc.set_documentation(
                "Drag points of a photo with DragGAN, live",
                "A panel that stays open: Drag shows the picture moving on the canvas and the path's "
                "handles following it, Stop keeps the drag as it is, Undo drag goes back a drag, Apply "
                "puts the result layer into the image (one undo step). Handles and targets come from "
                "the path as for python-fu-draggan. Interactive only.",
                name)
        else:
            proc.set_documentation(
                "Drag points of a photo with DragGAN",
                "Handles and targets come from the active path: in each stroke, anchors 1, 3, 5... are "
                "handles and 2, 4, 6... their targets. The selection (if any) is the region that may "
                "move. The result is a new layer above the original with a feathered layer mask.",
                name)
        proc.set_attribution("DragGAN for GIMP contributors", "MIT licence", "2026")
        config = options.read_plugin_config(PLUGIN_DIR)
        defaults = {"backend-address": config["address"]} if isinstance(config.get("address"), str) else {}
        options.register_arguments(proc, Gimp, GObject, defaults)
        proc.add_layer_return_value("result-layer", "Result layer", "The new layer with the edit",
                                    False, GObject.ParamFlags.READWRITE)
        return proc


Gimp.main(DragGAN.__gtype__, sys.argv)
