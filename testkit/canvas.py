"""Test helper: put a training/faces.py render into a larger canvas with a known similarity
(rotation, scale, shift), with Pillow (independent of alignment/align.py's resampling)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def similarity(angle_deg: float, scale: float, shift: tuple[float, float], centre: tuple[float, float]) -> np.ndarray:
    """2x3 matrix (pixel-centre coordinates): rotate by angle (clockwise on screen) and scale about
    ``centre`` of the source, then put that centre at ``shift`` in the canvas."""
    th = math.radians(angle_deg)
    R = scale * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    c = np.asarray(centre, np.float64)
    return np.concatenate([R, (np.asarray(shift, np.float64) - R @ c)[:, None]], axis=1)


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.asarray(pts, np.float64).reshape(-1, 2)
    return p @ m[:, :2].T + m[:, 2]


def place(img: np.ndarray, m: np.ndarray, canvas: tuple[int, int], fill: tuple[int, int, int] = (90, 110, 130)
          ) -> np.ndarray:
    """``img`` mapped by ``m`` (source -> canvas, pixel-centre coordinates) into a ``canvas`` (w, h)."""
    A = np.linalg.inv(m[:, :2])
    t = -A @ m[:, 2]
    # Pillow's AFFINE maps output area coordinates to input area coordinates (area = centre + 0.5)
    off = t + 0.5 - A @ np.array([0.5, 0.5])
    data = (A[0, 0], A[0, 1], off[0], A[1, 0], A[1, 1], off[1])
    src = Image.fromarray(img)
    return np.asarray(src.transform(canvas, Image.Transform.AFFINE, data, Image.Resampling.BICUBIC,
                                    fillcolor=fill))
