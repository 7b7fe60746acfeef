"""alignment/aligned_edit.py: a drag on faces-128 in the aligned frame of a tilted face, pasted back
into the native crop exactly (the oracle landmarks of training/faces.py stand in for the detector)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignment import align as A
from alignment import aligned_edit as E
from alignment import landmarks as L
from testkit import canvas
from training import faces


@pytest.fixture(scope="module")
def tilted() -> tuple[np.ndarray, np.ndarray]:
    """A procedural face rotated by 35 deg, scaled by 0.5 and shifted in a 300x260 crop, near its edge
    (the model frame is a little finer than the crop: the round trip keeps the detail)."""
    img, kp = faces.render(faces.sample_params(np.random.default_rng(11), 1)[0], 256)
    m = canvas.similarity(35.0, 0.5, (50.0, 150.0), (127.5, 127.5))
    return canvas.place(img, m, (300, 260)), canvas.apply(m, kp)


def oracle(kp: np.ndarray):
    return lambda image: [A.keypoints_to_landmarks(kp)]


def test_prepare_maps_points_and_pastes_back_exactly(tilted) -> None:
    crop, kp = tilted
    handles, targets = kp[[4]], kp[[4]] + np.array([[6.0, -3.0]])
    prep = E.prepare(crop, 128, 128, handles, targets, landmarks=oracle(kp), template=A.faces_template_quad(128))
    assert prep.image.shape == (128, 128, 3) and "face aligned" in E.progress_text(prep)
    assert prep.alignment.scale < 1.0
    # the aligned face is upright: the eye line is horizontal in the model frame
    eyes = prep.alignment.to_model(kp[[4, 5]])
    assert abs(eyes[0, 1] - eyes[1, 1]) < 2.0 and np.allclose(prep.handles, eyes[:1])
    layer = E.paste_back(prep, prep.image)          # an edit that changes nothing
    produced = prep.alignment.produced_area(300, 260)
    np.testing.assert_array_equal(layer[..., 3] == 255, produced)
    np.testing.assert_array_equal(layer[~produced], 0)
    assert A.psnr_masked(layer[..., :3], crop, produced) >= 35.0
    again = E.prepare(crop, 128, 128, handles, targets, reuse=prep.alignment.to_dict())
    np.testing.assert_array_equal(again.image, prep.image)


def test_no_face_and_point_outside(tilted) -> None:
    crop, kp = tilted
    with pytest.raises(E.NoFace, match="no face found"):
        E.prepare(crop, 128, 128, kp[[4]], kp[[4]], landmarks=lambda image: [])
    with pytest.raises(ValueError, match="outside the aligned face frame"):
        E.prepare(crop, 128, 128, [[299.0, 0.0]], [[299.0, 0.0]], landmarks=oracle(kp))
    assert "without alignment" in E.progress_text(None)


def _big_tilted_face() -> tuple[np.ndarray, A.FaceLandmarks, A.Alignment]:
    """A procedural face rolled 35 deg at 0.6x inside a 384 px canvas; its exact landmarks and the
    exact "faces" alignment (its quad onto faces-128's average face)."""
    img, kp = faces.render(faces.sample_params(np.random.default_rng(77), 1)[0], 256)
    m = canvas.similarity(35.0, 0.6, (200.0, 180.0), (127.5, 127.5))
    truth = A.keypoints_to_landmarks(canvas.apply(m, kp))
    exact = A.quad_transform(A.ffhq_quad(truth), 128, 128, A.faces_template_quad(128))
    return canvas.place(img, m, (384, 384)), truth, exact


def _corner_error(al: A.Alignment, exact: A.Alignment) -> float:
    """Largest distance, in model pixels, between the two alignments' model frames."""
    return float(np.hypot(*(exact.to_model(al.model_quad()) - exact.to_model(exact.model_quad())).T).max())


def test_faces_kind_refines_coarse_landmarks_onto_the_average_face() -> None:
    big, truth, exact = _big_tilted_face()
    coarse = A.FaceLandmarks.from_array(truth.array() + np.random.default_rng(0).uniform(-5, 5, (5, 2)))
    handle = truth.array()[:1]
    plain = E.prepare(big, 128, 128, handle, handle, landmarks=lambda image: [coarse],
                      template=A.faces_template_quad(128))
    refined = E.prepare(big, 128, 128, handle, handle, landmarks=lambda image: [coarse], kind="faces")
    before, after = _corner_error(plain.alignment, exact), _corner_error(refined.alignment, exact)
    assert after < 3.0 and after < 0.5 * before, (before, after)
    # the refined face is what the edit reports using
    assert refined.face is not None and not np.allclose(refined.face.array(), coarse.array())


def test_faces_kind_keeps_the_coarse_face_when_the_refinement_is_noise(monkeypatch) -> None:
    big, truth, exact = _big_tilted_face()
    handle = truth.array()[:1]
    # a predictor that answers far from any face (as the detector may on a photo): MTCNN's face stays
    far = np.array([[400.0, 400.0], [440.0, 400.0], [420.0, 420.0], [405.0, 440.0], [435.0, 440.0]])
    for answer in (far, np.full((5, 2), 60.0), np.full((5, 2), np.nan)):   # far off, degenerate, NaN
        monkeypatch.setitem(L._SIZED_PREDICTORS, 128, lambda frames, a=answer: np.repeat(a[None], len(frames), 0))
        prep = E.prepare(big, 128, 128, handle, handle, landmarks=lambda image: [truth], kind="faces")
        assert _corner_error(prep.alignment, exact) < 1e-6
    with pytest.raises(ValueError, match="alignment kind"):
        E.prepare(big, 128, 128, handle, handle, landmarks=lambda image: [truth], kind="dlib")
    with pytest.raises(ValueError, match="square model"):
        E.prepare(big, 128, 96, handle, handle, landmarks=lambda image: [truth], kind="faces")


@pytest.mark.slow
def test_drag_in_the_aligned_frame_pastes_back(tilted) -> None:
    import stylegan2
    from backend import models
    from backend.engine import DragParams, DragSession

    crop, kp = tilted
    G = stylegan2.load_generator(models.EMBEDDED_MODEL_FILE, device="cpu")
    # a model sample stands in for the inversion (this test is about the geometry around the drag)
    ws = G.mapping(torch.from_numpy(np.random.default_rng(0).standard_normal((1, G.z_dim))).float(), None,
                   truncation_psi=0.7)
    tmpl = A.faces_template_quad(128)
    prep = E.prepare(crop, 128, 128, kp[[11]], kp[[11]] + np.array([[-4.0, 4.0]]), landmarks=oracle(kp),
                     template=tmpl)
    session = DragSession(G, ws, handle_points=prep.handles.tolist(), target_points=prep.targets.tolist(),
                          mask=None, params=DragParams(max_steps=3, preview_every=0))
    for _ in session.run(should_cancel=lambda: False, progress=None):
        pass
    result = session.image()
    layer = E.paste_back(prep, result)
    produced = prep.alignment.produced_area(300, 260)
    np.testing.assert_array_equal(layer[..., 3] == 255, produced)
    back = prep.alignment.unwarp_image(result, 300, 260)[0]
    np.testing.assert_array_equal(layer[..., :3], back)
    # every model-frame pixel that came from padding maps outside the crop
    xy = prep.alignment.to_crop(np.stack(np.meshgrid(np.arange(128), np.arange(128)), -1).reshape(-1, 2))
    pad = ~prep.valid.reshape(-1)
    assert pad.any()
    out = (xy[pad, 0] < -0.5) | (xy[pad, 0] > 299.5) | (xy[pad, 1] < -0.5) | (xy[pad, 1] > 259.5)
    assert out.all()
