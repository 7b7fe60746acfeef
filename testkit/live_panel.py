"""The DragGAN panel's live figures, measured in the REAL GIMP 3 (with its windows, on a virtual display)
against the REAL backend on this machine (loopback, CPU, the built-in faces-128 with its real inversion):

* Drag -> the first preview on the canvas, for a new session (the inversion included) and for a drag
  that continues a session (target <= 1.5 s);
* previews painted per second during a drag (target >= 4 on the default model), and how many the
  panel dropped because a newer one had arrived before GIMP painted the last;
* Stop -> the stopped result on the canvas (the backend's job ends, answers the drag so far, the
  panel paints it).

The same run as tests/gimp/test_panel_real_gimp.py (tests/gimp/panel_driver.py presses the panel's
buttons): a 256 px procedural face, its head dragged left (four handles); Stop after STOP_AFTER
previews; the first target moved and Drag again (a continued session, run to its end); Undo; Apply.
Needs root and the GIMP 3 kit (the tests' gimp3_run; a chroot with Xvfb and xdotool is built beside it
when the kit's own has none). Prints figures only; the load average is printed with them.

    python benchmarks/live_panel.py [--threads 2] [--max-steps 60] [--stop-after 6]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .gimp_run import end_backend, stage_plugin, start_backend

REPO = Path(__file__).resolve().parents[1]
GUI_BIN = REPO / "scripts" / "gimp_tools" / "gui-bin"
GUI_PACKAGES = "xvfb xauth x11-apps xdotool netpbm"
SIZE = 256


def face_and_drag(size: int = SIZE) -> tuple[Any, dict[str, Any]]:
    """A procedural face (uint8 [size, size, 3]) and a drag that takes a while: its head moved left three
    times as far as training/paired.py's head_x case moves it (four handles, about 40 steps); the second
    drag takes the first target half as far again. Points are GIMP's continuous coordinates (the pixel
    centre (x, y) is the point (x + .5, y + .5))."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from training import paired

    case = next(c for c in paired.make_cases(1, 24) if c.parameter == "head_x")
    before, _after = case.render(size)
    handles, targets = case.points(size)
    targets = handles + 3.0 * (targets - handles)
    moved = targets[0] + (targets[0] - handles[0]) * 0.5
    return np.ascontiguousarray(before[..., :3]), {"handles": (handles + 0.5).tolist(),
                                                   "targets": (targets + 0.5).tolist(),
                                                   "moved_target": (moved + 0.5).tolist()}


