"""Runs INSIDE the real GIMP 3 with pyzmq hidden from GIMP's Python (tests/gimp/test_relay_real_gimp.py).

Environment: OUT (folder shared with the host), ENDPOINT (the real backend). The plug-in must fall
back to the relay bridge (relay.json names the chroot's /usr/bin/python3, which has pyzmq).

1. edit: the procedure on a layer with a two-stroke path -> a new layer;
2. cancel: a long edit; once the relay bridge runs, the plug-in process is killed as GIMP's cancel
   does; then the bridge must be gone within seconds (the host checks that the backend aborted).

Everything observed goes to OUT/report.json.
"""

import os
import signal
import threading
import time

from gimp_kit import load_image, new_path, reporting, run_procedure

OUT = os.environ["OUT"]
ENDPOINT = os.environ["ENDPOINT"]


def processes(word):
    """PIDs whose command line contains `word` (this run has its own PID namespace)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if word in cmd:
            found.append((int(pid), cmd))
    return found


def call(image, drawable, **extra):
    return run_procedure(image, drawable, ENDPOINT, "tiny", **extra)


with reporting(os.path.join(OUT, "report.json")) as report:
    report["gimp_python_has_zmq"] = None
    try:
        import zmq  # noqa: F401
        report["gimp_python_has_zmq"] = True
    except ImportError as exc:
        report["gimp_python_has_zmq"] = False
        report["zmq_error"] = str(exc)
    image = load_image(OUT)
    photo = image.get_layers()[0]
    new_path(image, "drag points", [[(20.0, 20.0), (26.0, 22.0)], [(40.0, 30.0), (36.0, 26.0)]])
    before = len(image.get_layers())

    # 1. an edit through the relay
    started = time.monotonic()
    status, layer, error = call(image, photo, max_steps=5)
    report["edit"] = {"status": status, "error": error, "new_layers": len(image.get_layers()) - before,
                      "name": layer.get_name() if layer is not None else None,
                      "seconds": round(time.monotonic() - started, 2)}

    # 2. cancel: kill the plug-in (as GIMP's cancel does) while the backend drags
    watch = {"killed": None, "bridge": None}

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            bridges = processes("relay_bridge.py")
            plugins = [p for p in processes("draggan/draggan.py") if "relay_bridge" not in p[1]]
            if bridges and plugins:
                time.sleep(4.0)               # let the job reach the drag
                watch["bridge"] = bridges[0][0]
                os.kill(plugins[0][0], signal.SIGKILL)
                watch["killed"] = time.monotonic()
                return
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    before = len(image.get_layers())
    status, _layer, error = call(image, photo, max_steps=5000, learning_rate=0.00001)
    thread.join(70)
    gone_after = None
    if watch["killed"] is not None:
        while time.monotonic() - watch["killed"] < 15:
            if not processes("relay_bridge.py"):
                gone_after = round(time.monotonic() - watch["killed"], 2)
                break
            time.sleep(0.05)
    report["cancel"] = {"status": status, "error": error, "new_layers": len(image.get_layers()) - before,
                        "killed": watch["killed"] is not None, "bridge_gone_after_s": gone_after,
                        "bridges_left": processes("relay_bridge.py")}
