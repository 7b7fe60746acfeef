"""The procedural face domain: determinism, codes, keypoint correctness, sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training import faces


def _params(seed: int, n: int) -> np.ndarray:
    return faces.sample_params(np.random.default_rng(seed), n)


def _with(p: np.ndarray, **values: float) -> np.ndarray:
    p = p.copy()
    for name, v in values.items():
        p[..., faces.PARAM_NAMES.index(name)] = v
    return p


def test_api_shapes_and_names() -> None:
    assert faces.NUM_PARAMS == len(faces.PARAM_NAMES) == len(set(faces.PARAM_NAMES))
    assert 20 <= faces.NUM_PARAMS <= 40
    assert len(faces.KEYPOINT_NAMES) >= 12
    imgs, kps = faces.dataset(3, 4)
    assert imgs.shape == (4, 128, 128, 3) and imgs.dtype == np.uint8
    assert kps.shape == (4, len(faces.KEYPOINT_NAMES), 2) and kps.dtype == np.float32
    p = _params(3, 4)
    assert p.shape == (4, faces.NUM_PARAMS) and p.dtype == np.float64
    img, kp = faces.render(p[1])
    np.testing.assert_array_equal(img, imgs[1])
    np.testing.assert_array_equal(kp, kps[1])


def test_dataset_is_deterministic_by_seed() -> None:
    a_imgs, a_kps = faces.dataset(11, 3)
    b_imgs, b_kps = faces.dataset(11, 3)
    assert a_imgs.tobytes() == b_imgs.tobytes() and a_kps.tobytes() == b_kps.tobytes()
    c_imgs, c_kps = faces.dataset(12, 3)
    assert a_imgs.tobytes() != c_imgs.tobytes()
    assert not np.allclose(a_kps, c_kps)
    # the images differ from each other too (not one face repeated)
    assert np.abs(a_imgs[0].astype(int) - a_imgs[1].astype(int)).mean() > 5


def test_params_z_round_trip_and_distribution() -> None:
    p = _params(5, 4000)
    z = faces.params_to_z(p)
    assert z.dtype == np.float32 and z.shape == p.shape
    # the training distribution maps onto N(0, 1) per dimension
    assert np.all(np.abs(z.mean(axis=0)) < 0.08)
    assert np.all(np.abs(z.std(axis=0) - 1) < 0.06)
    back = faces.z_to_params(z)
    span = faces.PARAM_HIGH - faces.PARAM_LOW
    assert np.max(np.abs(back - p) / span) < 1e-6
    # and the other way: z -> params -> z
    zz = np.random.default_rng(0).standard_normal((200, faces.NUM_PARAMS)).astype(np.float32)
    np.testing.assert_allclose(faces.params_to_z(faces.z_to_params(zz)), zz, atol=1e-4)
    # far-out codes are clipped into the valid range
    clipped = faces.z_to_params(np.full((1, faces.NUM_PARAMS), 40.0))
    assert np.all(clipped <= faces.PARAM_HIGH) and np.all(clipped >= faces.PARAM_LOW)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="shape"):
        faces.params_to_z(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        faces.z_to_params(np.full((1, faces.NUM_PARAMS), np.nan))
    with pytest.raises(ValueError, match="p_row"):
        faces.render(np.zeros(5))
    with pytest.raises(ValueError, match="size"):
        faces.render(_params(0, 1)[0], size=8)


def test_keypoints_inside_image_for_many_faces() -> None:
    for size in (128, 256):
        p = _params(21, 40 if size == 128 else 8)
        _, kps = faces.render_batch(p, size)
        assert np.all(kps >= 2) and np.all(kps <= size - 3), (kps.min(), kps.max())


def test_sizes_scale_with_the_pixel_centre_convention() -> None:
    """Same face at 128 and 256: with x = j at the centre of pixel j, area coordinates (x + 0.5)
    scale with the image, so kp256 = 2 * kp128 + 0.5 exactly; the images agree after a 2x box filter."""
    p = _params(8, 3)
    imgs128, kps128 = faces.render_batch(p, 128)
    imgs256, kps256 = faces.render_batch(p, 256)
    assert imgs256.shape == (3, 256, 256, 3)
    np.testing.assert_allclose(kps256, 2 * kps128 + 0.5, atol=1e-3)
    for a, b in zip(imgs128, imgs256):
        down = np.asarray(Image.fromarray(b).reduce(2), dtype=np.float32)
        assert np.abs(down - a.astype(np.float32)).mean() < 4.0


def _coverage(p_row: np.ndarray, part: str, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each pixel covered by the visible ``part`` (flat-colour debug render)."""
    img, kps, _ = faces._render(p_row, size, debug_colours={part: (255, 255, 255)})
    return img[..., 0].astype(np.float64) / 255.0, kps


