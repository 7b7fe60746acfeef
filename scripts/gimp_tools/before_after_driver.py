"""Runs INSIDE GIMP (tests/gimp/kit/run.sh): one DragGAN edit of OUT/photo.png for the README picture.

Environment: OUT, ENDPOINT, EDIT (JSON: {"strokes": [[[x, y], [x, y]], ...], "select": [x, y, w, h]
or null, "steps": N, "crop_mode": "auto"|"layer"|"selection"}). Writes OUT/after.png (the composite),
OUT/result.json (status, error, result layer name and rectangle, seconds).
"""

import json
import os
import time

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, Gio  # noqa: E402

OUT = os.environ["OUT"]
EDIT = json.loads(os.environ["EDIT"])

image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(OUT, "photo.png")))
layer = image.get_layers()[0]
path = Gimp.Path.new(image, "drag points")
image.insert_path(path, None, 0)
for (hx, hy), (tx, ty) in EDIT["strokes"]:
    stroke = path.bezier_stroke_new_moveto(hx, hy)
    path.bezier_stroke_lineto(stroke, tx, ty)
if EDIT.get("select"):
    x, y, w, h = EDIT["select"]
    image.select_ellipse(Gimp.ChannelOps.REPLACE, x, y, w, h)

proc = Gimp.get_pdb().lookup_procedure("python-fu-draggan")
config = proc.create_config()
config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
config.set_property("image", image)
config.set_core_object_array("drawables", [layer])
config.set_property("backend-address", os.environ["ENDPOINT"])
config.set_property("backend-timeout", 600)
config.set_property("max-steps", int(EDIT.get("steps", 200)))
config.set_property("crop-mode", EDIT.get("crop_mode", "auto"))
started = time.monotonic()
result = proc.run(config)
status = result.index(0)
report = {"status": status.value_nick, "seconds": round(time.monotonic() - started, 1),
          "error": "" if status == Gimp.PDBStatusType.SUCCESS else Gimp.get_pdb().get_last_error()}
if status == Gimp.PDBStatusType.SUCCESS:
    new = result.index(1)
    _ok, ox, oy = new.get_offsets()
    report.update(name=new.get_name(), rect=[ox, oy, new.get_width(), new.get_height()])
    Gimp.Selection.none(image)
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(os.path.join(OUT, "after.png")), None)
with open(os.path.join(OUT, "result.json"), "w") as fh:
    json.dump(report, fh, indent=1)
image.delete()
