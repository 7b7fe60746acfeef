"""Face alignment geometry: the FFHQ recipe's quad, the warp into a model's frame and back.

Backend-side only (numpy + torch; GIMP's Python has no numpy). No ZeroMQ, no I/O.

Coordinates everywhere are pixel-centre coordinates ``(x, y)``: ``x = j`` at the centre of column
``j``, ``y = i`` at the centre of row ``i``, so an image of ``W x H`` pixels covers
``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (the convention of the drag engine, of training/faces.py and
of ``grid_sample(..., align_corners=True)``).

The FFHQ recipe (Karras et al., the FFHQ data set's alignment; written here from its description):
from the eye centres ``e_l, e_r`` and the mouth corners ``m_l, m_r``,

* ``eye_avg = (e_l + e_r) / 2``, ``eye_to_eye = e_r - e_l``,
  ``eye_to_mouth = (m_l + m_r) / 2 - eye_avg``;
* ``x = eye_to_eye - rot90(eye_to_mouth)`` (with ``rot90(a, b) = (-b, a)``), normalised, then scaled
  to ``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)``; ``y = rot90(x)``;
* centre ``c = eye_avg + 0.1 eye_to_mouth``;
* the quad ``c - x - y, c - x + y, c + x + y, c + x - y`` (top-left, bottom-left, bottom-right,
  top-right of the output) is the area of the output square: its corners are the outer corners of
  the output's corner pixels.

An :class:`Alignment` is the similarity transform between a model's frame (the generator's output,
``width x height``) and the crop's frame, as a 2x3 matrix mapping model coordinates to crop
coordinates. :meth:`Alignment.warp_image` resamples the crop into the model's frame (area-filtered
when shrinking; padding outside the crop is filled by reflection, as the recipe does, and marked
invalid); :meth:`Alignment.unwarp_image` resamples a model-frame picture back into the crop's frame
and says which crop pixels it covers (the produced area); points and masks go with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ALIGNMENTS", "Alignment", "FaceLandmarks", "ffhq_quad", "quad_transform", "similarity_from_quads",
    "choose_face", "face_region", "faces_template_quad", "psnr_masked",
]

#: Alignment kinds a model can have in the registry (backend/models.py ``ModelSpec.alignment``):
#: "ffhq" = the FFHQ recipe's quad onto the whole frame; "faces" = the same quad onto the quad of
#: training/faces.py's average face (:func:`faces_template_quad`), for models of the procedural faces.
ALIGNMENTS = ("none", "ffhq", "faces")

_MAX_SUPERSAMPLE = 8


@dataclass(frozen=True)
class FaceLandmarks:
    """Five face landmarks in crop pixel-centre coordinates: eye centres, nose tip, mouth corners.
    "left" is the smaller x in an upright face (the subject's right eye). ``nose`` is not used by
    the recipe and may be NaN. ``box``: the detector's face box (x0, y0, x1, y1) or None;
    ``score``: its confidence (1 for an oracle)."""

    left_eye: tuple[float, float]
    right_eye: tuple[float, float]
    nose: tuple[float, float]
    mouth_left: tuple[float, float]
    mouth_right: tuple[float, float]
    box: tuple[float, float, float, float] | None = None
    score: float = 1.0

    def array(self) -> np.ndarray:
        """float64 [5, 2]: left eye, right eye, nose, mouth left, mouth right."""
        return np.array([self.left_eye, self.right_eye, self.nose, self.mouth_left, self.mouth_right],
                        dtype=np.float64)

    @classmethod
    def from_array(cls, pts: Any, box: Sequence[float] | None = None, score: float = 1.0) -> FaceLandmarks:
        a = np.asarray(pts, dtype=np.float64).reshape(5, 2)
        t = [(float(p[0]), float(p[1])) for p in a]
        b = None if box is None else (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        return cls(t[0], t[1], t[2], t[3], t[4], b, float(score))

    def eye_distance(self) -> float:
        a = self.array()
        return float(np.hypot(*(a[1] - a[0])))


def _rot90(v: np.ndarray) -> np.ndarray:
    return np.array([-v[1], v[0]], dtype=np.float64)


def ffhq_quad(landmarks: FaceLandmarks | Any) -> np.ndarray:
    """The FFHQ recipe's quad, float64 [4, 2] (top-left, bottom-left, bottom-right, top-right), in the
    landmarks' pixel-centre coordinates; its corners are the output square's outer corners."""
    a = landmarks.array() if isinstance(landmarks, FaceLandmarks) else np.asarray(landmarks, np.float64)
    a = a.reshape(5, 2)
    if not np.isfinite(a[[0, 1, 3, 4]]).all():
        raise ValueError("landmarks must be finite")
    eye_l, eye_r, mouth_l, mouth_r = a[0], a[1], a[3], a[4]
    eye_avg = (eye_l + eye_r) * 0.5
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = (mouth_l + mouth_r) * 0.5 - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    norm = float(np.hypot(*x))
    if norm < 1e-9:
        raise ValueError("degenerate landmarks (eyes and mouth coincide)")
    x = x / norm * max(float(np.hypot(*eye_to_eye)) * 2.0, float(np.hypot(*eye_to_mouth)) * 1.8)
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def similarity_from_quads(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, shift) mapping points ``src`` onto
    ``dst`` (both [N, 2]), as a 2x3 matrix: ``dst ~ M[:, :2] @ src + M[:, 2]``."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    den = float((s ** 2).sum())
    if den < 1e-12:
        raise ValueError("degenerate source points")
    a = float((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum()) / den
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / den
    R = np.array([[a, -b], [b, a]])
    return np.concatenate([R, (md - R @ ms)[:, None]], axis=1)


def _canonical_square(width: int, height: int) -> np.ndarray:
    """The model frame's outer corners in pixel-centre coordinates, in quad order."""
    x0, y0, x1, y1 = -0.5, -0.5, width - 0.5, height - 0.5
    return np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], dtype=np.float64)


