"""Runs INSIDE the real GIMP 3 with its user interface on a virtual display (the kit's run.sh with
scripts/gimp_tools/gui-bin over /usr/local/bin): drives the DragGAN panel, the plug-in's own code,
by pressing its buttons from GLib timeouts in GTK's main loop, the way a user's clicks arrive.

Environment: OUT (shared with the host; holds input.png, edit.json and the staged plug-ins/),
ENDPOINT (the real backend), MAX_STEPS (the panel's Max steps), STOP_AFTER (previews painted before
Stop is pressed), SCENARIO ("session", below, or "restart": the backend dies mid-drag and comes
back). edit.json: {"handles": [[x, y]], "targets": [[x, y]], "moved_target": [x, y]}, image coordinates
(one stroke per pair; "moved_target" replaces the first target before the second drag).

1. the picture in an image window, a path with the handle -> target pairs, the panel on its layer;
2. Drag (a new session: the backend inverts), watching every preview the panel paints (the result
   layer's pixels, the path's handle anchor); Stop after STOP_AFTER previews; the stopped result;
3. the target anchor moved as a user moves it, Drag again (continues the session), to its end;
4. Undo drag; 5. Apply; 6. Ctrl+Z in the image window (xdotool): GIMP's own undo;
7. python-fu-draggan-panel through the PDB: interactive (its window opens; xdotool presses Close)
   and non-interactive (refused).

SCENARIO=restart: Drag, and after STOP_AFTER previews OUT/kill-now asks the host to kill the backend
and start a new one on the same port (it answers with OUT/restarted); the panel must keep the layer at
its last preview and say what happened; then Drag again (the new backend inverts anew).

Everything observed goes to OUT/report.json, pixel dumps to OUT/*.rgba; the host test asserts.
"""

import hashlib
import os
import subprocess
import sys
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gimp, GLib, Gtk  # noqa: E402
from gimp_kit import dump, load_image, new_path, pixels, reporting  # noqa: E402

OUT = os.environ["OUT"]
ENDPOINT = os.environ["ENDPOINT"]
MAX_STEPS = int(os.environ.get("MAX_STEPS", "60"))
STOP_AFTER = int(os.environ.get("STOP_AFTER", "6"))
SCENARIO = os.environ.get("SCENARIO", "session")
sys.path.insert(0, os.path.join(OUT, "plug-ins", "draggan"))   # the staged plug-in, as GIMP runs it

from draggan_core import gimp_ops as ops  # noqa: E402
from draggan_core import panel as panel_module  # noqa: E402


def sha(data):
    return hashlib.sha256(bytes(data)).hexdigest()


def handle_anchor(path):
    """(x, y) of the first stroke's first anchor: the drag's handle."""
    _kind, floats, _closed = ops.path_strokes(path)[0]
    return [round(floats[2], 2), round(floats[3], 2)]


def xdotool(*args):
    return subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=20)


def image_window():
    """The X window of GIMP's image display (the one titled "... GIMP", not the panel) and every title seen."""
    titles = {}
    for wid in xdotool("search", "--onlyvisible", "--name", ".").stdout.split():
        titles[wid] = xdotool("getwindowname", wid).stdout.strip()
    for wid, title in titles.items():
        if title.endswith("GIMP") and "layer" in title:   # "[input] ... 2 layers) 256x256 – GIMP"
            return wid, title, sorted(set(titles.values()))
    return None, "", sorted(set(titles.values()))


class Scenario:
    """Steps from a generator: each yields (predicate, timeout_s, what) to wait for; run from a GLib
    timeout, so the panel's own timer and GTK keep running in between."""

    def __init__(self, steps, report):
        self.steps = steps
        self.report = report
        self.wait = None
        self.error = None

    def tick(self):
        try:
            if self.wait is not None:
                ready, deadline, what = self.wait
                if not ready():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"timed out waiting for {what}")
                    return True
            predicate, timeout_s, what = next(self.steps)
            self.wait = (predicate, time.monotonic() + timeout_s, what)
            return True
        except StopIteration:
            Gtk.main_quit()
            return False
        except BaseException as exc:   # ends the loop; re-raised after it
            self.error = exc
            Gtk.main_quit()
            return False


def until(predicate, timeout_s, what):
    return predicate, timeout_s, what


def now():
    return time.monotonic()


