"""Second-stage landmark refiner for procedural faces: the patch network, loading and refinement.

Why: the face-alignment quad (``alignment/align.py`` ``ffhq_quad``) magnifies landmark noise. Its side is
about 4 eye distances and 3.6 eye-to-mouth distances, so with eye centres 0.2 px off at 128 px the
quad's worst corner is already 0.66 px off on average, and the mouth corners' 0.9 px from the
whole-face keypoint detector (``alignment/detector.py``, stride-4 heatmaps) take it past 1 px on a
third of faces (docs/alignment.md). ``benchmarks/quad_sensitivity.py`` measures that sensitivity: eye
centres 0.1 px and mouth corners 0.3 px keep 99 % of quads within 1 px.

What: once the face has been aligned by the first stage, its picture is warped into a frame of
``FRAME`` x ``FRAME`` pixels (faces-128's template quad at twice the size, so a large face keeps
detail the 128 px frame would average away) and a ``PATCH`` x ``PATCH`` patch is cut around each
landmark's current estimate (integer centre, no resampling). A small CNN regresses the landmark's
offset from the patch centre. Right-side patches are mirrored so that one network serves both
sides of each kind ("eye": the midpoint of the eye's two corners; "mouth": the mouth corner). The
prediction is repeated from the improved estimate and averaged over a few patch shifts
(:func:`refine_in_frame`).

training/corner_refiner.py makes the training data and trains it:

    python -m training.corner_refiner train          # writes alignment/data/corner_refiner.pt
    python -m training.corner_refiner evaluate       # held-out errors of the committed file

Coordinates: (x, y) pixels, ``x = j`` at the centre of pixel column ``j`` (training/faces.py).
The saved file is ``{"format": FORMAT, "config": {...}, "state_dict": {...}, "meta": {...}}``,
loadable with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alignment.model_files import read_model_file

FORMAT = "draggan-corner-refiner-v1"
DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "corner_refiner.pt"
FRAME = 256
PATCH = 40
#: The landmarks the refiner predicts, in alignment.align.FaceLandmarks order (nose: index 2, not refined),
#: each with its kind (0 eye, 1 mouth corner) and whether its patch is mirrored.
LANDMARKS: tuple[tuple[int, int, bool], ...] = ((0, 0, False), (1, 0, True), (3, 1, False), (4, 1, True))
#: Patch-centre shifts (whole pixels, x then y) whose predictions are averaged at inference.
SHIFTS: tuple[tuple[int, int], ...] = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))


class CornerRefiner(nn.Module):
    """Patches float ``[N, 3, PATCH, PATCH]`` in [-1, 1] and kinds long ``[N]`` -> offsets ``[N, 2]``
    (x, y) in frame pixels from the patch centre (the corner between its four middle pixels)."""

    def __init__(self, widths: tuple[int, ...] | list[int] = (12, 24, 48, 96), hidden: int = 128,
                 kinds: int = 2, patch: int = PATCH):
        super().__init__()
        self.config: dict[str, Any] = {"widths": [int(w) for w in widths], "hidden": int(hidden),
                                       "kinds": int(kinds), "patch": int(patch)}
        if patch % 2 ** (len(widths) - 1):
            raise ValueError(f"patch {patch} must be divisible by {2 ** (len(widths) - 1)}")
        # two 3x3 convolutions per stage at full patch resolution first (sub-pixel detail lives
        # there), halving the resolution between stages; one convolution on the last stage
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            last = i == len(widths) - 1
            for _ in range(1 if last else 2):
                layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            if not last:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = patch // 2 ** (len(widths) - 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, 2 * kinds))
        self.kinds = int(kinds)
        self.patch = int(patch)

    def forward(self, x: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x)).view(len(x), self.kinds, 2)
        # the head's outputs are in units of 8 px: small weights start near "no offset"
        return out[torch.arange(len(x), device=x.device), kind] * 8.0


# ---------------------------------------------------------------------- patches
def cut_patches(frame: np.ndarray, centres: np.ndarray, mirrored: np.ndarray, patch: int = PATCH
                ) -> tuple[np.ndarray, np.ndarray]:
    """Patches of ``frame`` (uint8 [H, W, 3]) around ``centres`` (float [N, 2] x, y): each patch spans the
    ``patch`` pixels around the rounded centre (edge pixels repeat outside the frame), mirrored
    left-right where ``mirrored``. Returns (uint8 [N, patch, patch, 3], float [N, 2] the patch centres in
    frame pixels, i.e. where offset (0, 0) lies)."""
    half = patch // 2
    padded = np.pad(frame, ((half, half), (half, half), (0, 0)), mode="edge")
    h, w = frame.shape[:2]
    out = np.empty((len(centres), patch, patch, 3), np.uint8)
    origin = np.empty((len(centres), 2))
    for i, (x, y) in enumerate(np.asarray(centres, np.float64)):
        cx = int(min(max(math.floor(x + 0.5), 0), w))   # the patch's centre is between columns cx-1 and cx
        cy = int(min(max(math.floor(y + 0.5), 0), h))
        p = padded[cy:cy + patch, cx:cx + patch]
        out[i] = p[:, ::-1] if mirrored[i] else p
        origin[i] = (cx - 0.5, cy - 0.5)
    return out, origin


def _as_input(patches: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def predict_offsets(net: CornerRefiner, patches: np.ndarray, kinds: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Offsets float [N, 2] (x, y frame pixels, un-mirrored) of uint8 patches [N, P, P, 3]."""
    net.eval()
    off = net(_as_input(patches), torch.as_tensor(np.asarray(kinds), dtype=torch.long)).double().numpy()
    off[np.asarray(mirrored, bool), 0] *= -1
    return off


