"""The plug-in in the REAL GIMP 3 against the REAL backend (tiny model, CPU, 127.0.0.1).

One GIMP run (tests/gimp/driver.py) does the edit, drag again, an odd-anchor path and a dead
backend; the tests below assert on what it exported, on the backend's job log and on the
registered procedure (menu, arguments). The plug-in is staged with
`install.py --plugin-only --gimp-dir <tmp>/plug-ins` exactly as for users.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from testkit.gimp_run import stage_plugin

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gimp_plugin" / "draggan"))
from draggan_core import geometry  # noqa: E402

W, H = 96, 72
PHOTO = geometry.Rect(10, 6, 80, 60)          # the driver's "Photo" layer
SELECTION = geometry.Rect(34, 24, 30, 22)
HANDLES = [(40.0, 30.0), (55.0, 40.0)]
TARGETS = [(46.0, 32.0), (58.0, 36.0)]
MODEL = (32, 32)


def source_pixel(x: int, y: int) -> tuple[int, int, int]:
    return ((x * 7) % 256, (y * 11) % 256, ((x * y) // 3) % 256)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def drive(gimp3_run, backend, tmp_path_factory):
    """One GIMP run of driver.py; returns (report, io folder, jobs logged by the backend, seconds)."""
    endpoint, folder = backend
    tmp = tmp_path_factory.mktemp("gimp")
    plugins = stage_plugin(tmp / "plug-ins")
    io = tmp / "io"
    io.mkdir()
    rgb = bytes(c for y in range(H) for x in range(W) for c in source_pixel(x, y))
    Image.frombytes("RGB", (W, H), rgb).save(io / "input.png")
    started = time.monotonic()
    r = subprocess.run(["bash", str(gimp3_run), "--timeout", "400", "--plugins", str(plugins),
                        "--bind", f"{io}:/mnt/io", "--env", "OUT=/mnt/io", "--env", f"ENDPOINT={endpoint}",
                        "--env", f"DEAD_ENDPOINT=tcp://127.0.0.1:{_free_port()}",
                        "--batch-file", str(REPO / "tests" / "gimp" / "driver.py")],
                       capture_output=True, text=True, timeout=480)
    seconds = time.monotonic() - started
    assert r.returncode == 0, f"GIMP exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    report = json.loads((io / "report.json").read_text())
    assert report["ok"], report.get("exception")
    jobs_file = folder / "jobs.jsonl"
    jobs = [json.loads(line) for line in jobs_file.read_text().splitlines()] if jobs_file.exists() else []
    print(f"driver GIMP run: {seconds:.1f} s (driver {report['driver_seconds']} s); procedure calls "
          f"(edit, again, odd, down): {report['call_seconds']} s; "
          f"backend jobs: {[(j['type'], j['seconds'], j['phase_started']) for j in jobs]}")
    return report, io, jobs


def _rgba(path: Path) -> bytes:
    return path.read_bytes()


def test_edit_adds_one_masked_layer_at_the_crop_above_the_photo(drive) -> None:
    report, _io, _jobs = drive
    edit = report["edit"]
    assert edit["status"] == "success", edit["error"]
    before = report["layers_before"]
    after = edit["layers"]
    assert len(after) == len(before) + 1
    new = after[0]
    assert edit["result_position"] + 1 == edit["photo_position"]       # directly above Photo
    expected_crop = geometry.plan_crop(HANDLES + TARGETS, PHOTO, MODEL, geometry.CROP_AUTO, SELECTION)
    assert new["offsets"] == [expected_crop.x, expected_crop.y]
    assert new["size"] == [expected_crop.w, expected_crop.h]
    assert new["mask"] is True
    session = new["session"]
    assert session["crop"] == list(expected_crop.as_tuple()) and session["model"] == "tiny"
    assert new["name"].startswith("Photo (DragGAN")
    assert after[1:] == before
    # the user's selection is as it was
    assert edit["selection_after"] == [True, SELECTION.x, SELECTION.y, SELECTION.x2, SELECTION.y2]


def test_original_layer_is_byte_identical(drive) -> None:
    _report, io, _jobs = drive
    want = bytes(c for y in range(PHOTO.y, PHOTO.y2) for x in range(PHOTO.x, PHOTO.x2)
                 for c in (*source_pixel(x, y), 255))
    assert _rgba(io / "photo-before.rgba") == want
    assert _rgba(io / "photo-after.rgba") == want
    assert _rgba(io / "photo-end.rgba") == want      # after drag again, the odd path, the dead backend


def test_composite_changes_only_inside_the_mask(drive) -> None:
    report, io, _jobs = drive
    x0, y0 = report["edit"]["layers"][0]["offsets"]
    cw, ch = report["edit"]["layers"][0]["size"]
    mask = (io / "result-mask.y").read_bytes()
    assert len(mask) == cw * ch
    before = Image.open(io / "composite-before.png").convert("RGB")
    after = Image.open(io / "composite-after.png").convert("RGB")
    assert before.size == after.size == (W, H)
    b, a = before.load(), after.load()
    outside_same = inside_changed = inside = 0
    for y in range(H):
        for x in range(W):
            m = mask[(y - y0) * cw + (x - x0)] if x0 <= x < x0 + cw and y0 <= y < y0 + ch else 0
            if m == 0:
                assert a[x, y] == b[x, y], (x, y)
                outside_same += 1
            elif m == 255:
                inside += 1
                inside_changed += a[x, y] != b[x, y]
    # the mask covers the selection (grown), not the whole crop, and the edit shows there
    sel_px = SELECTION.w * SELECTION.h
    assert sel_px * 0.5 <= inside <= cw * ch * 0.9, (inside, sel_px, cw * ch)
    assert inside_changed >= 0.9 * inside
    assert outside_same >= W * H - cw * ch


def test_backend_got_the_crop_s_own_pixels_points_and_inverted_once(drive) -> None:
    report, _io, jobs = drive
    crop = geometry.Rect(*report["edit"]["layers"][0]["session"]["crop"])
    assert [j["type"] for j in jobs] == ["edit", "continue"], jobs
    first = jobs[0]
    assert first["outcome"] == "result" and "inversion" in first["phases"] and "drag" in first["phases"]
    want = geometry.to_sent_points(HANDLES, crop, (crop.w, crop.h))    # protocol 4: the crop's own pixels
    assert first["handles"] == [list(p) for p in want] and first["image_size"] == [crop.w, crop.h]
    assert first["mask"] is True


def test_drag_again_continues_the_session_without_inverting(drive) -> None:
    report, _io, jobs = drive
    again = report["again"]
    assert again["status"] == "success", again["error"]
    assert len(again["layers"]) == len(report["edit"]["layers"]) + 1
    newest, first = again["layers"][0], again["layers"][1]
    assert "continued" in newest["name"]
    assert newest["offsets"] == first["offsets"] and newest["size"] == first["size"] and newest["mask"]
    assert newest["session"]["session_id"] == first["session"]["session_id"]
    cont = jobs[1]
    assert cont["type"] == "continue" and cont["outcome"] == "result"
    assert "inversion" not in cont["phases"] and "drag" in cont["phases"]
    assert cont["session_id"] == first["session"]["session_id"]


def test_odd_anchor_path_is_a_clear_error_and_adds_nothing(drive) -> None:
    report, _io, _jobs = drive
    odd = report["odd"]
    assert odd["status"] == "calling-error" and odd["new_layers"] == 0
    assert "stroke 1 of path 'odd' has 3 anchors, an odd number" in odd["error"]
    assert "Paths tool" in odd["error"]


def test_backend_down_is_a_clear_error_and_adds_nothing(drive) -> None:
    report, _io, _jobs = drive
    down = report["down"]
    assert down["status"] == "execution-error" and down["new_layers"] == 0
    assert "no answer from the backend at tcp://127.0.0.1:" in down["error"]
    assert "draggan-backend serve" in down["error"]


def test_registered_under_filters_with_the_documented_arguments(drive) -> None:
    from draggan_core import options

    proc = drive[0]["procedure"]
    assert proc["menu"] == ["<Image>/Filters/Generic"] and proc["label"] == "_DragGAN (Drag Points)..."
    assert proc["arguments"] == ["run-mode", "image", "drawables"] + [a.name for a in options.ARGUMENTS]
    assert proc["image_types"] == "RGB*, GRAY*"
