"""alignment/align.py: the FFHQ quad, the warp into a model frame and its inverse, points and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignment import align as A
from testkit import canvas
from training import faces


@pytest.fixture(scope="module")
def face256() -> tuple[np.ndarray, np.ndarray]:
    p = faces.sample_params(np.random.default_rng(3), 1)[0]
    return faces.render(p, 256)


def test_ffhq_quad_upright_by_hand() -> None:
    lm = A.FaceLandmarks.from_array([[40, 50], [60, 50], [50, 60], [42, 70], [58, 70]])
    # eye_to_eye (20, 0), eye_to_mouth (0, 20): x = (40, 0) scaled to max(40, 36); c = (50, 52)
    np.testing.assert_allclose(A.ffhq_quad(lm), [[10, 12], [10, 92], [90, 92], [90, 12]], atol=1e-12)
    al = A.quad_transform(A.ffhq_quad(lm), 80, 80)
    assert al.scale == pytest.approx(1.0) and al.angle_degrees == pytest.approx(0.0)
    # outer corner of the model's top-left pixel is the quad's first corner
    np.testing.assert_allclose(al.to_crop([[-0.5, -0.5]]), [[10, 12]], atol=1e-9)


@pytest.mark.parametrize("angle,scale,shift", [(0, 1.0, (200, 200)), (45, 1 / 3, (120, 300)),
                                               (-45, 0.5, (330, 140)), (17, 1 / 3, (60, 60))])
def test_quad_from_keypoints_follows_the_canvas(face256, angle, scale, shift) -> None:
    """The quad from the renderer's exact keypoints moves with the canvas (rotation, scale, shift),
    and the aligned crops of the original and of the transformed canvas are the same picture."""
    img, kp = face256
    m = canvas.similarity(angle, scale, shift, (127.5, 127.5))
    big = canvas.place(img, m, (420, 420))
    q0 = A.ffhq_quad(A.keypoints_to_landmarks(kp))
    q1 = A.ffhq_quad(A.keypoints_to_landmarks(canvas.apply(m, kp)))
    np.testing.assert_allclose(q1, canvas.apply(m, q0), atol=1e-6)
    tmpl = A.faces_template_quad(128)
    size = 64 if scale < 0.4 else 128     # a third of 256 holds ~64 model pixels of face detail
    tm = tmpl * size / 128
    w0, v0 = A.quad_transform(q0, size, size, tm).warp_image(img)
    w1, v1 = A.quad_transform(q1, size, size, tm).warp_image(big)
    inner = v0 & v1
    inner[:4], inner[-4:], inner[:, :4], inner[:, -4:] = False, False, False, False
    assert inner.mean() > 0.5
    assert A.psnr_masked(w0, w1, inner) > 27.0


@pytest.mark.parametrize("angle", [0.0, 30.0, -45.0])
@pytest.mark.parametrize("model", [128, 256])
def test_image_round_trip_psnr(face256, angle, model) -> None:
    img, kp = face256
    q = A.ffhq_quad(A.keypoints_to_landmarks(kp))
    m = canvas.similarity(angle, 1.0, (127.5, 127.5), (127.5, 127.5))
    al = A.quad_transform(canvas.apply(m, q), model, model)
    w, valid = al.warp_image(img)
    assert w.shape == (model, model, 3) and valid.mean() > 0.3
    back, mask = al.unwarp_image(w, 256, 256)
    assert back.shape == img.shape and mask.any()
    np.testing.assert_array_equal(back[~mask], 0)
    assert A.psnr_masked(back, img, mask) >= 35.0


def test_image_round_trip_psnr_photo() -> None:
    data = pytest.importorskip("skimage.data")
    img = data.astronaut()[0:256, 120:376]
    lm = A.FaceLandmarks.from_array([[90, 110], [150, 110], [120, 140], [98, 175], [142, 175]])
    for angle in (0.0, 25.0):
        q = canvas.apply(canvas.similarity(angle, 1.0, (120, 140), (120, 140)), A.ffhq_quad(lm))
        al = A.quad_transform(q, 256, 256)
        assert al.scale < 1.0
        back, mask = al.unwarp_image(al.warp_image(img)[0], 256, 256)
        assert A.psnr_masked(back, img, mask) >= 35.0


def test_points_round_trip_and_mapping() -> None:
    rng = np.random.default_rng(0)
    q = canvas.apply(canvas.similarity(33.0, 2.7, (500, 300), (64, 64)),
                     [[0, 0], [0, 128], [128, 128], [128, 0]])
    al = A.quad_transform(q, 512, 512)
    pts = rng.uniform(-50, 600, (20, 2))
    np.testing.assert_allclose(al.to_crop(al.to_model(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(al.to_model(al.to_crop(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(al.model_quad(), q, atol=1e-9)
    al2 = A.Alignment.from_dict(al.to_dict())
    np.testing.assert_allclose(al2.matrix, al.matrix)
    assert (al2.width, al2.height) == (512, 512)


def test_handles_and_mask_move_with_the_picture(face256) -> None:
    """A handle on the left pupil lands on the pupil of the aligned picture; a disc mask around it too."""
    img, kp = face256
    m = canvas.similarity(-40.0, 1.0, (127.5, 127.5), (127.5, 127.5))
    kp_big = canvas.apply(m, kp)
    al = A.quad_transform(A.ffhq_quad(A.keypoints_to_landmarks(kp_big)), 128, 128)
    al_ref = A.quad_transform(A.ffhq_quad(A.keypoints_to_landmarks(kp)), 128, 128)
    pupil = al.to_model(kp_big[4:5])[0]
    np.testing.assert_allclose(pupil, al_ref.to_model(kp[4:5])[0], atol=1e-6)
    yy, xx = np.mgrid[0:256, 0:256]
    disc = (xx - kp_big[4, 0]) ** 2 + (yy - kp_big[4, 1]) ** 2 <= 20 ** 2
    wm = al.warp_mask(disc)
    r = 20 / al.scale
    vv, uu = np.mgrid[0:128, 0:128]
    inside = (uu - pupil[0]) ** 2 + (vv - pupil[1]) ** 2 <= (r - 1.5) ** 2
    outside = (uu - pupil[0]) ** 2 + (vv - pupil[1]) ** 2 >= (r + 1.5) ** 2
    assert wm[inside].all() and not wm[outside].any()


def test_face_at_the_edge_pads_and_masks(face256) -> None:
    """A face cut by the crop's edge: the padded model pixels are invalid, and the result maps back
    only onto crop pixels (the mask never covers anything outside the model frame)."""
    img, kp = face256
    crop = img[:, 100:]                       # the left half of the face is gone
    kpc = kp - np.array([100.0, 0.0])
    al = A.quad_transform(A.ffhq_quad(A.keypoints_to_landmarks(kpc)), 128, 128)
    w, valid = al.warp_image(crop)
    assert valid[:, :20].sum() == 0 and valid[:, -20:].all()
    back, mask = al.unwarp_image(w, crop.shape[1], crop.shape[0])
    produced = al.produced_area(crop.shape[1], crop.shape[0])
    np.testing.assert_array_equal(mask, produced)
    uv = al.to_model(np.stack(np.meshgrid(np.arange(crop.shape[1]), np.arange(crop.shape[0])), -1).reshape(-1, 2))
    flat = mask.reshape(-1)
    assert (uv[flat] >= -0.5).all() and (uv[flat] <= 127.5).all()
    assert A.psnr_masked(back, crop, mask) >= 35.0
    # a model pixel whose centre falls outside the crop is invalid, inside valid
    xy = al.to_crop(np.stack(np.meshgrid(np.arange(128), np.arange(128)), -1).reshape(-1, 2))
    inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= crop.shape[1] - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= 255.5)
    np.testing.assert_array_equal(valid.reshape(-1), inside)


def test_choose_face_and_region() -> None:
    small = A.FaceLandmarks.from_array([[40, 50], [60, 50], [50, 60], [42, 70], [58, 70]])
    big = A.FaceLandmarks.from_array([[300, 300], [400, 300], [350, 350], [310, 400], [390, 400]])
    assert A.choose_face([], [[0, 0]]) is None
    assert A.choose_face([small, big], [[50, 55]]) is small
    assert A.choose_face([small, big], [[350, 320], [360, 380]]) is big
    assert A.choose_face([small, big], np.zeros((0, 2))) is big
    x0, y0, x1, y1 = A.face_region(big, 1000, 800)
    eye = big.eye_distance()
    assert 3.5 * eye < x1 - x0 < 5.0 * eye and x0 <= 300 and x1 >= 400
    assert A.face_region(big, 1000, 800, cap=256)[2] - A.face_region(big, 1000, 800, cap=256)[0] <= 256
    corner = A.FaceLandmarks.from_array(small.array() - 30.0)
    assert A.face_region(corner, 1000, 800)[:2] == (0, 0)   # clipped at the image's edge


def test_rejects_degenerate_input() -> None:
    with pytest.raises(ValueError):
        A.ffhq_quad(np.zeros((5, 2)))
    with pytest.raises(ValueError):
        A.Alignment(np.zeros((2, 3)), 8, 8)
    assert math.isinf(A.psnr_masked(np.zeros((2, 2)), np.zeros((2, 2))))
