"""backend/landmarks.py: our MTCNN with facenet-pytorch's shipped weights (optional: installed with
`pip install --no-deps facenet-pytorch`); measured on scikit-image's astronaut against hand annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backend import align as A
from backend import landmarks as L

DATA = Path(__file__).parent / "data" / "astronaut-landmarks.json"
ORDER = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]


@pytest.fixture(scope="module")
def weights() -> Path:
    try:
        return L.weights_dir()
    except L.LandmarksUnavailable as exc:
        pytest.skip(str(exc))


def test_missing_weights_say_how_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(L.WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(L.LandmarksUnavailable, match="--no-deps facenet-pytorch"):
        L.weights_dir()


def test_strict_loading(weights, tmp_path) -> None:
    net = L.MTCNN().load_shipped(weights)
    assert sum(p.numel() for p in net.parameters()) > 400_000
    state = torch.load(weights / "onet.pt", weights_only=True)
    state.pop("dense6_3.bias")
    for name in ("pnet.pt", "rnet.pt"):
        (tmp_path / name).write_bytes((weights / name).read_bytes())
    torch.save(state, tmp_path / "onet.pt")
    with pytest.raises(RuntimeError, match="dense6_3.bias"):
        L.MTCNN().load_shipped(tmp_path)


def test_astronaut_against_hand_annotation(weights) -> None:
    skdata = pytest.importorskip("skimage.data")
    ann = json.loads(DATA.read_text(encoding="utf-8"))["points"]
    truth = np.array([ann[k] for k in ORDER])
    found = L.detect_faces(skdata.astronaut())
    assert len(found) == 1
    err = np.hypot(*(found[0].array() - truth).T)
    iod = float(np.hypot(*(truth[1] - truth[0])))
    # measured 2.5, 0.7, 2.6, 1.6, 2.2 px (eye distance 44 px); annotation uncertainty ~1.5 px
    assert err.max() < 3.5 and err.mean() / iod < 0.05
    quad_err = np.hypot(*(A.ffhq_quad(found[0]) - A.ffhq_quad(A.FaceLandmarks.from_array(truth))).T)
    assert quad_err.max() < 10.0            # measured 8.9 px of a 177 px quad (docs/alignment.md)


def test_no_face_in_a_flat_picture(weights) -> None:
    assert L.detect_faces(np.full((200, 300, 3), 128, np.uint8)) == []
