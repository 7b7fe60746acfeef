"""Face alignment over REAL ZeroMQ: a server whose tiny model is flagged ``alignment: ffhq`` takes a
native crop, aligns the face, edits in the model's frame and answers RGBA in the crop's frame (alpha =
exactly the produced area); drag again reuses the transform; no face -> the unaligned box with a clear
note; ``auto`` is ``none`` for a model without alignment (the whole crop scaled to the model, protocol 4).

The oracle landmarks (training/faces.py's exact keypoints) stand in for MTCNN where the geometry is
checked; one test runs the real MTCNN on scikit-image's astronaut, tilted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alignment import align as A
from backend.server import Server
from draggan_wire import protocol as P
from draggan_wire.client import Client
from draggan_wire.protocol import ErrorCode
from testkit import canvas
from tests.backend.conftest import FAST, make_tiny_generator, real_runner, start_server
from training import faces

TOKEN = "ab" * 32  # one identity for every connection: drag again reaches the first edit's session
CROP = (300, 260)  # the native crop (x then y, pixels): the face's quad runs over its left edge


@pytest.fixture(scope="module")
def tilted() -> tuple[np.ndarray, np.ndarray]:
    """A procedural face rotated by 35 deg and halved near the left edge of a 300x260 crop, and its
    16 exact keypoints in the crop (pixel centres)."""
    img, kp = faces.render(faces.sample_params(np.random.default_rng(11), 1)[0], 256)
    m = canvas.similarity(35.0, 0.5, (50.0, 150.0), (127.5, 127.5))
    return canvas.place(img, m, CROP), canvas.apply(m, kp)


class Oracle:
    """A landmark function returning the exact face (or none), counting its calls."""

    def __init__(self, kp: np.ndarray) -> None:
        self.kp = kp
        self.calls = 0
        self.faces = True

    def __call__(self, image: np.ndarray) -> list[A.FaceLandmarks]:
        self.calls += 1
        return [A.keypoints_to_landmarks(self.kp)] if self.faces else []


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tilted) -> Iterator[tuple[Server, Oracle]]:
    path = make_tiny_generator(tmp_path_factory.mktemp("models") / "tiny.pt")
    oracle = Oracle(tilted[1])
    runner = real_runner(path, alignments={"tinyface": "ffhq", "tinydrawn": "faces"}, landmarks=oracle)
    runner.pool.extra["tinyface"] = Path(path)   # the same tiny file, flagged as an FFHQ-aligned model
    runner.pool.extra["tinydrawn"] = Path(path)  # ... and as a model of the procedural faces
    server = start_server(runner)
    yield server, oracle
    server.stop()


def image(a: np.ndarray) -> P.Image:
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return P.Image(a.shape[1], a.shape[0], a.shape[2] if a.ndim == 3 else 1, a.tobytes())


def rgba(result: P.Result) -> np.ndarray:
    return np.frombuffer(result.image.data, np.uint8).reshape(result.image.height, result.image.width, 4)


def run(server: Server, request: Any) -> tuple[P.Result, list[str]]:
    texts: list[str] = []
    with Client(server.endpoint, timeout_s=120, token=TOKEN) as client:
        result = client.run(request, on_progress=lambda m: texts.append(m.text))
    return result, texts


def expected_alignment(kp: np.ndarray, side: int = 32) -> A.Alignment:
    return A.quad_transform(A.ffhq_quad(A.keypoints_to_landmarks(kp)), side, side)


def test_welcome_says_which_models_align(served) -> None:
    server, _ = served
    with Client(server.endpoint, timeout_s=20) as client:
        entries = {m.name: m for m in client.hello().models}
    assert client.welcome is not None and client.welcome.protocol == P.PROTOCOL_VERSION == 4
    assert entries["tinyface"].alignment == "ffhq" and entries["tiny"].alignment == "none"
    assert entries["tinydrawn"].alignment == "faces"


def test_faces_kind_aligns_onto_the_average_face_over_the_wire(served, tilted) -> None:
    # "faces": the oracle's face refined by the keypoint detector, mapped onto the procedural average
    # face (a smaller quad than the whole frame: more of the crop is produced than with "ffhq")
    server, _ = served
    crop, kp = tilted
    handles, targets = [tuple(map(float, kp[4]))], [(float(kp[4][0]) + 6.0, float(kp[4][1]) - 3.0)]
    drawn, _ = run(server, P.Edit(model="tinydrawn", handles=handles, targets=targets, image=image(crop),
                                  params=FAST, align="auto"))
    face, _ = run(server, P.Edit(model="tinyface", handles=handles, targets=targets, image=image(crop),
                                 params=FAST, align="auto"))
    assert drawn.frame == "crop" and drawn.alignment == "faces" and "face aligned" in drawn.note
    alpha_drawn, alpha_face = rgba(drawn)[..., 3], rgba(face)[..., 3]
    assert set(np.unique(alpha_drawn)) <= {0, 255}
    assert (alpha_drawn == 255).sum() > 1.2 * (alpha_face == 255).sum()


def test_aligned_edit_native_crop_exact_paste_back_and_drag_again(served, tilted) -> None:
    server, oracle = served
    crop, kp = tilted
    handles = [tuple(map(float, kp[4]))]            # an eye centre
    targets = [(float(kp[4][0]) + 6.0, float(kp[4][1]) - 3.0)]
    mask = np.zeros((CROP[1], CROP[0]), np.uint8)
    mask[60:240, 0:200] = 255
    calls = oracle.calls
    result, texts = run(server, P.Edit(model="tinyface", handles=handles, targets=targets, image=image(crop),
                                       mask=image(mask), params=FAST, align="auto"))
    assert oracle.calls == calls + 1
    assert result.frame == "crop" and result.alignment == "ffhq" and "face aligned" in result.note
    assert any("face aligned" in t for t in texts)
    al = expected_alignment(kp)
    produced = al.produced_area(*CROP)
    ys, xs = np.nonzero(produced)
    x0, y0 = int(xs.min()), int(ys.min())
    layer = rgba(result)
    assert result.offset == (x0, y0) == (0, y0)   # the quad runs over the left edge: cut there
    assert layer.shape[:2] == (int(ys.max()) + 1 - y0, int(xs.max()) + 1 - x0)
    # alpha is exactly the produced area (crop pixels whose centre lies in the model frame); the
    # padded part of the model frame (left of the crop) maps to no crop pixel at all
    box = produced[y0:y0 + layer.shape[0], x0:x0 + layer.shape[1]]
    np.testing.assert_array_equal(layer[..., 3] == 255, box)
    np.testing.assert_array_equal(layer[..., 3][~box], 0)
    assert (al.model_quad()[:, 0] < -0.5).any()   # the model frame really runs over the crop's edge (padded)
    # points come back in crop pixels, near where the drag started (4 steps of a random model)
    assert np.hypot(*(np.array(result.points[0]) - np.array(handles[0]))) < 8 * al.scale

    texts_again: list[str] = []
    with Client(server.endpoint, timeout_s=120, token=TOKEN) as client:
        again = client.run(P.Continue(session_id=result.session_id, handles=[result.points[0]],
                                      targets=targets, mask=image(mask), params=FAST),
                           on_progress=lambda m: texts_again.append(m.text))
    assert oracle.calls == calls + 1                  # drag again: no detection, the stored transform
    assert any("reusing the previous drag's face alignment" in t for t in texts_again)
    assert again.frame == "crop" and again.offset == result.offset and again.alignment == "ffhq"
    np.testing.assert_array_equal(rgba(again)[..., 3], layer[..., 3])


def test_no_face_edits_the_unaligned_box_and_says_so(served, tilted) -> None:
    server, oracle = served
    crop, kp = tilted
    oracle.faces = False
    try:
        result, texts = run(server, P.Edit(model="tinyface", handles=[(150.0, 120.0)], targets=[(160.0, 118.0)],
                                           image=image(crop), params=FAST, align="auto"))
    finally:
        oracle.faces = True
    assert result.frame == "crop" and result.alignment == "none"
    assert "no face found" in result.note and any("no face found: editing without alignment" in t for t in texts)
    layer = rgba(result)
    # the box around the points: model-shaped (square), inside the crop, every pixel produced
    assert layer.shape[0] == layer.shape[1] and (layer[..., 3] == 255).all()
    x, y = result.offset
    assert x <= 150 <= x + layer.shape[1] and y <= 120 <= y + layer.shape[0]
    assert x + layer.shape[1] <= CROP[0] and y + layer.shape[0] <= CROP[1]


def test_align_off_and_models_without_alignment_scale_the_whole_crop(served) -> None:
    server, oracle = served
    calls = oracle.calls
    photo = P.Image(32, 32, 3, np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8).tobytes())
    # auto on a model without an alignment entry is none: the whole crop is the model's frame
    result, _ = run(server, P.Edit(model="tiny", handles=[(10.0, 12.0)], targets=[(16.0, 12.0)], image=photo,
                                   params=FAST, align="auto", result="model"))
    assert result.frame == "crop" and (result.image.width, result.image.height) == (32, 32)
    assert result.image.channels == 4 and result.offset == (0, 0) and (rgba(result)[..., 3] == 255).all()
    # align off on the face model: the native crop, scaled as a whole, answered at its own size
    big = P.Image(CROP[0], CROP[1], 3, bytes(CROP[0] * CROP[1] * 3))
    result, _ = run(server, P.Edit(model="tinyface", handles=[(10.0, 12.0)], targets=[(16.0, 12.0)], image=big,
                                   params=FAST, align="off"))
    assert result.frame == "crop" and result.alignment == "none" and result.offset == (0, 0)
    assert (result.image.width, result.image.height) == CROP and (rgba(result)[..., 3] == 255).all()
    assert oracle.calls == calls   # no detection on either path


@pytest.mark.parametrize("old", [2, 3])
def test_old_protocol_versions_get_a_typed_error(served, old: int) -> None:
    """A protocol-2 or -3 client's hello and edit get version_mismatch (in a v4 header, which the old
    client reports as a version mismatch too: install the same release on both sides)."""
    import json

    import zmq

    server, _ = served
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        for kind, fields in (("hello", {"client": "old", "protocol": old}),
                             ("edit", {"model": "tiny", "handles": [[1, 1]], "targets": [[2, 2]], "image_id": "x"})):
            header = {"v": old, "type": kind, "id": "h1", "token": "0" * 64, "fields": fields}
            sock.send_multipart([json.dumps(header).encode()])
            assert sock.poll(10000)
            env = P.decode(sock.recv_multipart(), allowed=P.REPLY_TYPES)
            assert isinstance(env.message, P.Error) and env.message.code == ErrorCode.VERSION_MISMATCH
            assert f"protocol version {old}" in env.message.message and "install.py" in env.message.message
    finally:
        sock.close(0)


def test_real_mtcnn_aligns_a_tilted_astronaut(served) -> None:
    """The real detector on a real photo: scikit-image's astronaut rotated by 25 degrees."""
    from alignment import landmarks as L

    try:
        L.weights_dir()
    except L.LandmarksUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    from PIL import Image as PILImage
    from skimage import data as skdata

    server, _ = served
    photo = np.asarray(PILImage.fromarray(skdata.astronaut()).rotate(25, resample=PILImage.Resampling.BICUBIC))
    crop = np.ascontiguousarray(photo)   # the whole 512x512 photo is the native crop
    runner = server.runner
    saved = runner.landmarks
    runner.landmarks = None   # MTCNN (alignment/landmarks.py)
    try:
        result, texts = run(server, P.Edit(model="tinyface", handles=[(171.0, 152.0)], targets=[(176.0, 152.0)],
                                           image=image(crop), params=FAST, align="auto"))
    finally:
        runner.landmarks = saved
    assert result.alignment == "ffhq" and any("face aligned (rotated" in t for t in texts)
    layer = rgba(result)
    assert 0 < (layer[..., 3] == 255).mean() < 1   # a rotated square's bounding box: corners not produced
