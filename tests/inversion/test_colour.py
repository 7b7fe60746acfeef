"""The likeness figure (inversion/colour.py) flags what a person sees and PSNR hides: one iris turned
blue on a 128 px procedural face scores above the plug-in's colour notice (20 delta E) and is found at
that eye, while the picture's PSNR is higher than that of faint noise or a 1 px shift, which stay far
below the notice."""

from __future__ import annotations

import numpy as np

from alignment.procedural_faces import KEYPOINT_NAMES
from inversion.colour import local_colour_difference
from training import faces

COLOUR_NOTICE = 20.0  # gimp_plugin/draggan/draggan_core/texts.py: the status line names a colour change above it


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_an_iris_turned_blue_is_flagged_at_that_eye_where_psnr_calls_it_the_best_picture() -> None:
    images, keypoints = faces.dataset(0, 1)
    face = images[0]
    x, y = keypoints[0][KEYPOINT_NAMES.index("left_pupil")]
    yy, xx = np.mgrid[:128, :128]
    iris = (xx - x) ** 2 + (yy - y) ** 2 <= 2.5 ** 2
    blue = face.copy()
    blue[iris] = (0.5 * blue[iris] + 0.5 * np.array([60, 110, 220])).astype(np.uint8)
    noisy = np.clip(face + np.random.default_rng(0).normal(0, 4, face.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(face, 1, axis=1)

    colour_blue, where = local_colour_difference(face, blue)
    assert colour_blue >= COLOUR_NOTICE
    assert np.hypot(where[0] - x, where[1] - y) <= 3.0
    for other in (noisy, shifted):
        assert local_colour_difference(face, other)[0] < 0.6 * COLOUR_NOTICE
        assert psnr(face, blue) > psnr(face, other) + 5.0   # PSNR calls the blue eye the closest picture
