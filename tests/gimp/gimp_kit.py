"""Helpers for the drivers that run INSIDE the real GIMP 3 (driver.py, align_driver.py, relay_driver.py).

tests/gimp/kit/run.sh binds a --batch-file's folder read-only and puts it on sys.path, so the drivers
import this module as a sibling.  Only GIMP's own Python is here: gi, no numpy, no pytest.
"""

import contextlib
import json
import os
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

PROC = "python-fu-draggan"


def run_procedure(image, drawable, address, model, timeout_s=120, timings=None, **extra):
    """Run python-fu-draggan non-interactively on ``drawable`` -> (status nick, result layer or None,
    error text).  ``extra``: more of its arguments, by Python name (max_steps -> max-steps);
    ``timings``: a list that gets the call's seconds."""
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
    config.set_property("model", model)
    for key, value in extra.items():
        config.set_property(key.replace("_", "-"), value)
    started = time.monotonic()
    result = proc.run(config)
    if timings is not None:
        timings.append(round(time.monotonic() - started, 2))
    status = result.index(0)
    if status == Gimp.PDBStatusType.SUCCESS:
        return status.value_nick, result.index(1), ""
    return status.value_nick, None, pdb.get_last_error()


def load_image(folder, name="input.png"):
    return Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(folder, name)))


def pixels(drawable, fmt="R'G'B'A u8"):
    """The drawable's whole buffer as bytes in ``fmt``."""
    w, h = drawable.get_width(), drawable.get_height()
    return drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.NONE)


def dump(folder, name, data):
    with open(os.path.join(folder, name), "wb") as fh:
        fh.write(bytes(data))


def export_composite(image, folder, name):
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(os.path.join(folder, name)), None)


def describe(image):
    """Each layer, top first: name, offsets, size, whether it has a mask, its DragGAN session parasite."""
    out = []
    for layer in image.get_layers():
        _ok, x, y = layer.get_offsets()
        parasite = layer.get_parasite("draggan-session")
        out.append({"name": layer.get_name(), "offsets": [x, y],
                    "size": [layer.get_width(), layer.get_height()],
                    "mask": layer.get_mask() is not None,
                    "session": json.loads(bytes(parasite.get_data()).decode()) if parasite else None})
    return out


def record_result(image, photo, result, folder):
    """After an edit made ``result`` from ``photo``: dump the photo (it must be untouched), the result
    and its mask into ``folder``; return both layers' stack positions for the report."""
    dump(folder, "photo-after.rgba", pixels(photo))
    dump(folder, "result.rgba", pixels(result))
    dump(folder, "result-mask.y", pixels(result.get_mask(), "Y u8"))
    return {"result_position": image.get_item_position(result), "photo_position": image.get_item_position(photo)}


def new_path(image, name, strokes):
    """A path of straight strokes, each a list of (x, y) anchors; it becomes the active path."""
    path = Gimp.Path.new(image, name)
    image.insert_path(path, None, 0)
    for anchors in strokes:
        first, *rest = anchors
        stroke = path.bezier_stroke_new_moveto(*first)
        for point in rest:
            path.bezier_stroke_lineto(stroke, *point)
    return path


@contextlib.contextmanager
def reporting(path):
    """``with reporting(OUT/report.json) as report:`` the driver's body fills ``report``; it is written
    to ``path`` however the body ends (``ok`` true only when it finished), and a body that raised
    makes the driver raise too, so GIMP exits non-zero and the host sees the traceback."""
    report = {"ok": False}
    try:
        yield report
        report["ok"] = True
    except Exception:
        report["exception"] = traceback.format_exc()
    finally:
        with open(path, "w") as fh:
            json.dump(report, fh, indent=1)
    if not report["ok"]:
        raise RuntimeError("driver failed:\n" + report["exception"])
