"""What the alignment needs at run time of the procedural faces that training/faces.py renders.

faces-128 was trained on those renders; aligning a drawing for it maps the drawing's landmarks onto
the average face's. The renderer itself is training code (it needs no run time): these constants
are the part the backend uses, and tests/training/test_faces.py checks them against the renderer.
"""

from __future__ import annotations

import numpy as np

# "left" / "right" are as seen in the (unrolled) image: left = smaller x.
KEYPOINT_NAMES: list[str] = [
    "left_eye_outer",
    "left_eye_inner",
    "right_eye_inner",
    "right_eye_outer",
    "left_pupil",
    "right_pupil",
    "left_brow_outer",
    "left_brow_inner",
    "right_brow_inner",
    "right_brow_outer",
    "nose_tip",
    "mouth_left",
    "mouth_right",
    "upper_lip_top",
    "lower_lip_bottom",
    "chin",
]
NUM_KEYPOINTS: int = len(KEYPOINT_NAMES)

#: The render size of :data:`AVERAGE_FACE_KEYPOINTS`.
AVERAGE_FACE_SIZE = 128

#: The 16 keypoints (x, y pixels, pixel-centre convention) of the average face at 128 px: the
#: renderer's keypoints for the mid-range parameters, ``faces.render((PARAM_LOW + PARAM_HIGH) / 2, 128)``
#: (float32 values, written out exactly).
AVERAGE_FACE_KEYPOINTS = np.array([
    (45.15439987182617, 63.5799674987793),     # left_eye_outer
    (57.07120132446289, 64.20716857910156),    # left_eye_inner
    (69.92880249023438, 64.20716857910156),    # right_eye_inner
    (81.84559631347656, 63.5799674987793),     # right_eye_outer
    (51.11280059814453, 63.8935661315918),     # left_pupil
    (75.88719940185547, 63.8935661315918),     # right_pupil
    (44.26063919067383, 58.87596893310547),    # left_brow_outer
    (55.581600189208984, 57.9351692199707),    # left_brow_inner
    (71.41840362548828, 57.9351692199707),     # right_brow_inner
    (82.7393569946289, 58.87596893310547),     # right_brow_outer
    (63.5, 78.06201934814453),                 # nose_tip
    (53.77840042114258, 87.77107238769531),    # mouth_left
    (73.22160339355469, 87.77107238769531),    # mouth_right
    (63.5, 86.92435455322266),                 # upper_lip_top
    (63.5, 91.31297302246094),                 # lower_lip_bottom
    (63.5, 102.85679626464844),                # chin
], dtype=np.float64)


def average_face_keypoints(size: int) -> np.ndarray:
    """:data:`AVERAGE_FACE_KEYPOINTS` in a ``size`` px render (pixel-centre coordinates scale about
    the image's outer corner, as the renderer's do; equal to a render at ``size`` to float32 rounding)."""
    return (AVERAGE_FACE_KEYPOINTS + 0.5) * (size / AVERAGE_FACE_SIZE) - 0.5
