"""A likeness figure a person would agree with: the worst local colour difference between two pictures.

PSNR and ST-LPIPS average over the whole picture, so an inversion that turns brown eyes blue, or greys
the hair, still scores well (a few dozen pixels of a 128 px face). People look at exactly those
features. :func:`local_colour_difference` finds the worst spot: both pictures are softened by a
Gaussian of ``blur`` pixels (edges a pixel off are a shape difference, not a colour one), converted to
CIE Lab, and the colour difference (CIE76 delta E, Euclidean in Lab) is averaged over every window of
``window`` pixels; the figure is the largest window's. About 2.3 is the smallest difference people
notice side by side; an eye colour changed across a whole iris reads 10 or more.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["local_colour_difference", "srgb_to_lab"]

_XYZ_FROM_LINEAR = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                                 [0.2126729, 0.7151522, 0.0721750],
                                 [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` sRGB in [0, 1] -> CIE Lab (D65): L in [0, 100], a and b about [-128, 127]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,njhw->nihw", _XYZ_FROM_LINEAR.to(rgb), linear) / _WHITE_D65.to(rgb).view(1, 3, 1, 1)
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    taps = (taps / taps.sum()).to(x.device)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                 groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


def local_colour_difference(a: np.ndarray, b: np.ndarray, blur: float = 1.0, window: int = 5
                            ) -> tuple[float, tuple[int, int]]:
    """(the largest window-mean CIE76 delta E between uint8 RGB pictures ``a`` and ``b`` of one size,
    that window's centre (x, y) in pixels). ``blur`` and ``window`` are in pixels of the pictures (the
    defaults suit a 128 px face: an iris is 3-5 px across)."""
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected two RGB pictures of one size, got {a.shape} and {b.shape}")

    def lab(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float() / 255.0
        return srgb_to_lab(_gaussian_blur(t, blur))

    delta = (lab(a) - lab(b)).pow(2).sum(1, keepdim=True).sqrt()
    pad = window // 2
    mean = F.avg_pool2d(F.pad(delta, (pad, pad, pad, pad), mode="replicate"), window, 1)[0, 0]
    index = int(mean.argmax())
    y, x = divmod(index, mean.shape[1])
    return float(mean.max()), (x, y)