def procedure_runs(proc, image, photo, report):
    # 7. the procedure the menu runs: interactive opens the panel (closed by xdotool), scripts are refused
    helper = subprocess.Popen(["bash", "-c", """
for i in $(seq 120); do
  wid=$(xdotool search --onlyvisible --name '^DragGAN Panel$' 2>/dev/null | head -n 1)
  [ -n "$wid" ] && break; sleep 0.5
done
[ -n "$wid" ] || { echo none; exit 1; }
sleep 2; xdotool windowfocus --sync "$wid"; sleep 0.3; xdotool key --clearmodifiers alt+c; echo "$wid"
"""], stdout=subprocess.PIPE, text=True)
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [photo])
    config.set_property("backend-address", ENDPOINT)
    status = proc.run(config).index(0)
    report["interactive"] = {"status": status.value_nick, "window": helper.communicate(timeout=90)[0].strip()}
    config = proc.create_config()
    config.set_property("image", image)
    config.set_core_object_array("drawables", [photo])
    status = proc.run(config).index(0)
    report["noninteractive"] = {"status": status.value_nick, "error": Gimp.get_pdb().get_last_error()}


with reporting(os.path.join(OUT, "report.json")) as report:
    import json

    with open(os.path.join(OUT, "edit.json")) as fh:
        edit = json.load(fh)
    image = load_image(OUT)
    photo = image.get_layers()[0]
    photo.set_name("Photo")
    display = Gimp.Display.new(image)
    path = new_path(image, "drag points", [[tuple(h), tuple(t)] for h, t in zip(edit["handles"], edit["targets"])])
    photo_before = pixels(photo)
    dump(OUT, "photo-before.rgba", photo_before)
    proc = Gimp.get_pdb().lookup_procedure("python-fu-draggan-panel")
    report["panel_procedure"] = proc is not None and {"menu": list(proc.get_menu_paths()),
                                                      "label": proc.get_menu_label()}
    config = proc.create_config()
    for key, value in (("backend-address", ENDPOINT), ("model", "faces-128"), ("max-steps", MAX_STEPS),
                       ("backend-timeout", 600 if SCENARIO == "session" else 20)):
        config.set_property(key, value)
    panel = panel_module.Panel(proc, config, image, photo)
    events = report["events"] = []
    watch = {"drag": 0, "layer_hashes": [], "anchors": [], "results": []}

    def listen(event, facts):
        entry = {"event": event, "t": round(now(), 3)}
        entry.update({k: v for k, v in facts.items() if isinstance(v, (int, float, str, bool))})
        if event == "preview" and panel.live is not None:
            entry["layer"] = sha(ops.read_rgba(panel.live))
            entry["anchor"] = handle_anchor(path)
            entry["drag"] = watch["drag"]
        if event == "result":
            result = facts["result"]
            entry.update(steps=result.steps, stopped=bool(result.stopped), history=result.history,
                         points=[list(p) for p in result.points], layer=sha(ops.read_rgba(panel.live)),
                         rect=list(facts["rect"].as_tuple()), anchor=handle_anchor(path), drag=watch["drag"])
        events.append(entry)

    panel.listeners.append(listen)
    panel.show()

    def results(kind):
        return [e for e in events if e["event"] == "result" and e.get("kind") == kind]

    def steps():
        yield until(lambda: panel.models is not None, 60, "the backend's models")
        report["models"] = [m.name for m in panel.models]
        # 2. a new session: inversion, then the drag; Stop after STOP_AFTER previews
        watch["drag"] = 1
        report["drag1_pressed"] = now()
        panel.press("drag")
        yield until(lambda: panel.painted >= STOP_AFTER or results("edit") or panel.job is None, 900,
                    "previews of the first drag")
        report["stop_pressed"] = now()
        report["painted_before_stop"] = panel.painted
        panel.press("stop")
        yield until(lambda: panel.job is None, 300, "the stopped drag's result")
        report["after_drag1"] = {"layer": list(ops.layer_rect(panel.live).as_tuple()), "name": panel.live.get_name(),
                                 "mask": panel.live.get_mask() is not None,
                                 "selected": [la.get_name() for la in image.get_selected_layers()]}
        dump(OUT, "after-drag1.rgba", ops.read_rgba(panel.live))
        dump(OUT, "photo-after-drag1.rgba", pixels(photo))
        # 3. the user moves the target anchor on the canvas, then drags again
        strokes = ops.path_strokes(path)
        kind, floats, closed = strokes[0]
        floats[6:12] = list(edit["moved_target"]) * 3   # the target anchor and its two control points
        ops.set_path_strokes(path, [(kind, floats, closed)] + strokes[1:])
        watch["drag"] = 2
        report["drag2_pressed"] = now()
        panel.press("drag")
        yield until(lambda: panel.job is None, 600, "the second drag's result")
        dump(OUT, "after-drag2.rgba", ops.read_rgba(panel.live))
        dump(OUT, "photo-after-drag2.rgba", pixels(photo))
        report["status_after_drag2"] = panel.status.get_text()
        # 4. undo the second drag
        watch["drag"] = 3
        report["undo_sensitive"] = panel.buttons["undo"].get_sensitive()
        panel.press("undo")
        yield until(lambda: panel.job is None, 300, "the undo's result")
        dump(OUT, "after-undo.rgba", ops.read_rgba(panel.live))
        report["anchor_after_undo"] = handle_anchor(path)
        # 5. apply: one step in GIMP's undo history
        layers_before_apply = len(image.get_layers())
        panel.press("apply")
        yield until(lambda: panel.closed, 30, "the panel to close after Apply")
        applied = panel.applied
        report["applied"] = {"name": applied.get_name(), "rect": list(ops.layer_rect(applied).as_tuple()),
                             "mask": applied.get_mask() is not None,
                             "session": applied.get_parasite("draggan-session") is not None,
                             "layers": [la.get_name() for la in image.get_layers()],
                             "layers_before_apply": layers_before_apply}
        dump(OUT, "applied.rgba", ops.read_rgba(applied))
        # 6. Ctrl+Z in the image window: GIMP's own undo takes back exactly what Apply made
        wid, title, titles = image_window()
        report["image_window"] = {"title": title, "windows": titles}
        if wid:
            xdotool("windowfocus", "--sync", wid)
            time.sleep(0.3)
            xdotool("key", "--clearmodifiers", "ctrl+z")
        yield until(lambda: not applied.is_valid() or len(image.get_layers()) == 1, 20, "Ctrl+Z to undo the Apply")
        time.sleep(0.5)   # a second undo step, had Apply made two, would show now
        report["after_ctrl_z"] = {"layers": [la.get_name() for la in image.get_layers()],
                                  "applied_valid": applied.is_valid()}
        dump(OUT, "photo-end.rgba", pixels(photo))

    def restart():
        yield until(lambda: panel.models is not None, 60, "the backend's models")
        watch["drag"] = 1
        panel.press("drag")
        yield until(lambda: panel.painted >= STOP_AFTER or panel.job is None, 600, "previews of the drag")
        report["painted_before_kill"] = panel.painted
        open(os.path.join(OUT, "kill-now"), "w").close()
        yield until(lambda: panel.job is None, 120, "the panel to notice the backend's death")
        report["lost"] = {"status": panel.status.get_text(), "layer": sha(ops.read_rgba(panel.live)),
                          "last_preview": [e for e in events if e["event"] == "preview"][-1]["layer"],
                          "session": panel.session is not None, "drag_sensitive": panel.buttons["drag"].get_sensitive(),
                          "errors": [e["message"] for e in events if e["event"] == "error"]}
        yield until(lambda: os.path.exists(os.path.join(OUT, "restarted")), 120, "the backend to come back")
        watch["drag"] = 2
        mark = len(events)
        panel.press("drag")
        yield until(lambda: panel.job is None, 600, "the drag on the new backend")
        report["again"] = [{k: v for k, v in e.items() if k != "layer"} for e in events[mark:]
                           if e["event"] in ("result", "error")]
        panel.press("close")
        yield until(lambda: panel.closed, 30, "the panel to close")
        report["layers_after_close"] = [la.get_name() for la in image.get_layers()]

    scenario = Scenario(steps() if SCENARIO == "session" else restart(), report)
    GLib.timeout_add(50, scenario.tick)
    Gtk.main()
    if scenario.error is not None:
        raise scenario.error
    if SCENARIO == "session":
        procedure_runs(proc, image, photo, report)
    report["photo_unchanged"] = sha(pixels(photo)) == sha(photo_before)
    display.delete()