def refine_in_frame(net: CornerRefiner, frame: np.ndarray, landmarks: np.ndarray, iterations: int = 2,
                    shifts: tuple[tuple[int, int], ...] = SHIFTS) -> np.ndarray:
    """Refine the eye centres and mouth corners of ``landmarks`` (float [5, 2], frame pixels) in
    ``frame`` (uint8 [FRAME, FRAME, 3]): each iteration cuts patches around the current estimates
    (moved by each of ``shifts``), predicts the offsets and averages the implied positions. The nose
    (index 2) is returned unchanged. Returns float [5, 2]."""
    pts = np.asarray(landmarks, np.float64).reshape(5, 2).copy()
    idx = np.array([i for i, _, _ in LANDMARKS])
    kinds = np.array([k for _, k, _ in LANDMARKS])
    mirrored = np.array([m for _, _, m in LANDMARKS])
    shift = np.asarray(shifts, np.float64).reshape(-1, 2)
    for _ in range(iterations):
        centres = (pts[idx][None] + shift[:, None]).reshape(-1, 2)
        patches, origin = cut_patches(frame, centres, np.tile(mirrored, len(shift)), net.patch)
        off = predict_offsets(net, patches, np.tile(kinds, len(shift)), np.tile(mirrored, len(shift)))
        pts[idx] = (origin + off).reshape(len(shift), len(idx), 2).mean(0)
    return pts


# ---------------------------------------------------------------------- the frame
def frame_template() -> np.ndarray:
    """faces-128's template quad (alignment/align.py ``faces_template_quad``) in the ``FRAME`` px frame,
    float [4, 2] (pixel-centre coordinates scale about the image's outer corner)."""
    from alignment.align import faces_template_quad

    return (faces_template_quad(128) + 0.5) * (FRAME / 128.0) - 0.5


class RefinerFileError(RuntimeError):
    """The refiner file is missing, corrupt or not a corner refiner."""


def load_refiner(path: str | os.PathLike[str] | None = None) -> CornerRefiner:
    """A refiner saved by training/corner_refiner.py's ``save_refiner`` (default: the committed
    alignment/data file), in eval mode; raises
    :class:`RefinerFileError` naming the file and what is wrong."""
    path = Path(path) if path is not None else DEFAULT_PATH
    cfg, state, meta = read_model_file(path, FORMAT, "corner refiner", RefinerFileError)
    try:
        net = CornerRefiner(widths=cfg["widths"], hidden=cfg["hidden"], kinds=cfg["kinds"], patch=cfg["patch"])
        net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise RefinerFileError(f"{path}: weights do not match the refiner config: {e}") from e
    if net.patch != PATCH or net.kinds != 2:
        raise RefinerFileError(f"{path}: patch {net.patch} / kinds {net.kinds}, expected {PATCH} / 2")
    net.meta = meta  # type: ignore[assignment]
    return net.eval()
