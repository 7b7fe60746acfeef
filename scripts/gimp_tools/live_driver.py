"""Runs INSIDE the real GIMP 3 with its windows (record_live.py starts it through the kit's run.sh with
gui-bin over /usr/local/bin, on Xvfb): opens a picture in an image window, opens the DragGAN panel
beside it, presses Drag, and grabs the whole screen (xwd) while the picture moves, until the result is
in. Used by record_live.py; not part of the suite.

Environment: OUT (shared folder: input.png, edit.json {"handles", "targets"} in image coordinates, the
staged plug-ins/), ENDPOINT (a running backend serving faces-128), DISPLAY (set by gui-bin), FRAME_S
(seconds between grabs). Writes OUT/frames/NNNN.ppm with OUT/frames.json (each frame's time and the
drag's state then), OUT/panel.ppm (the screen before the drag) and OUT/windows.json (where the image
window and the panel are), OUT/live-report.json.
"""

import json
import os
import subprocess
import sys
import threading
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gimp, Gio, GLib, Gtk  # noqa: E402

OUT = os.environ["OUT"]
ENDPOINT = os.environ["ENDPOINT"]
FRAME_S = float(os.environ.get("FRAME_S", "0.2"))
sys.path.insert(0, os.path.join(OUT, "plug-ins", "draggan"))
from draggan_core import panel as panel_module  # noqa: E402

FRAMES = os.path.join(OUT, "frames")
os.makedirs(FRAMES, exist_ok=True)


def x(*args):
    return subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=20).stdout.strip()


def grab(path):
    """The whole virtual screen as a PPM (xwd, then netpbm's xwdtopnm)."""
    with open(path, "wb") as fh:
        xwd = subprocess.Popen(["xwd", "-root", "-silent"], stdout=subprocess.PIPE)
        subprocess.run(["xwdtopnm"], stdin=xwd.stdout, stdout=fh, stderr=subprocess.DEVNULL, check=True)
        xwd.wait()


def windows():
    """title -> X window id of the visible top-level windows."""
    out = {}
    for wid in x("search", "--onlyvisible", "--name", ".").split():
        out[x("getwindowname", wid)] = wid
    return out


report = {"ok": False}
state = {"phase": "idle", "step": 0, "total": 0, "recording": False, "frames": []}
try:
    with open(os.path.join(OUT, "edit.json")) as fh:
        edit = json.load(fh)
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(OUT, "input.png")))
    photo = image.get_layers()[0]
    photo.set_name("Photo")
    path = Gimp.Path.new(image, "drag points")
    image.insert_path(path, None, 0)
    for h, t in zip(edit["handles"], edit["targets"]):
        stroke = path.bezier_stroke_new_moveto(*h)
        path.bezier_stroke_lineto(stroke, *t)
    path.set_visible(True)
    display = Gimp.Display.new(image)
    proc = Gimp.get_pdb().lookup_procedure("python-fu-draggan-panel")
    config = proc.create_config()
    for key, value in (("backend-address", ENDPOINT), ("model", "faces-128"),
                       ("max-steps", int(os.environ.get("MAX_STEPS", "80"))), ("backend-timeout", 600)):
        config.set_property(key, value)
    panel = panel_module.Panel(proc, config, image, photo)

    def listen(event, facts):
        if event == "preview":
            state.update(phase="drag", step=facts["step"], total=facts["total"], recording=True)
        elif event == "result":
            state.update(phase="result", step=facts["result"].steps)
            state["result_at"] = time.monotonic()
        elif event == "error":
            state.update(phase="error", message=facts["message"])

    panel.listeners.append(listen)
    panel.show()

    def grabber():
        """Grab the screen every FRAME_S while the drag shows, and 2 s past the result."""
        n = 0
        while not state.get("quit"):
            if state["recording"]:
                started = time.monotonic()
                name = os.path.join(FRAMES, f"{n:04d}.ppm")
                grab(name)
                state["frames"].append({"file": os.path.basename(name), "t": round(started, 3),
                                        "phase": state["phase"], "step": state["step"]})
                n += 1
                if "result_at" in state and started - state["result_at"] > 2.0:
                    state["recording"] = False
                    state["quit"] = True
                time.sleep(max(0.0, FRAME_S - (time.monotonic() - started)))
            else:
                time.sleep(0.05)

    def script():
        deadline = time.monotonic() + 60
        while panel.models is None and time.monotonic() < deadline:
            yield
        for _ in range(20):   # let the windows settle
            yield
        found = windows()
        image_title = next((t for t in found if t.endswith("GIMP") and "layer" in t), "")
        for title, wid in found.items():
            if title == "GNU Image Manipulation Program":
                x("windowunmap", wid)            # the toolbox: not part of this picture
        split = int(os.environ.get("SPLIT_X", "820"))
        if image_title:
            wid = found[image_title]
            x("windowmove", wid, "0", "0")
            x("windowsize", wid, str(split), os.environ.get("SCREEN_H", "860"))
            for _ in range(10):
                yield
            # the canvas alone (Tab hides the docks), the picture fitted to it, the Paths tool showing the anchors
            for key in ("Tab", "shift+ctrl+j", "b"):
                x("windowfocus", "--sync", wid)
                x("key", "--clearmodifiers", key)
                for _ in range(6):
                    yield
        x("windowmove", found.get("DragGAN Panel", ""), str(split + 4), "0")
        for _ in range(20):
            yield
        grab(os.path.join(OUT, "panel.ppm"))
        report["windows"] = {t: x("getwindowgeometry", w) for t, w in windows().items()}
        panel.press("drag")
        threading.Thread(target=grabber, daemon=True).start()
        deadline = time.monotonic() + 900
        while not state.get("quit") and time.monotonic() < deadline and state["phase"] != "error":
            yield
        report["status"] = panel.status.get_text()
        panel.press("apply")

    steps = script()

    def tick():
        try:
            next(steps)
            return True
        except StopIteration:
            Gtk.main_quit()
            return False
        except BaseException as exc:
            report["exception"] = repr(exc)
            Gtk.main_quit()
            return False

    GLib.timeout_add(50, tick)
    Gtk.main()
    state["quit"] = True
    with open(os.path.join(OUT, "frames.json"), "w") as fh:
        json.dump(state["frames"], fh)
    report["frames"] = len(state["frames"])
    report["ok"] = "exception" not in report
    display.delete()
finally:
    with open(os.path.join(OUT, "live-report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
