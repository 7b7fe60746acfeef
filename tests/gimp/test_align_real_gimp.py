"""Face alignment end to end in the REAL GIMP 3 against the REAL backend (protocol 3): a tilted face
photo (scikit-image's astronaut rotated by 20 degrees), a 'tinyface' model flagged ``alignment:
ffhq`` (the tiny test generator; the real MTCNN finds the face), the face's quad running over the
layer's left and top edges. The result layer is placed exactly (GIMP holds byte for byte the RGBA the
server produced, at the region's offset plus the server's offset), the original is untouched, and
the layer mask covers only the produced area."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testkit.gimp_run import stage_plugin

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PHOTO = (120, 40, 260, 260)   # the driver's Photo layer: x, y, w, h (image pixels)
HANDLE = (180.5, 147.0)


def _tilted_astronaut() -> np.ndarray:
    from skimage import data as skdata

    return np.asarray(Image.fromarray(skdata.astronaut()).rotate(20, resample=Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def drive(gimp3_run, backend, tmp_path_factory):
    """One GIMP run of align_driver.py -> (report, io folder, the backend's job log)."""
    from alignment import landmarks

    try:
        landmarks.weights_dir()   # the backend's MTCNN: without it the edit would take the unaligned path
    except landmarks.LandmarksUnavailable as exc:
        pytest.fail(f"{exc} (scripts/check.sh installs it for the tests)")
    endpoint, folder = backend
    tmp = tmp_path_factory.mktemp("gimp-align")
    plugins = stage_plugin(tmp / "plug-ins")
    io = tmp / "io"
    io.mkdir()
    Image.fromarray(_tilted_astronaut()).save(io / "input.png")
    started = time.monotonic()
    r = subprocess.run(["bash", str(gimp3_run), "--timeout", "400", "--plugins", str(plugins),
                        "--bind", f"{io}:/mnt/io", "--env", "OUT=/mnt/io", "--env", f"ENDPOINT={endpoint}",
                        "--batch-file", str(REPO / "tests" / "gimp" / "align_driver.py")],
                       capture_output=True, text=True, timeout=480)
    seconds = time.monotonic() - started
    assert r.returncode == 0, f"GIMP exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    report = json.loads((io / "align-report.json").read_text())
    assert report["ok"], report.get("exception")
    jobs_file = folder / "jobs.jsonl"
    jobs = [json.loads(line) for line in jobs_file.read_text().splitlines()] if jobs_file.exists() else []
    print(f"aligned GIMP run: {seconds:.1f} s (edit call {report['edit'].get('seconds')} s); backend jobs: "
          f"{[(j['type'], j['seconds']) for j in jobs]}")
    return report, io, jobs


def test_the_face_was_aligned_and_the_layer_placed_exactly(drive) -> None:
    report, io, jobs = drive
    edit = report["edit"]
    assert edit["status"] == "success", edit["error"]
    assert "align" in report["arguments"]
    assert [j["type"] for j in jobs][:1] == ["edit"]
    job = jobs[0]
    assert job["outcome"] == "result" and job["frame"] == "crop" and job["alignment"] == "ffhq"
    assert any("face aligned (rotated" in t for t in job["texts"]), job["texts"]
    # the native region was the whole layer (under 2048 px), handles in its pixel-centre coordinates
    assert job["handles"] == [[HANDLE[0] - PHOTO[0] - 0.5, HANDLE[1] - PHOTO[1] - 0.5]]
    new, photo = edit["layers"][0], edit["layers"][1]
    assert photo["name"] == "Photo" and edit["result_position"] + 1 == edit["photo_position"]
    # placed exactly: at the region's origin plus the server's offset, the server's size, its bytes
    assert new["offsets"] == [PHOTO[0] + job["offset"][0], PHOTO[1] + job["offset"][1]]
    assert new["size"] == job["size"] and new["mask"]
    result = (io / "result.rgba").read_bytes()
    assert hashlib.sha256(result).hexdigest() == job["rgba_sha256"]
    session = new["session"]
    assert session["v"] == 4 and session["frame"] == "crop" and session["region"] == list(PHOTO)
    assert session["crop"] == new["offsets"] + new["size"]


def test_the_produced_area_is_the_face_frame_cut_at_the_layer_edge(drive) -> None:
    """Independently of the server's answer: MTCNN on the same pixels gives the transform whose
    produced area the result's alpha must be (up to a boundary pixel or two: float order)."""
    from alignment import align as A
    from alignment.landmarks import detect_faces

    report, io, jobs = drive
    new = report["edit"]["layers"][0]
    w, h = new["size"]
    rgba = np.frombuffer((io / "result.rgba").read_bytes(), np.uint8).reshape(h, w, 4)
    x, y, pw, ph = PHOTO
    crop = _tilted_astronaut()[y:y + ph, x:x + pw]
    face = A.choose_face(detect_faces(crop), [[HANDLE[0] - x - 0.5, HANDLE[1] - y - 0.5]])
    assert face is not None
    al = A.quad_transform(A.ffhq_quad(face), 32, 32)
    assert (al.model_quad()[:, 0] < -0.5).any() and (al.model_quad()[:, 1] < -0.5).any()   # padded: left, top
    ox, oy = new["offsets"][0] - x, new["offsets"][1] - y
    produced = al.produced_area(pw, ph)[oy:oy + h, ox:ox + w]
    assert (ox, oy) == (0, 0)          # the frame runs over the layer's left and top edges: cut there
    differ = int(((rgba[..., 3] == 255) != produced).sum())
    assert differ <= 4, differ
    assert set(np.unique(rgba[..., 3])) == {0, 255}
    assert 0.3 < produced.mean() < 0.95   # a rotated square's box: its corners were not produced


def test_original_untouched_and_mask_only_on_the_produced_area(drive) -> None:
    report, io, _jobs = drive
    x, y, pw, ph = PHOTO
    want = np.concatenate([_tilted_astronaut()[y:y + ph, x:x + pw], np.full((ph, pw, 1), 255, np.uint8)], 2)
    for name in ("photo-before.rgba", "photo-after.rgba", "photo-end.rgba"):
        assert (io / name).read_bytes() == want.tobytes(), name
    new = report["edit"]["layers"][0]
    w, h = new["size"]
    alpha = np.frombuffer((io / "result.rgba").read_bytes(), np.uint8).reshape(h, w, 4)[..., 3]
    mask = np.frombuffer((io / "result-mask.y").read_bytes(), np.uint8).reshape(h, w)
    assert (mask[alpha == 0] == 0).all()            # nothing outside the produced area can show
    assert (mask[alpha == 255] > 0).mean() > 0.5    # and most of it does (a feathered border)


def test_drag_again_reuses_the_transform(drive) -> None:
    report, _io, jobs = drive
    again = report["again"]
    assert again["status"] == "success", again["error"]
    newest, first = again["layers"][0], again["layers"][1]
    assert "continued" in newest["name"] and newest["offsets"] == first["offsets"] and newest["size"] == first["size"]
    cont = jobs[1]
    assert cont["type"] == "continue" and cont["outcome"] == "result" and "inversion" not in cont["phases"]
    assert cont["offset"] == jobs[0]["offset"] and cont["size"] == jobs[0]["size"]
    assert any("reusing the previous drag's face alignment" in t for t in cont["texts"])
