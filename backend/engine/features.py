"""Reading the image-resolution feature map without building it.

The official drag step resizes block features ``f [1, C, h, w]`` to the image size with
``F = interpolate(f, [H, W], mode='bilinear', align_corners=False)`` and then reads ``F`` at integer
pixels (references, tracking windows, supervised pixels) and at fractional positions with
``grid_sample(F, ..., align_corners=True)`` (zeros padding) for the shifted motion sample.

Both reads can be done on the low-resolution map directly:

* ``F[r, c]`` at an integer pixel is the bilinear interpolation of ``f`` at the source coordinate
  ``s = (r + 0.5) * h / H - 0.5`` clamped to ``[0, h-1]`` (``interpolate`` clamps below at 0 and uses
  index ``min(i0 + 1, h - 1)`` above, which is the same as clamping). That is exactly
  ``grid_sample(f, g, align_corners=False, padding_mode='border')`` with ``g = (2r + 1) / H - 1``: it
  unnormalises to ``((g + 1) * h - 1) / 2 = s`` and clamps to the border. With power-of-two size
  ratios every one of these numbers is exact in float32, so the values equal ``interpolate``'s up to
  its own summation order; at a 1:1 ratio they are bit-identical copies.
* ``grid_sample(F, q, align_corners=True)`` at a fractional pixel ``q = (y, x)`` is the bilinear blend
  of ``F`` at the four integer corners around ``q``, a corner outside ``[0, H-1] x [0, W-1]`` counting as
  zero. Each corner is read as above, so one small ``grid_sample`` on ``f`` (4 taps per position)
  replaces the ``C x H x W`` upsample.

Shapes: ``f [1, C, h, w]``; positions are tensors of any shape ``S``; results are ``[C, *S]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_features(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The official resize: ``interpolate(f, [H, W], mode='bilinear')`` (align_corners=False)."""
    return F.interpolate(features, [height, width], mode="bilinear")


def sample_at_pixels(
    features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``upsample_features(f, H, W)[0, :, rows, cols]`` computed on the low-resolution map.

    ``rows``/``cols``: integer-valued tensors (any dtype) of the same shape ``S`` with values in
    ``[0, H-1]`` / ``[0, W-1]``. Returns ``[C, *S]``, differentiable with respect to ``features``.
    """
    shape = rows.shape
    grid_y = (2.0 * rows.reshape(-1).to(features.dtype) + 1.0) / height - 1.0
    grid_x = (2.0 * cols.reshape(-1).to(features.dtype) + 1.0) / width - 1.0
    grid = torch.stack([grid_x, grid_y], dim=-1).view(1, 1, -1, 2)
    values = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return values.view(features.shape[1], *shape)


def sample_bilinear(
    features: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``grid_sample(upsample_features(f, H, W), (ys, xs), align_corners=True)`` (zeros padding).

    ``ys``/``xs``: float pixel coordinates on the ``H x W`` image grid, same shape ``S``. Returns
    ``[C, *S]``, differentiable with respect to ``features``.
    """
    shape = ys.shape
    ys = ys.reshape(-1)
    xs = xs.reshape(-1)
    y0 = torch.floor(ys)
    x0 = torch.floor(xs)
    ty = (ys - y0).unsqueeze(0)
    tx = (xs - x0).unsqueeze(0)
    corner_rows = torch.stack([y0, y0, y0 + 1, y0 + 1])  # [4, M]
    corner_cols = torch.stack([x0, x0 + 1, x0, x0 + 1])
    weights = torch.stack([(1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx]).squeeze(1)
    inside = (corner_rows >= 0) & (corner_rows <= height - 1) & (corner_cols >= 0) & (corner_cols <= width - 1)
    weights = weights * inside.to(weights.dtype)
    corners = sample_at_pixels(
        features, corner_rows.clamp(0, height - 1), corner_cols.clamp(0, width - 1), height, width
    )  # [C, 4, M]
    values = (corners * weights.unsqueeze(0)).sum(dim=1)
    return values.view(features.shape[1], *shape)
