"""Motion supervision, mask term and stop rule of the DragGAN step (paper section 3.2, official code).

Points are official ``(row, col)``: handles integer, targets float. ``H, W`` is the image size.

Motion supervision for a handle ``p`` with target ``t`` (official ``viz/renderer.py``):

* ``d = (t - p)`` as float32; the handle is skipped when ``||d|| <= 1``, else ``d / (||d|| + 1e-7)``;
* supervised pixels: ``(i, j)`` with ``sqrt((xx_i - p.row)^2 + (yy_j - p.col)^2) < r1_px`` (strict)
  where ``xx = linspace(0, H, H)``, ``yy = linspace(0, W, W)`` -- *not* ``arange``: the official quirk
  that shifts the disk about half a pixel up-left of the handle;
* term: ``l1_loss(F[i, j].detach(), F(i + d.row, j + d.col))``, a mean over channels x pixels, with
  the shifted sample read bilinearly (``align_corners=True``, zeros outside the image); the gradient
  flows through the shifted sample only.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .sources import FeatureSource

MIN_MOTION_DISTANCE = 1.0  # official: handles within 1 px of their target get no motion term


def directions(points: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets - points)`` as float32 ``[P, 2]`` (row, col) and its norm ``[P]``.

    The difference is taken in float64 and then rounded to float32, as the official
    ``torch.Tensor([t.col - p.col, t.row - p.row])`` does with Python numbers.
    """
    delta = (targets.to(torch.float64) - points.to(torch.float64)).to(torch.float32)
    return delta, torch.linalg.norm(delta, dim=1)


def stop_reached(points: torch.Tensor, targets: torch.Tensor, threshold: float) -> bool:
    """Official stop rule: every handle within ``threshold`` pixels of its target (``<=``)."""
    return bool(stop_reached_tensor(points, targets, threshold))


def stop_reached_tensor(points: torch.Tensor, targets: torch.Tensor, threshold: float) -> torch.Tensor:
    """:func:`stop_reached` as a 0-d bool tensor on the points' device (no host synchronisation)."""
    _, norms = directions(points, targets)
    return (norms <= threshold).all()


def supervised_pixels_reference(point: tuple[int, int], radius: int, height: int, width: int) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """The official disk, computed the official way over the whole image: ``(rows, cols)`` int64."""
    xx, yy = torch.meshgrid(torch.linspace(0, height, height), torch.linspace(0, width, width), indexing="ij")
    distance = ((xx - point[0]) ** 2 + (yy - point[1]) ** 2) ** 0.5
    rows, cols = torch.where(distance < radius)
    return rows, cols


