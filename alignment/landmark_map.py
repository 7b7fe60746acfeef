"""The linear map from the procedural faces' 16 detected keypoints to the 5 alignment landmarks.

Read directly off the keypoint detector (alignment/detector.py), the mouth corners are the weak point
of the landmarks the alignment recipe needs (about 1 px at 128 px); a least-squares map from all 32
keypoint coordinates (plus a constant) to the 10 landmark coordinates is more precise (docs/alignment.md).
It is 33 x 10 numbers, stored as JSON: alignment/data/landmark_regression.json, fitted by
``python -m training.fit_landmarks``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from alignment.procedural_faces import KEYPOINT_NAMES, NUM_KEYPOINTS

FORMAT = "draggan-landmark-regression-v1"
DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "landmark_regression.json"
LANDMARK_NAMES = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]


def apply_linear_map(weights: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Landmarks [n, 5, 2] (x, y pixels) from ``detected`` keypoints [n, K, 2]."""
    detected = np.asarray(detected, np.float64)
    n = len(detected)
    return (np.c_[detected.reshape(n, -1), np.ones(n)] @ weights).reshape(n, 5, 2)


def load(path: str | os.PathLike[str] | None = None) -> np.ndarray:
    """The weights [2K + 1, 10] of a saved map; ValueError if the file is not one (wrong format,
    keypoint order, shape or non-finite numbers)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"landmark regression {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"landmark regression {path}: not a {FORMAT} file")
    if doc.get("keypoint_names") != KEYPOINT_NAMES or doc.get("landmark_names") != LANDMARK_NAMES:
        raise ValueError(f"landmark regression {path}: fitted for other keypoints or landmarks")
    try:
        weights = np.array(doc.get("weights"), dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"landmark regression {path}: weights are not a number table") from e
    if weights.shape != (2 * NUM_KEYPOINTS + 1, 10) or not np.isfinite(weights).all():
        raise ValueError(f"landmark regression {path}: weights of shape {weights.shape}, "
                         f"expected ({2 * NUM_KEYPOINTS + 1}, 10), all finite")
    return weights