def quad_transform(quad: np.ndarray, width: int, height: int, template: np.ndarray | None = None) -> Alignment:
    """The :class:`Alignment` that maps ``template`` (a quad in the model frame; by default the whole
    frame, as FFHQ does) onto ``quad`` (in the crop). For a square model and the default template
    this is exactly the recipe's quad transform."""
    template = _canonical_square(width, height) if template is None else np.asarray(template, np.float64)
    return Alignment(similarity_from_quads(template, quad), int(width), int(height))


def faces_template_quad(size: int = 128) -> np.ndarray:
    """The FFHQ quad of the average face of training/faces.py at ``size`` (its training frame):
    the template onto which a procedural face's quad is mapped (training/faces.py centres heads at
    0.5 with half face width 0.245 of the image). Computed from the renderer's own keypoints of the
    mid-range parameters (:data:`alignment.procedural_faces.AVERAGE_FACE_KEYPOINTS`; no rendering,
    no training code). Frames under 64 px scale the 64 px quad, as the renderer starts at 64."""
    from alignment.procedural_faces import average_face_keypoints

    base = max(64, int(size))
    return ffhq_quad(keypoints_to_landmarks(average_face_keypoints(base))) * (size / base)


def keypoints_to_landmarks(kp: np.ndarray) -> FaceLandmarks:
    """The 5 landmarks of a training/faces.py render from its 16 exact keypoints: eye centres = the
    midpoints of each eye's corners, nose tip, mouth corners."""
    kp = np.asarray(kp, np.float64).reshape(-1, 2)
    pts = np.stack([(kp[0] + kp[1]) / 2, (kp[2] + kp[3]) / 2, kp[10], kp[11], kp[12]])
    return FaceLandmarks.from_array(pts)