def _centroid(cov: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(cov > 0)
    w = cov[ys, xs]
    return np.array([np.sum(xs * w), np.sum(ys * w)]) / np.sum(w)  # pixel j's centre is x = j


OPEN_EYES = {"eye_open": 1.0, "gaze_x": 0.0, "gaze_y": 0.0}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_pupils_and_nose_tip_are_where_the_drawing_puts_them(seed: int) -> None:
    p = _with(_params(100 + seed, 1)[0], **OPEN_EYES)
    names = faces.KEYPOINT_NAMES
    for part, kp_names in (("pupil", ["left_pupil", "right_pupil"]), ("nose", ["nose_tip"])):
        cov, kps = _coverage(p, part)
        for name in kp_names:
            k = kps[names.index(name)]
            # measure this instance only: the part's pixels within 6 px of the keypoint
            yy, xx = np.mgrid[0 : cov.shape[0], 0 : cov.shape[1]]
            near = cov * ((xx - k[0]) ** 2 + (yy - k[1]) ** 2 < 36)
            assert near.sum() > 1.0, f"{name} not visible"
            err = np.linalg.norm(_centroid(near) - k)
            assert err < 0.15, f"{name}: drawn centre {_centroid(near)} vs keypoint {k} ({err:.3f} px)"


def _axis_extreme_gap(cov: np.ndarray, k: np.ndarray, direction: np.ndarray, radius: float) -> float:
    """How far (px) the part extends beyond keypoint ``k`` along ``direction`` (near k only)."""
    yy, xx = np.mgrid[0 : cov.shape[0], 0 : cov.shape[1]]
    near = (cov > 0.1) & ((xx - k[0]) ** 2 + (yy - k[1]) ** 2 < radius**2)
    proj = (xx[near] - k[0]) * direction[0] + (yy[near] - k[1]) * direction[1]
    return float(proj.max())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_corner_keypoints_are_the_extremes_of_their_shapes(seed: int) -> None:
    # smile 0: with a broad smile the corners rise above the upper lip's centre, which then is not
    # the shape's extreme upward
    p = _with(_params(200 + seed, 1)[0], smile=0.0, **OPEN_EYES)
    idx = {n: i for i, n in enumerate(faces.KEYPOINT_NAMES)}
    cov_lips, kps = _coverage(p, "lips")
    cov_eyes, _ = _coverage(p, "eye_white")
    cov_skin, _ = _coverage(p, "skin")
    k = kps
    mouth_axis = (k[idx["mouth_right"]] - k[idx["mouth_left"]]) / np.linalg.norm(
        k[idx["mouth_right"]] - k[idx["mouth_left"]])
    down = np.array([-mouth_axis[1], mouth_axis[0]])
    checks = [
        (cov_lips, "mouth_left", -mouth_axis), (cov_lips, "mouth_right", mouth_axis),
        (cov_lips, "upper_lip_top", -down), (cov_lips, "lower_lip_bottom", down),
        (cov_skin, "chin", down),
    ]
    for side in ("left", "right"):
        outer, inner = k[idx[f"{side}_eye_outer"]], k[idx[f"{side}_eye_inner"]]
        axis = (outer - inner) / np.linalg.norm(outer - inner)
        checks += [(cov_eyes, f"{side}_eye_outer", axis), (cov_eyes, f"{side}_eye_inner", -axis)]
    for cov, name, direction in checks:
        kp = k[idx[name]]
        # the shape (pixels >= 10 % covered) ends at its keypoint, within a pixel
        gap = _axis_extreme_gap(cov, kp, direction, radius=4.0)
        assert -1.4 < gap < 0.8, f"{name}: shape ends {gap:.2f} px from its keypoint along {direction}"


def test_marker_drawn_with_the_renderer_transform_lands_on_the_keypoint() -> None:
    """Draw a disc at each keypoint with the renderer's own canvas transform and find its centre."""
    for size in (128, 256):
        _, kps = faces.render(_params(31, 1)[0], size)
        for x, y in kps[[0, 4, 10, 15]]:
            black = Image.new("RGB", (size * faces.SUPERSAMPLE,) * 2, (0, 0, 0))
            cv = faces._Canvas(size, black)
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            cv.poly(x + 1.5 * np.cos(t), y + 1.5 * np.sin(t), (255, 255, 255))
            cov = np.asarray(cv.img.reduce(faces.SUPERSAMPLE), dtype=np.float64)[..., 0] / 255
            c = _centroid(cov)
            assert np.linalg.norm(c - [x, y]) < 0.15, (c, x, y)
        # a small disc at x = j, y = i (integers) falls inside pixel (i, j): x = j is its centre
        for j, i in ((0, 0), (17, 90), (size - 1, size // 2)):
            cv = faces._Canvas(size, Image.new("RGB", (size * faces.SUPERSAMPLE,) * 2, (0, 0, 0)))
            t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            cv.poly(j + 0.3 * np.cos(t), i + 0.3 * np.sin(t), (255, 255, 255))
            cov = np.asarray(cv.img.reduce(faces.SUPERSAMPLE), dtype=np.float64)[..., 0]
            assert cov[i, j] > 0 and cov.sum() == cov[i, j], "disc spilled out of its pixel"


def test_pixel_colours_at_keypoints() -> None:
    """In the normal render the pupil keypoint is dark and the nose tip is skin-like."""
    p = _with(_params(41, 6), eye_open=1.0)
    imgs, kps = faces.render_batch(p, 128)
    li, ni = faces.KEYPOINT_NAMES.index("left_pupil"), faces.KEYPOINT_NAMES.index("nose_tip")
    for img, kp in zip(imgs, kps):
        x, y = np.round(kp[li]).astype(int)
        assert img[y, x].astype(int).sum() < 200, img[y, x]
        x, y = np.round(kp[ni]).astype(int)
        assert img[y, x].astype(int).sum() > 200


def test_the_alignments_average_face_is_the_renderers() -> None:
    """alignment/procedural_faces.py carries the average face so that the run time never imports the
    renderer: its keypoints are the render's of the mid-range parameters, at 128 px exactly and at other
    sizes to float32 rounding, and faces_template_quad is built from them."""
    from alignment import align as A
    from alignment import procedural_faces as P

    assert P.KEYPOINT_NAMES is faces.KEYPOINT_NAMES and P.NUM_KEYPOINTS == faces.NUM_KEYPOINTS
    mid = (faces.PARAM_LOW + faces.PARAM_HIGH) / 2.0
    for size in (64, 96, 128, 256, 512):
        _, kp = faces.render(mid, size=size)
        np.testing.assert_allclose(P.average_face_keypoints(size), kp, atol=1e-4)
        np.testing.assert_allclose(A.faces_template_quad(size), A.ffhq_quad(A.keypoints_to_landmarks(kp)), atol=1e-4)
    np.testing.assert_array_equal(P.AVERAGE_FACE_KEYPOINTS, faces.render(mid, size=128)[1].astype(np.float64))
