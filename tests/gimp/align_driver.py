"""Runs INSIDE the real GIMP 3 (run.sh --batch-file): an aligned edit of a tilted face photo.

Environment: OUT (folder shared with the host), ENDPOINT (the real backend serving 'tinyface',
flagged alignment ffhq). Reads OUT/input.png (scikit-image's astronaut rotated by 20 degrees, made
by the host test), then:

1. makes a layer "Photo" of 260x260 at image offsets (120, 40), so the face's FFHQ quad runs over
   the layer's left and top edges (the backend pads there and must mask the padding out);
2. a one-stroke path nose -> a little right and up, and calls the procedure with model 'tinyface'
   and Face alignment left at its default (auto); dumps Photo before/after, the result's RGBA and
   its mask;
3. drag again on the result layer (the stored transform is reused).

Everything observed goes to OUT/align-report.json.
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
HANDLE = (180.5, 147.0)    # the nose, image coordinates
TARGET = (186.0, 145.0)


def call(image, drawable, **extra):
    pdb = Gimp.get_pdb()
    proc = pdb.lookup_procedure(PROC)
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [drawable])
    config.set_property("backend-address", ENDPOINT)
    config.set_property("backend-timeout", 120)
    config.set_property("max-steps", 3)
    config.set_property("model", "tinyface")
    for key, value in extra.items():
        config.set_property(key.replace("_", "-"), value)
    result = proc.run(config)
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


def describe(image):
    out = []
    for layer in image.get_layers():
        _ok, x, y = layer.get_offsets()
        parasite = layer.get_parasite("draggan-session")
        out.append({"name": layer.get_name(), "offsets": [x, y], "size": [layer.get_width(), layer.get_height()],
                    "mask": layer.get_mask() is not None,
                    "session": json.loads(bytes(parasite.get_data()).decode()) if parasite else None})
    return out


def new_path(image, name, anchors):
    path = Gimp.Path.new(image, name)
    image.insert_path(path, None, 0)
    first, *rest = anchors
    stroke = path.bezier_stroke_new_moveto(*first)
    for point in rest:
        path.bezier_stroke_lineto(stroke, *point)
    return path


report = {"ok": False}
try:
    registered = Gimp.get_pdb().lookup_procedure(PROC)
    report["arguments"] = [a.name for a in registered.get_arguments()]
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(OUT, "input.png")))
    background = image.get_layers()[0]
    photo = background.copy()
    image.insert_layer(photo, None, 0)
    photo.set_name("Photo")
    photo.resize(260, 260, -120, -40)
    new_path(image, "drag points", [HANDLE, TARGET])
    dump("photo-before.rgba", pixels(photo))
    started = time.monotonic()
    status, result, error = call(image, photo)
    report["edit"] = {"status": status, "error": error, "layers": describe(image),
                      "seconds": round(time.monotonic() - started, 2)}
    if result is not None:
        report["edit"]["result_position"] = image.get_item_position(result)
        report["edit"]["photo_position"] = image.get_item_position(photo)
        dump("photo-after.rgba", pixels(photo))
        dump("result.rgba", pixels(result))
        dump("result-mask.y", pixels(result.get_mask(), "Y u8"))
        new_path(image, "again", [(182.0, 150.0), (184.0, 151.0)])
        status2, result2, error2 = call(image, result)
        report["again"] = {"status": status2, "error": error2, "layers": describe(image)}
        if result2 is not None:
            dump("again.rgba", pixels(result2))
    dump("photo-end.rgba", pixels(photo))
    image.delete()
    report["ok"] = True
except Exception:
    report["exception"] = traceback.format_exc()
finally:
    with open(os.path.join(OUT, "align-report.json"), "w") as fh:
        json.dump(report, fh, indent=1)

if not report["ok"]:
    raise RuntimeError("align driver failed:\n" + report["exception"])
