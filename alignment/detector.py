"""Keypoint detector for the procedural face domain (training/faces.py renders): network, loading, prediction.

A small CNN: a strided encoder down to 1/16 resolution, a top-down path back to 1/4 resolution
(feature-pyramid style: upsample + add lateral 1x1 projections), and a head that predicts per
keypoint a heatmap logit and a sub-cell (dx, dy) offset at every 1/4-resolution cell. The
keypoint is the softmax-weighted mean over cells of ``cell centre + offset`` ("integral
regression with offsets"): differentiable, trained directly on the coordinates, and the offsets
carry the sub-pixel precision that a 1/4-resolution heatmap alone lacks.

Coordinates: (x, y) image pixels with ``x = j`` at the centre of pixel column ``j`` (the
convention of training/faces.py). Inputs: uint8 ``[N, H, W, 3]`` RGB, or a float tensor
``[N, 3, H, W]`` in [-1, 1]; H and W must be multiples of 16 (128 x 128 for the committed model,
which was trained at the default model resolution).

The saved file is ``{"format": FORMAT, "config": {...}, "state_dict": {...}, "meta": {...}}``,
loadable with ``torch.load(path, weights_only=True)``; the committed one is alignment/data/keypoint_detector.pt,
written by ``python -m training.train_detector`` (training/detector.py ``save_detector``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignment.model_files import read_model_file

FORMAT = "draggan-keypoint-detector-v1"
DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "keypoint_detector.pt"


class DetectorFileError(RuntimeError):
    """The detector file is missing, corrupt or not a keypoint detector."""


def flip_permutation(names: list[str]) -> list[int] | None:
    """Index map that swaps left/right keypoints for a horizontally mirrored image (None when the
    names do not pair up)."""
    def swap(n: str) -> str:
        return n.replace("left", "\0").replace("right", "left").replace("\0", "right")
    try:
        return [names.index(swap(n)) for n in names] if names else None
    except ValueError:
        return None


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _Block(nn.Module):
    """Residual block: two 3x3 convs (the first may stride), projection shortcut when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.short(x))


