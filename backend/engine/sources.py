"""Two ways to read the image-resolution feature map ``F`` that the drag losses and tracking need.

* :class:`FullResFeatures` holds ``F [1, C, H, W]`` itself (the official way: the whole block output
  bilinearly resized to image size) and reads it with the official ops (indexing, ``grid_sample``
  with ``align_corners=True`` on the official normalised grid).
* :class:`LowResFeatures` holds the block output ``f [1, C, h, w]`` and reads the same values from
  it (see :mod:`backend.engine.features`), so ``F`` is never built.

Both expose ``at_pixels(rows, cols)`` (integer pixels, ``[C, *S]``) and ``bilinear(ys, xs)``
(fractional pixels, zeros outside the image, ``[C, *S]``); all positions are image pixels ``(row, col)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import sample_at_pixels, sample_bilinear, upsample_features


class FullResFeatures:
    """``F [1, C, H, W]`` at image resolution."""

    def __init__(self, full: torch.Tensor) -> None:
        self.full = full
        self.channels = full.shape[1]
        self.height = full.shape[2]
        self.width = full.shape[3]

    @classmethod
    def from_block(cls, block_features: torch.Tensor, height: int, width: int) -> FullResFeatures:
        return cls(upsample_features(block_features, height, width))

    def at_pixels(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.full[0][:, rows.long(), cols.long()]

    def bilinear(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        shape = ys.shape
        grid_y = ys.reshape(-1) / (self.height - 1) * 2 - 1
        grid_x = xs.reshape(-1) / (self.width - 1) * 2 - 1
        grid = torch.stack([grid_x, grid_y], dim=-1).view(1, 1, -1, 2)
        values = F.grid_sample(self.full, grid, align_corners=True)
        return values.view(self.channels, *shape)

    def detach(self) -> FullResFeatures:
        return FullResFeatures(self.full.detach())


class LowResFeatures:
    """Block output ``f [1, C, h, w]`` read as if it had been resized to ``H x W``."""

    def __init__(self, block_features: torch.Tensor, height: int, width: int) -> None:
        self.block = block_features
        self.channels = block_features.shape[1]
        self.height = height
        self.width = width

    def at_pixels(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return sample_at_pixels(self.block, rows, cols, self.height, self.width)

    def bilinear(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        return sample_bilinear(self.block, ys, xs, self.height, self.width)

    def detach(self) -> LowResFeatures:
        return LowResFeatures(self.block.detach(), self.height, self.width)


FeatureSource = FullResFeatures | LowResFeatures
