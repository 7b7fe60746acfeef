"""Point tracking: nearest neighbour of each handle's *initial* feature in a window around it.

Official rule (``viz/renderer.py``): window radius ``r = round(r2 / 512 * H)``; rows
``[max(p.row - r, 0), min(p.row + r + 1, H))`` and columns likewise; the new point is the argmin of the
channel L2 distance to the reference feature; ties go to the first index in row-major order.

Points here are official integer ``(row, col)``; tensors ``[P, 2]`` int64.
"""

from __future__ import annotations

import torch

from .sources import FeatureSource


def track_points_reference(
    full: torch.Tensor, refs: list[torch.Tensor], points: list[tuple[int, int]], radius: int
) -> list[tuple[int, int]]:
    """The official per-point loop on the full map ``full [1, C, H, W]``; ``refs[j]`` is ``[1, C]``."""
    height, width = full.shape[2], full.shape[3]
    tracked = []
    with torch.no_grad():
        for j, (row, col) in enumerate(points):
            up = max(row - radius, 0)
            down = min(row + radius + 1, height)
            left = max(col - radius, 0)
            right = min(col + radius + 1, width)
            patch = full[:, :, up:down, left:right]
            distance = torch.linalg.norm(patch - refs[j].reshape(1, -1, 1, 1), dim=1)
            index = int(torch.min(distance.view(1, -1), -1)[1].item())
            span = right - left
            tracked.append((index // span + up, index % span + left))
    return tracked


def window_positions(
    points: torch.Tensor, radius: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``(2r+1)^2`` window around each point, row-major: rows, cols, inside-image mask, ``[P, K*K]``.

    Positions outside the image are clamped onto it (so they can be read) and flagged in the mask.
    """
    offsets = torch.arange(-radius, radius + 1, device=points.device)
    rows = points[:, 0:1, None] + offsets.view(1, -1, 1)  # [P, K, 1]
    cols = points[:, 1:2, None] + offsets.view(1, 1, -1)  # [P, 1, K]
    rows, cols = torch.broadcast_tensors(rows, cols)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    rows = rows.clamp(0, height - 1).reshape(points.shape[0], -1)
    cols = cols.clamp(0, width - 1).reshape(points.shape[0], -1)
    return rows, cols, inside.reshape(points.shape[0], -1)


def nearest_in_window(window_features: torch.Tensor, inside: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Index of the nearest feature per point: ``window_features [C, P, M]``, ``inside [P, M]``,
    ``refs [P, C]`` -> ``[P]`` int64. Positions outside the image never win; ties -> first index."""
    distance = torch.linalg.norm(window_features - refs.t().unsqueeze(-1), dim=0)  # [P, M]
    distance = distance.masked_fill(~inside, float("inf"))
    return torch.argmin(distance, dim=1)


def track_points(
    source: FeatureSource, refs: torch.Tensor, points: torch.Tensor, radius: int
) -> torch.Tensor:
    """All handles at once: ``points [P, 2]`` int64 ``(row, col)``, ``refs [P, C]`` -> ``[P, 2]``.

    Same result as :func:`track_points_reference` (the clipped official window is the full window
    minus the positions flagged outside, in the same row-major order).
    """
    with torch.no_grad():
        rows, cols, inside = window_positions(points, radius, source.height, source.width)
        window = source.at_pixels(rows, cols)  # [C, P, M]
        best = nearest_in_window(window, inside, refs)
        picked = best.unsqueeze(1)
        return torch.stack([rows.gather(1, picked)[:, 0], cols.gather(1, picked)[:, 0]], dim=1)