@functools.lru_cache(maxsize=16)
def _official_linspaces(height: int, width: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``linspace(0, H, H)`` and ``linspace(0, W, W)`` computed on the CPU as the official code does,
    copied to ``device`` once (not every step: a host-to-device copy waits for the device)."""
    return (torch.linspace(0, height, height).to(device), torch.linspace(0, width, width).to(device))


def supervised_pixels(
    points: torch.Tensor, radius: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official disks for all handles in a fixed ``(2r+3)^2`` window each, row-major.

    Returns rows, cols (int64, clamped into the image) and a bool mask of the supervised ones, all
    ``[P, K*K]``. Because ``xx_i = i * H / (H - 1)`` lies in ``[i, i + 1]``, every pixel with
    ``|xx_i - p| < r`` has ``p - r - 1 < i < p + r``, so the window ``p - r - 1 .. p + r + 1`` holds the
    whole disk. The distance is computed with the same float32 operations as the official code, so
    the strict ``<`` picks exactly the same pixels.
    """
    device = points.device
    lin_rows, lin_cols = _official_linspaces(height, width, str(device))
    offsets = torch.arange(-radius - 1, radius + 2, device=device)
    rows = points[:, 0:1, None] + offsets.view(1, -1, 1)
    cols = points[:, 1:2, None] + offsets.view(1, 1, -1)
    rows, cols = torch.broadcast_tensors(rows, cols)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    rows = rows.clamp(0, height - 1)
    cols = cols.clamp(0, width - 1)
    prow = points[:, 0].view(-1, 1, 1).to(torch.float32)
    pcol = points[:, 1].view(-1, 1, 1).to(torch.float32)
    distance = ((lin_rows[rows] - prow) ** 2 + (lin_cols[cols] - pcol) ** 2) ** 0.5
    supervised = inside & (distance < radius)
    count = points.shape[0]
    return rows.reshape(count, -1), cols.reshape(count, -1), supervised.reshape(count, -1)


def motion_loss_reference(
    full: torch.Tensor, points: list[tuple[int, int]], targets: list[tuple[float, float]], radius: int
) -> torch.Tensor:
    """The official per-handle loop on ``full [1, C, H, W]``. Returns a 0-d tensor (0 when all skip)."""
    height, width = full.shape[2], full.shape[3]
    loss = full.new_zeros(())
    for point, target in zip(points, targets):
        delta, norm = directions(torch.tensor([point]), torch.tensor([target], dtype=torch.float64))
        if float(norm[0]) <= MIN_MOTION_DISTANCE:
            continue
        step = delta[0] / (norm[0] + 1e-7)
        rows, cols = supervised_pixels_reference(point, radius, height, width)
        grid_h = (rows + step[0]) / (height - 1) * 2 - 1
        grid_w = (cols + step[1]) / (width - 1) * 2 - 1
        grid = torch.stack([grid_w, grid_h], dim=-1).view(1, 1, -1, 2).to(full.device)
        shifted = F.grid_sample(full.float(), grid, align_corners=True).squeeze(2)
        loss = loss + F.l1_loss(full[:, :, rows, cols].detach(), shifted)
    return loss


def motion_loss(
    source: FeatureSource, points: torch.Tensor, targets: torch.Tensor, radius: int
) -> torch.Tensor:
    """All handles at once. ``points [P, 2]`` int64, ``targets [P, 2]`` float ``(row, col)``.

    Equals :func:`motion_loss_reference` (a sum over active handles of per-handle means over
    channels x supervised pixels) up to float summation order. Returns a 0-d tensor.
    """
    delta, norm = directions(points, targets)
    active = norm > MIN_MOTION_DISTANCE
    step = delta / (norm.unsqueeze(1) + 1e-7)  # [P, 2]
    rows, cols, supervised = supervised_pixels(points, radius, source.height, source.width)
    here = source.at_pixels(rows, cols).detach()  # [C, P, M]
    shifted = source.bilinear(rows.to(step.dtype) + step[:, 0:1], cols.to(step.dtype) + step[:, 1:2])
    counts = supervised.sum(dim=1).clamp(min=1).to(here.dtype)  # [P]
    weights = supervised.to(here.dtype) * (active.to(here.dtype) / (counts * source.channels)).unsqueeze(1)
    return ((here - shifted).abs() * weights.unsqueeze(0)).sum()


def mask_loss(features: torch.Tensor, initial: torch.Tensor, fixed_mask: torch.Tensor) -> torch.Tensor:
    """Official mask term (unweighted): ``l1_loss(F * m, F0 * m)``, a mean over all ``C*H*W`` elements.

    ``features``, ``initial`` ``[1, C, h, w]``; ``fixed_mask`` ``[h, w]`` (1 = fixed) at the same size.
    """
    mask = fixed_mask.to(features.dtype).view(1, 1, *fixed_mask.shape)
    return F.l1_loss(features * mask, initial * mask)


def mask_at_resolution(fixed_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area-average of the ``[H, W]`` fixed mask down to the feature map's ``[h, w]`` (identity at 1:1)."""
    if tuple(fixed_mask.shape) == (height, width):
        return fixed_mask
    return F.interpolate(fixed_mask[None, None], [height, width], mode="area")[0, 0]
