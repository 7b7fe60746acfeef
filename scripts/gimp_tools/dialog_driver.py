"""Runs INSIDE GIMP (tests/gimp/kit/run.sh; its chroot has xvfb, xdotool, x11-apps and netpbm):
shows the plug-in's dialog on a virtual X display, saves a screenshot, presses OK, and records
whether the interactive run then succeeded. Used by dialog_screenshot.sh; not part of the suite.

Environment: OUT (shared folder), DISPLAY (the virtual display this script starts), PHOTO (a PNG in
OUT, optional).
"""

import json
import os
import subprocess
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, Gio  # noqa: E402

OUT = os.environ["OUT"]
DISPLAY = os.environ["DISPLAY"]
HELPER = r"""
for i in $(seq 120); do
  wid=$(xdotool search --onlyvisible --name '^DragGAN$' 2>/dev/null | head -n 1)
  [ -n "$wid" ] && break; sleep 0.5
done
[ -n "$wid" ] || { echo "dialog never appeared" > "$OUT/helper.txt"; exit 1; }
sleep 2
xdotool getwindowgeometry "$wid" > "$OUT/geometry.txt"
xwd -root -silent | xwdtopnm 2>/dev/null | pnmtopng > "$OUT/dialog-screen.png"
xdotool windowfocus --sync "$wid" 2>/dev/null; sleep 0.3
xdotool key --clearmodifiers Return
echo "pressed OK on window $wid" > "$OUT/helper.txt"
"""

report = {"ok": False}
xvfb = None
try:
    xvfb = subprocess.Popen(["Xvfb", DISPLAY, "-screen", "0", "1100x1000x24", "-nolisten", "tcp"])
    sock = "/tmp/.X11-unix/X" + DISPLAY.lstrip(":")
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.1)
    helper = subprocess.Popen(["bash", "-c", HELPER], env=dict(os.environ, OUT=OUT))

    photo = os.path.join(OUT, os.environ.get("PHOTO", "input.png"))
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(photo))
    layer = image.get_layers()[0]
    w, h = layer.get_width(), layer.get_height()
    path = Gimp.Path.new(image, "drag points")
    image.insert_path(path, None, 0)
    stroke = path.bezier_stroke_new_moveto(w * 0.45, h * 0.45)
    path.bezier_stroke_lineto(stroke, w * 0.52, h * 0.42)

    proc = Gimp.get_pdb().lookup_procedure("python-fu-draggan")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    result = proc.run(config)
    status = result.index(0)
    report["status"] = status.value_nick
    report["error"] = "" if status == Gimp.PDBStatusType.SUCCESS else Gimp.get_pdb().get_last_error()
    report["layers"] = [lay.get_name() for lay in image.get_layers()]
    helper.wait(30)
    image.delete()
    report["ok"] = True
except Exception:
    report["exception"] = traceback.format_exc()
finally:
    if xvfb is not None:
        xvfb.terminate()
    with open(os.path.join(OUT, "dialog-report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