def gui_root_args(run_sh: Path) -> list[str]:
    """run.sh arguments for a chroot with Xvfb and xdotool: none when the kit's own has them, else
    --root of a second chroot that the kit's setup.sh builds with them ($GIMP3_GUI_ROOT, default
    /opt/gimp3-gui-root). Raises RuntimeError when it cannot be built."""
    probe = subprocess.run(["bash", str(run_sh), "--timeout", "120", "--batch",
                            "import shutil\nassert shutil.which('Xvfb') and shutil.which('xdotool')"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode == 0:
        return []
    root = os.environ.get("GIMP3_GUI_ROOT", "/opt/gimp3-gui-root")
    env = dict(os.environ, GIMP3_ROOT=root, DRAGGAN_GIMP3_ROOT=root, GIMP3_EXTRA_PKGS=GUI_PACKAGES)
    r = subprocess.run(["bash", str(run_sh.parent / "setup.sh")], capture_output=True, text=True, timeout=1800,
                       env=env)
    if r.returncode != 0:
        raise RuntimeError(f"a GIMP 3 chroot with X ({GUI_PACKAGES}) could not be built: {r.stderr[-2000:]}")
    return ["--root", root]


@contextlib.contextmanager
def backend(folder: Path, threads: int = 1, max_seconds: int = 1500) -> Iterator[str]:
    """start_backend as a context: yields the endpoint, ends the backend afterwards."""
    proc, endpoint = start_backend(folder, threads, max_seconds)
    try:
        yield endpoint
    finally:
        end_backend(proc)


def run_panel_driver(run_sh: Path, endpoint: str, io: Path, max_steps: int = 60, stop_after: int = 6,
                     timeout_s: int = 1200, root_args: list[str] | None = None,
                     scenario: str = "session") -> dict[str, Any]:
    """Stage the plug-in into io/plug-ins and run tests/gimp/panel_driver.py in the GIMP with windows
    (io holds input.png and edit.json); its report (raises AssertionError when GIMP or the driver failed)."""
    stage_plugin(io / "plug-ins")
    root_args = gui_root_args(run_sh) if root_args is None else root_args
    r = subprocess.run(["bash", str(run_sh), *root_args, "--timeout", str(timeout_s),
                        "--plugins", str(io / "plug-ins"), "--bind", f"{io}:/mnt/io",
                        "--bind", f"{GUI_BIN}:/usr/local/bin:ro", "--env", "OUT=/mnt/io",
                        "--env", f"ENDPOINT={endpoint}", "--env", f"MAX_STEPS={max_steps}",
                        "--env", f"STOP_AFTER={stop_after}", "--env", f"SCENARIO={scenario}",
                        "--batch-file", str(REPO / "tests" / "gimp" / "panel_driver.py")],
                       capture_output=True, text=True, timeout=timeout_s + 120)
    assert r.returncode == 0, f"GIMP exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    report: dict[str, Any] = json.loads((io / "report.json").read_text())
    assert report["ok"], report.get("exception")
    return report


def figures(report: dict[str, Any], jobs: list[dict[str, Any]]) -> list[str]:
    """The figures of one panel run (the driver's report and the backend's job lines), one per line."""
    events = report["events"]

    def previews(drag: int) -> list[dict[str, Any]]:
        return [e for e in events if e["event"] == "preview" and e.get("drag") == drag]

    def result(drag: int) -> dict[str, Any]:
        return next(e for e in events if e["event"] == "result" and e.get("drag") == drag)

    first, second = previews(1), previews(2)
    lines = []
    if first:
        lines.append("Drag -> first preview on the canvas, new session (inversion included): "
                     f"{first[0]['seconds']:.2f} s")
    if second:
        lines.append(f"Drag -> first preview on the canvas, continuing the session: {second[0]['seconds']:.2f} s "
                     "(target <= 1.5 s)")
    if len(second) > 1:
        span = second[-1]["t"] - second[0]["t"]
        rate = (len(second) - 1) / span if span > 0 else float("nan")
        done = result(2)
        drag_s = next((j["seconds"] for j in jobs if j["type"] == "continue"), math.nan)
        sent = next((j["previews"] for j in jobs if j["type"] == "continue"), 0)
        lines.append(f"previews painted per second during the drag: {rate:.1f} ({len(second)} painted, "
                     f"{done['dropped']} dropped as stale, {sent} sent by the backend in its {drag_s:.1f} s job; "
                     "target >= 4)")
    if "stop_pressed" in report:
        stopped = result(1)
        lines.append("Stop -> the stopped result on the canvas (the job's end): "
                     f"{stopped['t'] - report['stop_pressed']:.2f} s (stopped at step {stopped['steps']})")
    undo = next((e for e in events if e["event"] == "result" and e.get("kind") == "undo"), None)
    if undo is not None:
        lines.append(f"Undo drag -> the earlier picture on the canvas: {undo['seconds']:.2f} s")
    return lines


def load() -> str:
    try:
        one, five, _fifteen = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def kit_run_sh() -> Path:
    """The repository's GIMP 3 kit's run.sh (tests/gimp/kit: it builds the chroot when missing)."""
    return REPO / "tests" / "gimp" / "kit" / "run.sh"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="the backend's torch threads (OMP_NUM_THREADS)")
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--stop-after", type=int, default=6, help="previews painted before Stop in the first drag")
    args = ap.parse_args(argv)
    from PIL import Image

    run_sh = kit_run_sh()
    r = subprocess.run(["bash", str(run_sh.parent / "setup.sh")], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        print(f"the GIMP 3 kit is not ready ({run_sh.parent}/setup.sh exit {r.returncode}):\n{r.stderr[-2000:]}")
        return 2
    picture, edit = face_and_drag()
    with tempfile.TemporaryDirectory(prefix="draggan-live-") as tmp:
        folder, io = Path(tmp) / "backend", Path(tmp) / "io"
        folder.mkdir()
        io.mkdir()
        Image.fromarray(picture).save(io / "input.png")
        (io / "edit.json").write_text(json.dumps(edit))
        print(f"before: {load()}")
        with backend(folder, args.threads) as endpoint:
            report = run_panel_driver(run_sh, endpoint, io, args.max_steps, args.stop_after)
        jobs = [json.loads(line) for line in (folder / "jobs.jsonl").read_text().splitlines()]
    print(f"after: {load()}")
    print(f"faces-128, {SIZE} px picture, CPU backend with {args.threads} thread(s), loopback, GIMP 3 with its "
          "windows on Xvfb")
    for line in figures(report, jobs):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