class KeypointDetector(nn.Module):
    """CNN keypoint detector: images -> (x, y) pixel coordinates of ``num_keypoints`` keypoints."""

    def __init__(self, num_keypoints: int = 16, widths: tuple[int, ...] | list[int] = (16, 24, 48, 96),
                 head_width: int = 40, keypoint_names: list[str] | None = None):
        super().__init__()
        w1, w4, w8, w16 = widths
        self.config: dict[str, Any] = {"num_keypoints": int(num_keypoints), "widths": [int(w) for w in widths],
                                       "head_width": int(head_width),
                                       "keypoint_names": list(keypoint_names or [])}
        self.num_keypoints = int(num_keypoints)
        self.stem = nn.Sequential(_conv_bn(3, w1, 2), _conv_bn(w1, w4, 2))  # 1/4
        self.stage4 = _Block(w4, w4)
        self.stage8 = nn.Sequential(_Block(w4, w8, 2), _Block(w8, w8))  # 1/8
        self.stage16 = nn.Sequential(_Block(w8, w16, 2), _Block(w16, w16))  # 1/16
        self.lat16 = nn.Conv2d(w16, head_width, 1)
        self.lat8 = nn.Conv2d(w8, head_width, 1)
        self.lat4 = nn.Conv2d(w4, head_width, 1)
        self.head = nn.Sequential(_conv_bn(head_width, head_width), nn.Conv2d(head_width, 3 * num_keypoints, 1))
        self.feature_dim = w16 + w8
        self.stride = 4

    # ------------------------------------------------------------------ core
    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4 = self.stage4(self.stem(x))
        f8 = self.stage8(f4)
        f16 = self.stage16(f8)
        return f4, f8, f16

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float ``[N, 3, H, W]`` in [-1, 1] -> (keypoints ``[N, K, 2]`` (x, y) pixels,
        heatmap logits ``[N, K, H/4, W/4]``)."""
        f4, f8, f16 = self._encode(x)
        p = self.lat16(f16)
        p = F.interpolate(p, size=f8.shape[-2:], mode="nearest") + self.lat8(f8)
        p = F.interpolate(p, size=f4.shape[-2:], mode="nearest") + self.lat4(f4)
        out = self.head(p)
        n, _, h, w = out.shape
        k = self.num_keypoints
        logits = out[:, :k]
        offsets = out[:, k:].reshape(n, k, 2, h, w)
        prob = torch.softmax(logits.reshape(n, k, h * w), dim=-1).reshape(n, k, h, w)
        s = self.stride
        # centre of output cell (r, c) in input pixels (x = j at pixel j's centre): s*c + (s-1)/2
        cx = torch.arange(w, dtype=out.dtype, device=out.device) * s + (s - 1) / 2
        cy = torch.arange(h, dtype=out.dtype, device=out.device) * s + (s - 1) / 2
        px = cx.view(1, 1, 1, w) + offsets[:, :, 0] * s
        py = cy.view(1, 1, h, 1) + offsets[:, :, 1] * s
        kx = (prob * px).sum(dim=(-2, -1))
        ky = (prob * py).sum(dim=(-2, -1))
        return torch.stack([kx, ky], dim=-1), logits

    # ------------------------------------------------------------------ public helpers
    def _as_input(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        device = next(self.parameters()).device
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
            x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
            x = x / 127.5 - 1.0
        elif isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"image tensor must be [N, 3, H, W], got {list(images.shape)}")
            x = images.to(device=device, dtype=torch.float32)
        else:
            raise ValueError(f"images must be a numpy uint8 array or a torch tensor, got {type(images)}")
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"image height and width must be multiples of 16, got {list(x.shape[-2:])}")
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or inf")
        return x

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 64,
                flip_average: bool | None = None) -> np.ndarray:
        """Keypoints of ``images`` (uint8 ``[N, H, W, 3]`` or float ``[N, 3, H, W]`` in [-1, 1]):
        float32 ``[N, K, 2]``, (x, y) pixels, x = j at the centre of pixel column j.
        ``flip_average`` also runs the mirrored images and averages the two (twice the time, about
        10 % lower error); None (default) = whenever the keypoint names pair up left/right."""
        was_training = self.training
        self.eval()
        x = self._as_input(images)
        perm = flip_permutation(self.config["keypoint_names"]) if flip_average is not False else None
        if flip_average is True and perm is None:
            raise ValueError("flip_average needs keypoint names with left/right in the detector config")
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            k = self(xb)[0]
            if perm is not None:
                kf = self(xb.flip(-1))[0][:, perm]
                kf[..., 0] = (x.shape[-1] - 1) - kf[..., 0]
                k = (k + kf) / 2
            out.append(k)
        self.train(was_training)
        if not out:
            return np.zeros((0, self.num_keypoints, 2), dtype=np.float32)
        return torch.cat(out).float().cpu().numpy()

    def backbone_features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``[N, feature_dim]`` (global mean of the 1/8 and 1/16 stages), a
        FID-like embedding. Gradients flow when the input requires them; call under no_grad otherwise."""
        x = self._as_input(images)
        _, f8, f16 = self._encode(x)
        return torch.cat([f16.mean(dim=(-2, -1)), f8.mean(dim=(-2, -1))], dim=1)


# ---------------------------------------------------------------------- files


def load_detector(path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> KeypointDetector:
    """Load a detector saved by training/detector.py's ``save_detector`` (default: the committed
    ``alignment/data`` file),
    in eval mode. Raises ``DetectorFileError`` naming the file and what is wrong."""
    path = Path(path) if path is not None else DEFAULT_PATH
    cfg, state, meta = read_model_file(path, FORMAT, "keypoint detector", DetectorFileError)
    try:
        det = KeypointDetector(num_keypoints=cfg["num_keypoints"], widths=cfg["widths"],
                               head_width=cfg["head_width"], keypoint_names=cfg.get("keypoint_names"))
        det.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DetectorFileError(f"{path}: weights do not match the detector config: {e}") from e
    det.meta = meta  # type: ignore[assignment]
    return det.to(device).eval()
