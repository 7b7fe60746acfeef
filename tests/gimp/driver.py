"""Runs INSIDE the real GIMP 3 (run.sh --batch-file): drives python-fu-draggan through the PDB.

Environment: OUT (folder shared with the host), ENDPOINT (the real backend), DEAD_ENDPOINT (a port
where nothing listens). Reads OUT/input.png (made by the host test), then:

1. makes a layer "Photo" at offsets (10, 6), a path "drag points" with two strokes, a selection;
2. edit: calls the procedure on Photo; exports the composite, the Photo layer, the result layer
   and its mask;
3. drag again: a new one-stroke path inside the crop, the procedure on the result layer;
4. odd anchors: a path with three anchors -> error expected;
5. backend down: the good path, DEAD_ENDPOINT -> error expected.

Everything observed goes to OUT/report.json (the host asserts on it and on the exported files).
Raises at the end when something could not even be tried, so GIMP exits non-zero.
"""

import json
import os
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

PROC = "python-fu-draggan"
OUT = os.environ["OUT"]
ENDPOINT = os.environ["ENDPOINT"]
DEAD_ENDPOINT = os.environ["DEAD_ENDPOINT"]
STEPS = int(os.environ.get("DRAG_STEPS", "5"))


def call(image, drawable, address=ENDPOINT, timeout_s=120, **extra):
    """Run the procedure non-interactively -> (status nick, result layer or None, error text)."""
    pdb = Gimp.get_pdb()
    proc = pdb.lookup_procedure(PROC)
    if proc is None:
        raise RuntimeError(PROC + " is not registered: the staged plug-in did not load")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [drawable])
    config.set_property("backend-address", address)
    config.set_property("backend-timeout", timeout_s)
    config.set_property("max-steps", STEPS)
    # The backend also offers the embedded default model (faces-128); these runs use its 'tiny'.
    config.set_property("model", "tiny")
    for key, value in extra.items():
        config.set_property(key.replace("_", "-"), value)
    started = time.monotonic()
    result = proc.run(config)
    timings.append(round(time.monotonic() - started, 2))
    status = result.index(0)
    if status == Gimp.PDBStatusType.SUCCESS:
        return status.value_nick, result.index(1), ""
    return status.value_nick, None, pdb.get_last_error()


def pixels(drawable, fmt="R'G'B'A u8"):
    w, h = drawable.get_width(), drawable.get_height()
    return drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.NONE)


def dump(name, data):
    with open(os.path.join(OUT, name), "wb") as fh:
        fh.write(bytes(data))


def export_composite(image, name):
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(os.path.join(OUT, name)), None)


def describe(image):
    out = []
    for layer in image.get_layers():
        _ok, x, y = layer.get_offsets()
        parasite = layer.get_parasite("draggan-session")
        out.append({"name": layer.get_name(), "offsets": [x, y],
                    "size": [layer.get_width(), layer.get_height()],
                    "mask": layer.get_mask() is not None,
                    "session": json.loads(bytes(parasite.get_data()).decode()) if parasite else None})
    return out


def new_path(image, name, strokes):
    path = Gimp.Path.new(image, name)
    image.insert_path(path, None, 0)            # also makes it the active path
    for anchors in strokes:
        first, *rest = anchors
        stroke = path.bezier_stroke_new_moveto(*first)
        for point in rest:
            path.bezier_stroke_lineto(stroke, *point)
    return path


DRIVER_STARTED = time.monotonic()
report = {"ok": False}
timings = report["call_seconds"] = []
try:
    registered = Gimp.get_pdb().lookup_procedure(PROC)
    if registered is not None:
        report["procedure"] = {"menu": list(registered.get_menu_paths()), "label": registered.get_menu_label(),
                               "arguments": [a.name for a in registered.get_arguments()],
                               "image_types": registered.get_image_types()}
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(OUT, "input.png")))
    background = image.get_layers()[0]
    photo = background.copy()
    image.insert_layer(photo, None, 0)
    photo.set_name("Photo")
    photo.resize(80, 60, -10, -6)              # an 80x60 layer at image offsets (10, 6)
    drag_path = new_path(image, "drag points", [[(40.0, 30.0), (46.0, 32.0)], [(55.0, 40.0), (58.0, 36.0)]])
    Gimp.context_set_antialias(False)
    image.select_rectangle(Gimp.ChannelOps.REPLACE, 34, 24, 30, 22)
    report["layers_before"] = describe(image)
    dump("photo-before.rgba", pixels(photo))
    export_composite(image, "composite-before.png")

    # 2. the edit
    status, result, error = call(image, photo)
    report["edit"] = {"status": status, "error": error, "layers": describe(image)}
    if result is not None:
        report["edit"]["result_position"] = image.get_item_position(result)
        report["edit"]["photo_position"] = image.get_item_position(photo)
        dump("photo-after.rgba", pixels(photo))
        dump("result.rgba", pixels(result))
        dump("result-mask.y", pixels(result.get_mask(), "Y u8"))
        export_composite(image, "composite-after.png")
        _ok, non_empty, *bounds = Gimp.Selection.bounds(image)
        report["edit"]["selection_after"] = [non_empty, *bounds]

        # 3. drag again: one stroke inside the crop, on the result layer
        new_path(image, "again", [[(44.0, 31.0), (48.0, 33.0)]])
        status2, result2, error2 = call(image, result)
        report["again"] = {"status": status2, "error": error2, "layers": describe(image)}

    # 4. an odd number of anchors
    new_path(image, "odd", [[(40.0, 30.0), (46.0, 32.0), (50.0, 35.0)]])
    before = len(image.get_layers())
    status, _layer, error = call(image, photo)
    report["odd"] = {"status": status, "error": error, "new_layers": len(image.get_layers()) - before}

    # 5. the backend is down
    image.set_selected_paths([drag_path])
    before = len(image.get_layers())
    status, _layer, error = call(image, photo, address=DEAD_ENDPOINT, timeout_s=2)
    report["down"] = {"status": status, "error": error, "new_layers": len(image.get_layers()) - before}
    dump("photo-end.rgba", pixels(photo))

    image.delete()
    report["driver_seconds"] = round(time.monotonic() - DRIVER_STARTED, 2)
    report["ok"] = True
except Exception:
    report["exception"] = traceback.format_exc()
finally:
    with open(os.path.join(OUT, "report.json"), "w") as fh:
        json.dump(report, fh, indent=1)

if not report["ok"]:
    raise RuntimeError("driver failed:\n" + report["exception"])
