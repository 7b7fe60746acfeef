"""The picture's own pixels, moved, in the REAL GIMP 3 against the REAL backend and the built-in model.

A 1024 px procedural face, a drag of its head to the right (the renderer's exact keypoints before and
after the change), a rectangular selection around the head; the plug-in with its defaults (the
picture's detail, the model's own PTI). The result layer comes back at the layer's own resolution, and
its own pixels outside the selection (the region the drag may move) equal the photo's byte for byte.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testkit.gimp_run import end_backend, stage_plugin, start_backend

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SIZE = 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The real backend with the presets' own inversion (no step cap): the built-in model as served."""
    folder = tmp_path_factory.mktemp("backend")
    proc, endpoint = start_backend(folder, inversion_steps=-1, max_seconds=1200)
    try:
        yield endpoint, folder
    finally:
        end_backend(proc)


@pytest.fixture(scope="module")
def detail_run(gimp3_run, served, tmp_path_factory):
    from training import paired

    endpoint, _folder = served
    case = next(c for c in paired.make_cases(1, 24) if c.parameter == "head_x")
    before, _exact = case.render(SIZE)
    handles, targets = case.points(SIZE)
    selection = case.selection(SIZE)
    ys, xs = np.nonzero(selection)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1 - int(xs.min()), int(ys.max()) + 1 - int(ys.min())]
    tmp = tmp_path_factory.mktemp("gimp-detail")
    plugins = stage_plugin(tmp / "plug-ins")
    io = tmp / "io"
    io.mkdir()
    Image.fromarray(before).save(io / "input.png")
    # GIMP's coordinates are continuous: a pixel centre (x, y) is the point (x + 0.5, y + 0.5)
    (io / "edit.json").write_text(json.dumps({"handles": (handles + 0.5).tolist(), "targets": (targets + 0.5).tolist(),
                                              "selection": box}))
    r = subprocess.run(["bash", str(gimp3_run), "--timeout", "900", "--plugins", str(plugins),
                        "--bind", f"{io}:/mnt/io", "--env", "OUT=/mnt/io", "--env", f"ENDPOINT={endpoint}",
                        "--batch-file", str(REPO / "tests" / "gimp" / "detail_driver.py")],
                       capture_output=True, text=True, timeout=1000)
    assert r.returncode == 0, f"GIMP exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    report = json.loads((io / "report.json").read_text())
    assert report["ok"], report.get("exception")
    return report, io, before, box


def test_the_result_layer_has_the_layer_s_resolution_and_its_pixels_outside_the_selection(detail_run) -> None:
    report, io, before, (x, y, w, h) = detail_run
    edit = report["edit"]
    assert edit["status"] == "success", edit["error"]
    new = edit["layers"][0]
    assert new["offsets"] == [0, 0] and new["size"] == [SIZE, SIZE]      # native: the whole 1024 px layer
    assert new["session"]["frame"] == "crop" and new["session"]["model"] == "faces-128"
    result = np.frombuffer((io / "result.rgba").read_bytes(), np.uint8).reshape(SIZE, SIZE, 4)
    photo = np.frombuffer((io / "photo-after.rgba").read_bytes(), np.uint8).reshape(SIZE, SIZE, 4)
    assert (io / "photo-before.rgba").read_bytes() == (io / "photo-after.rgba").read_bytes()   # never written
    assert np.array_equal(photo[..., :3], before)
    outside = np.ones((SIZE, SIZE), bool)
    outside[y:y + h, x:x + w] = False
    assert np.array_equal(result[outside], photo[outside])              # byte for byte, alpha included
    inside = result[~outside, :3].astype(int) - photo[~outside, :3].astype(int)
    assert (np.abs(inside).max(axis=1) > 0).mean() > 0.01               # the drag moved the head
    print(f"detail edit in GIMP: {edit['seconds']} s; {(np.abs(inside).max(axis=1) > 0).mean():.1%} of the "
          "selection changed")