@dataclass(frozen=True)
class Alignment:
    """A similarity between a model frame (``width x height``) and a crop: ``matrix`` (2x3) maps
    model pixel-centre coordinates to crop pixel-centre coordinates."""

    matrix: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, np.float64).reshape(2, 3)
        if not np.isfinite(m).all() or abs(np.linalg.det(m[:, :2])) < 1e-12:
            raise ValueError("alignment matrix must be finite and invertible")
        object.__setattr__(self, "matrix", m)

    # ---------------------------------------------------------------- points
    @property
    def inverse_matrix(self) -> np.ndarray:
        A = np.linalg.inv(self.matrix[:, :2])
        return np.concatenate([A, (-A @ self.matrix[:, 2])[:, None]], axis=1)

    @property
    def scale(self) -> float:
        """Crop pixels per model pixel (> 1: the model frame is coarser than the crop)."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    @property
    def angle_degrees(self) -> float:
        """Rotation of the model frame's x axis in the crop (degrees, clockwise on screen)."""
        return float(math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0])))

    def to_crop(self, pts: Any) -> np.ndarray:
        """Model-frame points [N, 2] -> crop points [N, 2]."""
        p = np.asarray(pts, np.float64).reshape(-1, 2)
        return p @ self.matrix[:, :2].T + self.matrix[:, 2]

    def to_model(self, pts: Any) -> np.ndarray:
        """Crop points [N, 2] -> model-frame points [N, 2]."""
        inv = self.inverse_matrix
        p = np.asarray(pts, np.float64).reshape(-1, 2)
        return p @ inv[:, :2].T + inv[:, 2]

    def model_quad(self) -> np.ndarray:
        """The model frame's outline in the crop (quad order)."""
        return self.to_crop(_canonical_square(self.width, self.height))

    # ---------------------------------------------------------------- serialisation (session storage)
    def to_dict(self) -> dict[str, Any]:
        return {"matrix": [[float(v) for v in row] for row in self.matrix], "width": self.width,
                "height": self.height}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alignment:
        return cls(np.asarray(d["matrix"], np.float64), int(d["width"]), int(d["height"]))

    # ---------------------------------------------------------------- sampling
    @staticmethod
    def _sample(src: torch.Tensor, xy: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
        """Sample ``src`` [1, C, H, W] at crop/model pixel-centre positions ``xy`` [h, w, 2]."""
        H, W = src.shape[-2:]
        gx = xy[..., 0] / max(W - 1, 1) * 2 - 1
        gy = xy[..., 1] / max(H - 1, 1) * 2 - 1
        grid = torch.stack([gx, gy], dim=-1)[None].to(src.dtype)
        return F.grid_sample(src, grid, mode=mode, padding_mode=padding, align_corners=True)

    @staticmethod
    def _resample(src: np.ndarray, matrix: np.ndarray, out_w: int, out_h: int, ratio: float,
                  mode: str, padding: str) -> np.ndarray:
        """Resample float32 [H, W, C] ``src`` onto an ``out_w x out_h`` grid whose pixel centres map
        into ``src`` through ``matrix`` (2x3); ``ratio``: source pixels per output pixel. Shrinking
        (ratio > 1) averages ceil(ratio)^2 sub-samples per output pixel (an area filter)."""
        n = int(min(_MAX_SUPERSAMPLE, max(1, math.ceil(ratio - 1e-6))))
        t = torch.from_numpy(np.ascontiguousarray(src.transpose(2, 0, 1)))[None].float()
        m = torch.from_numpy(matrix).float()
        ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float32),
                                torch.arange(out_w, dtype=torch.float32), indexing="ij")
        acc = torch.zeros((1, src.shape[2], out_h, out_w))
        offsets = [(k + 0.5) / n - 0.5 for k in range(n)]
        for oy in offsets:
            for ox in offsets:
                u, v = xs + ox, ys + oy
                xy = torch.stack([m[0, 0] * u + m[0, 1] * v + m[0, 2], m[1, 0] * u + m[1, 1] * v + m[1, 2]], -1)
                acc += Alignment._sample(t, xy, mode, padding)
        return (acc / (n * n))[0].numpy().transpose(1, 2, 0)

    def warp_image(self, crop: np.ndarray, mode: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
        """The crop (uint8 [H, W, 3] or [H, W]) in the model's frame: (uint8 [height, width, C],
        bool [height, width] ``valid``: the model pixel's centre lies inside the crop). Outside the
        crop the picture is filled by reflection (the recipe pads too); those pixels are invalid and
        must be masked out of the result."""
        a = np.asarray(crop)
        squeeze = a.ndim == 2
        a3 = a[..., None] if squeeze else a
        H, W = a3.shape[:2]
        out = self._resample(a3.astype(np.float32), self.matrix, self.width, self.height, self.scale,
                             mode, "reflection")
        out8 = np.clip(np.round(out), 0, 255).astype(np.uint8)
        xy = self.to_crop(np.stack(np.meshgrid(np.arange(self.width), np.arange(self.height)), -1).reshape(-1, 2))
        valid = ((xy[:, 0] >= -0.5) & (xy[:, 0] <= W - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= H - 0.5))
        valid = valid.reshape(self.height, self.width)
        return (out8[..., 0] if squeeze else out8), valid

    def produced_area(self, crop_width: int, crop_height: int) -> np.ndarray:
        """bool [crop_height, crop_width]: the crop pixels whose centre lies inside the model frame."""
        xy = np.stack(np.meshgrid(np.arange(crop_width), np.arange(crop_height)), -1).reshape(-1, 2)
        uv = self.to_model(xy)
        inside = ((uv[:, 0] >= -0.5) & (uv[:, 0] <= self.width - 0.5)
                  & (uv[:, 1] >= -0.5) & (uv[:, 1] <= self.height - 0.5))
        return inside.reshape(crop_height, crop_width)

    def unwarp_image(self, result: np.ndarray, crop_width: int, crop_height: int,
                     mode: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
        """A model-frame picture (uint8 [height, width, C]) back in the crop's frame: (uint8
        [crop_height, crop_width, C], bool ``mask`` = :meth:`produced_area`). Pixels outside the mask
        are 0 and must not be used."""
        a = np.asarray(result)
        if a.shape[:2] != (self.height, self.width):
            raise ValueError(f"result must be {self.width}x{self.height}, got {a.shape[1]}x{a.shape[0]}")
        squeeze = a.ndim == 2
        a3 = a[..., None] if squeeze else a
        out = self._resample(a3.astype(np.float32), self.inverse_matrix, crop_width, crop_height,
                             1.0 / self.scale, mode, "border")
        mask = self.produced_area(crop_width, crop_height)
        out8 = np.clip(np.round(out), 0, 255).astype(np.uint8)
        out8[~mask] = 0
        return (out8[..., 0] if squeeze else out8), mask

    def warp_mask(self, mask: np.ndarray) -> np.ndarray:
        """A crop-frame mask (bool or uint8 [H, W]) in the model's frame (bool), False where invalid."""
        m = (np.asarray(mask) > 0).astype(np.float32)[..., None] * 255.0
        H, W = m.shape[:2]
        out = self._resample(m, self.matrix, self.width, self.height, self.scale, "bilinear", "zeros")
        _, valid = self.warp_image(np.zeros((H, W), np.uint8), mode="nearest")
        return (out[..., 0] >= 127.5) & valid


def choose_face(faces: Sequence[FaceLandmarks], handles: Any) -> FaceLandmarks | None:
    """The face to align among several: the one whose FFHQ quad contains most handles (ties: the
    larger face); None when there is no face. With no handles, the largest face."""
    if not faces:
        return None
    pts = np.asarray(handles, np.float64).reshape(-1, 2)

    def key(f: FaceLandmarks) -> tuple[int, float]:
        al = quad_transform(ffhq_quad(f), 2, 2)   # unit frame: inside means -0.5..1.5
        uv = al.to_model(pts) if len(pts) else np.zeros((0, 2))
        inside = int((((uv >= -0.5) & (uv <= 1.5)).all(axis=1)).sum())
        return inside, f.eye_distance()

    return max(faces, key=key)


def face_region(landmarks: FaceLandmarks, image_width: int, image_height: int, cap: int = 2048,
                margin: float = 1.1) -> tuple[int, int, int, int]:
    """The axis-aligned region (x0, y0, x1, y1, exclusive ends, inside the image) that holds the face's
    FFHQ quad with ``margin``: about 4x the eye distance, at most ``cap`` pixels on a side (centred on
    the quad when capped)."""
    q = ffhq_quad(landmarks)
    c = q.mean(0)
    half = float(np.abs(q - c).max()) * margin
    half = min(half, cap / 2.0)
    x0 = max(0, int(math.floor(c[0] - half)))
    y0 = max(0, int(math.floor(c[1] - half)))
    x1 = min(int(image_width), int(math.ceil(c[0] + half)) + 1)
    y1 = min(int(image_height), int(math.ceil(c[1] + half)) + 1)
    x1, y1 = min(x1, x0 + cap), min(y1, y0 + cap)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the face lies outside the image")
    return x0, y0, x1, y1


def psnr_masked(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB, 8-bit peak) between two uint8 images over ``mask`` (all pixels by default)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if mask is not None:
        d = d[np.asarray(mask, bool)]
    mse = float(np.mean(d ** 2)) if d.size else 0.0
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
