"""The DragGAN panel in the REAL GIMP 3, with its user interface on a virtual display, against the REAL
backend with the built-in model and its real inversion (tests/gimp/panel_driver.py presses the panel's
buttons; scripts/gimp_tools/gui-bin puts the GIMP with its windows where the kit starts gimp-console).

One session on a 256 px procedural face: Drag (inverts; the result layer's pixels change with every
preview and the path's handle follows the tracked point), Stop (the backend ends the job and its
result stays on the layer), a moved target and Drag again (continues without inverting), Undo drag
(the earlier pixels, exactly), Apply (one step: Ctrl+Z in the image window takes it back). The user's
layer never changes. The figures the benchmark reports are printed (no timing is asserted).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testkit import gimp_run, live_panel

from ..conftest import gimp_unavailable

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SIZE = live_panel.SIZE
MAX_STEPS = 60
STOP_AFTER = 6


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The real backend with the presets' own inversion: the built-in model as served."""
    folder = tmp_path_factory.mktemp("backend")
    with live_panel.backend(folder) as endpoint:
        yield endpoint, folder


@pytest.fixture(scope="module")
def panel_run(gimp3_run, served, tmp_path_factory):
    endpoint, backend_dir = served
    picture, edit = live_panel.face_and_drag()
    io = tmp_path_factory.mktemp("gimp-panel")
    Image.fromarray(picture).save(io / "input.png")
    (io / "edit.json").write_text(json.dumps(edit))
    try:
        root_args = live_panel.gui_root_args(gimp3_run)   # a chroot with X, built when the kit's has none
    except RuntimeError as exc:
        gimp_unavailable(str(exc))
    report = live_panel.run_panel_driver(gimp3_run, endpoint, io, MAX_STEPS, STOP_AFTER, root_args=root_args)
    jobs = [json.loads(line) for line in (backend_dir / "jobs.jsonl").read_text().splitlines()]
    return report, jobs, io, picture, edit


def dumped(io: Path, name: str) -> bytes:
    return (io / name).read_bytes()


def test_the_panel_is_a_second_procedure_interactive_only(panel_run) -> None:
    report, *_ = panel_run
    assert report["panel_procedure"] == {"menu": ["<Image>/Filters/Generic"], "label": "DragGAN _Panel..."}
    assert report["interactive"]["status"] == "cancel" and report["interactive"]["window"]  # opened, then Close
    assert report["noninteractive"]["status"] == "calling-error"
    assert "python-fu-draggan," in report["noninteractive"]["error"]


def test_a_drag_shows_on_the_canvas_and_stop_keeps_it(panel_run) -> None:
    report, jobs, io, picture, edit = panel_run
    events = report["events"]
    first = [e for e in events if e["event"] == "preview" and e["drag"] == 1]
    # the result layer's pixels changed with the previews (at least 5 different pictures in one drag)
    assert len({e["layer"] for e in first}) >= 5, first
    # the path's handle anchor follows the tracked point, toward its target
    target = edit["targets"][0]
    start = math.dist(edit["handles"][0], target)
    assert min(math.dist(e["anchor"], target) for e in first) < start
    # Stop: the backend ended the job with the drag so far, and that is what the layer holds
    job = jobs[0]
    assert job["type"] == "edit" and "inversion" in job["phases"]
    assert job["outcome"] == "result" and job["stopped"] and job["stop_requested"]
    assert job["steps"] < MAX_STEPS
    assert hashlib.sha256(dumped(io, "after-drag1.rgba")).hexdigest() == job["rgba_sha256"]
    stopped = next(e for e in events if e["event"] == "result" and e["drag"] == 1)
    assert stopped["stopped"] and stopped["steps"] == job["steps"] and stopped["rect"] == [0, 0, SIZE, SIZE]
    assert report["after_drag1"]["mask"] and report["after_drag1"]["selected"] == ["Photo"]


def test_drag_again_continues_without_inverting_and_undo_restores_the_pixels(panel_run) -> None:
    report, jobs, io, picture, edit = panel_run
    again = jobs[1]
    assert again["type"] == "continue" and "inversion" not in again["phases"] and again["outcome"] == "result"
    assert any("reusing the previous drag's inversion" in t for t in again["texts"])   # the backend says so
    assert "no re-inversion" in report["status_after_drag2"]
    second = [e for e in report["events"] if e["event"] == "preview" and e["drag"] == 2]
    assert len({e["layer"] for e in second}) >= 5
    moved = edit["moved_target"]
    assert math.dist(second[-1]["anchor"], moved) < math.dist(second[0]["anchor"], moved)
    assert dumped(io, "after-drag2.rgba") != dumped(io, "after-drag1.rgba")
    assert report["undo_sensitive"] and jobs[2]["type"] == "undo"
    assert dumped(io, "after-undo.rgba") == dumped(io, "after-drag1.rgba")     # exactly the earlier pixels
    stopped = next(e for e in report["events"] if e["event"] == "result" and e["drag"] == 1)
    assert report["anchor_after_undo"] == stopped["anchor"]                    # and the handle where it was


def test_apply_is_one_undo_step_and_the_users_layer_never_changes(panel_run) -> None:
    report, jobs, io, picture, edit = panel_run
    applied = report["applied"]
    assert applied["layers"] == [applied["name"], "Photo"] and applied["mask"] and applied["session"]
    assert dumped(io, "applied.rgba") == dumped(io, "after-undo.rgba")
    assert report["after_ctrl_z"] == {"layers": ["Photo"], "applied_valid": False}   # one Ctrl+Z: all of it
    photo = dumped(io, "photo-before.rgba")
    assert np.array_equal(np.frombuffer(photo, np.uint8).reshape(SIZE, SIZE, 4)[..., :3], picture)
    for name in ("photo-after-drag1.rgba", "photo-after-drag2.rgba", "photo-end.rgba"):
        assert dumped(io, name) == photo, name
    assert report["photo_unchanged"]


def test_print_the_live_figures(panel_run) -> None:
    report, jobs, *_ = panel_run
    for line in live_panel.figures(report, jobs):
        print(line)


def test_a_backend_that_dies_mid_drag_leaves_the_last_preview_and_says_so(gimp3_run, tmp_path) -> None:
    """The backend is killed during a drag and a new one starts on its port (a crash and a restart): the
    panel keeps the layer at its last preview with a message, and the next Drag inverts anew there."""
    import signal
    import threading

    import zmq

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.close(0)
    first_dir, second_dir, io = tmp_path / "backend-1", tmp_path / "backend-2", tmp_path / "io"
    for folder in (first_dir, second_dir, io):
        folder.mkdir()
    picture, edit = live_panel.face_and_drag()
    Image.fromarray(picture).save(io / "input.png")
    (io / "edit.json").write_text(json.dumps(edit))
    # a quick inversion (2 steps): this test is about the connection, not the picture
    first, endpoint = gimp_run.start_backend(first_dir, inversion_steps=2, port=port)
    procs = [first]
    done = threading.Event()

    def crash_and_restart() -> None:
        while not done.is_set() and not (io / "kill-now").exists():
            time.sleep(0.1)
        if done.is_set():
            return
        first.send_signal(signal.SIGKILL)       # no goodbye: the link just goes quiet
        first.wait(10)
        second, _ = gimp_run.start_backend(second_dir, inversion_steps=2, port=port)
        procs.append(second)
        (io / "restarted").touch()

    watcher = threading.Thread(target=crash_and_restart, daemon=True)
    watcher.start()
    try:
        try:
            root_args = live_panel.gui_root_args(gimp3_run)
        except RuntimeError as exc:
            gimp_unavailable(str(exc))
        report = live_panel.run_panel_driver(gimp3_run, endpoint, io, max_steps=400, stop_after=4,
                                             root_args=root_args, scenario="restart")
    finally:
        done.set()
        watcher.join(60)
        for proc in procs:
            gimp_run.end_backend(proc)
    lost = report["lost"]
    print("the panel said:", lost["status"])
    assert report["painted_before_kill"] >= 4
    assert lost["layer"] == lost["last_preview"]               # the layer stays at its last preview
    assert "lost the backend during the drag" in lost["status"] and "keeps the last picture" in lost["status"]
    assert lost["errors"] and not lost["session"] and lost["drag_sensitive"]
    again = report["again"]
    assert again and again[-1]["event"] == "result" and again[-1]["inverted"], again   # inverted anew there
    jobs = [json.loads(line) for line in (second_dir / "jobs.jsonl").read_text().splitlines()]
    assert [j["type"] for j in jobs] == ["edit"] and "inversion" in jobs[0]["phases"]
    assert report["layers_after_close"] == ["Photo"] and report["photo_unchanged"]
