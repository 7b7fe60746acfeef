"""The single place where public conventions become the official DragGAN ones.

Public API (CONTRACTS.md): points are image pixels ``(x, y)`` floats, the mask is ``[H, W]`` float in
[0, 1] with ``1 = may move``, latents are ``ws [1, num_ws, w_dim]``.

Official code (``viz/renderer.py``): points are ``(row, col)`` integers, the mask is ``1 = fixed``,
and the optimised tensor is either ``w[:, :6]`` (W+) or a single ``w`` repeated 6 times.

Every conversion between the two lives here and nowhere else:

* :func:`handles_to_rowcol` rounds handle points with Python ``round`` (half to even), which is what
  the official code does when it reads a handle's reference feature; tracking then works on integers.
* :func:`targets_to_rowcol` keeps targets as floats (the official code never rounds them; for the
  integer targets its UIs send, the result is the same).
* :func:`fixed_mask_from_editable` inverts the mask and applies the official "only if the mask has
  both 0 and 1" rule.
* :func:`assemble_ws` broadcasts a single ``w`` and splices the optimised layers into ``w0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

PointXY = tuple[float, float]


def _as_point_list(points: object, field: str) -> list[tuple[float, float]]:
    """Validates a sequence of ``(x, y)`` pairs and returns them as Python floats."""
    if points is None:
        raise ValueError(f"{field}: no points given")
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field}: expected a sequence of (x, y) pairs, got {points!r}") from exc
    if array.size == 0:
        raise ValueError(f"{field}: no points given")
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{field}: expected a sequence of (x, y) pairs, got shape {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{field}: contains NaN or infinite coordinates")
    return [(float(x), float(y)) for x, y in array]


def validate_points(points: object, height: int, width: int, field: str) -> list[tuple[float, float]]:
    """Checks ``(x, y)`` image-pixel points: at least one, finite, inside ``[0, W-1] x [0, H-1]``.

    Returns the points as a list of float pairs. Raises ``ValueError`` naming ``field``.
    """
    pts = _as_point_list(points, field)
    for index, (x, y) in enumerate(pts):
        if not (0.0 <= x <= width - 1 and 0.0 <= y <= height - 1):
            raise ValueError(
                f"{field}[{index}] = ({x:g}, {y:g}) is outside the image "
                f"(x must be in [0, {width - 1}], y in [0, {height - 1}])"
            )
    return pts


def handles_to_rowcol(points_xy: Sequence[PointXY]) -> list[tuple[int, int]]:
    """Public ``(x, y)`` handles -> official integer ``(row, col)``, rounded with Python ``round``.

    Python ``round`` rounds half to even (``round(2.5) == 2``), exactly like the official
    ``round(point[0])``.
    """
    return [(round(y), round(x)) for x, y in points_xy]


def targets_to_rowcol(points_xy: Sequence[PointXY]) -> list[tuple[float, float]]:
    """Public ``(x, y)`` targets -> official ``(row, col)``, kept as floats (never rounded officially)."""
    return [(float(y), float(x)) for x, y in points_xy]


def rowcol_to_xy(points_rowcol: Sequence[Sequence[float]]) -> list[PointXY]:
    """Official ``(row, col)`` -> public ``(x, y)`` floats."""
    return [(float(p[1]), float(p[0])) for p in points_rowcol]


def fixed_mask_from_editable(
    mask: object, height: int, width: int, field: str = "mask"
) -> torch.Tensor | None:
    """Public mask (``1 = may move``) -> official mask (``1 = fixed``) as float32 ``[H, W]``, or None.

    ``None`` in gives ``None`` out. The official renderer applies its mask term only when the mask
    has both a 0 and a 1 (``mask.min() == 0 and mask.max() == 1``); when that does not hold, this
    returns ``None`` too, so callers never need to repeat the rule. Soft (feathered) values in
    between are kept as weights, as the official ``F * m`` does.
    """
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor):
        array = mask.detach().cpu().to(torch.float32).numpy()
    else:
        try:
            array = np.asarray(mask, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{field}: expected a float array of shape [{height}, {width}]") from exc
    if array.shape != (height, width):
        raise ValueError(f"{field}: expected shape [{height}, {width}] (image size), got {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{field}: contains NaN or infinite values")
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(f"{field}: values must be in [0, 1] (1 = may move), got [{array.min()}, {array.max()}]")
    fixed = torch.from_numpy(1.0 - array)
    if not (float(fixed.min()) == 0.0 and float(fixed.max()) == 1.0):
        return None
    return fixed


def pixel_radius(radius_at_512: float, resolution: int) -> int:
    """Official radius scaling: ``round(r / 512 * H)`` with Python ``round`` (half to even).

    Examples: r=10 at 128 -> round(2.5) = 2; r=20 at 128 -> 5; r=3 at 256 -> round(1.5) = 2.
    """
    return round(radius_at_512 / 512 * resolution)


def stop_threshold(resolution: int) -> float:
    """Official stop distance in pixels: ``max(2 / 512 * H, 2)`` (2 px for H <= 512)."""
    return max(2 / 512 * resolution, 2)


def validate_ws(ws: object, num_ws: int, w_dim: int, field: str = "ws") -> torch.Tensor:
    """Checks a latent ``[1, num_ws, w_dim]``, finite. Returns it as a detached float32 tensor."""
    if isinstance(ws, np.ndarray):
        ws = torch.from_numpy(ws)
    if not isinstance(ws, torch.Tensor):
        raise ValueError(f"{field}: expected a tensor of shape [1, {num_ws}, {w_dim}], got {type(ws).__name__}")
    if tuple(ws.shape) != (1, num_ws, w_dim):
        raise ValueError(f"{field}: expected shape [1, {num_ws}, {w_dim}], got {list(ws.shape)}")
    if not ws.is_floating_point():
        raise ValueError(f"{field}: expected a floating-point tensor, got {ws.dtype}")
    if not bool(torch.isfinite(ws).all()):
        raise ValueError(f"{field}: contains NaN or infinite values")
    return ws.detach().to(torch.float32)


def initial_optimised_latent(w0: torch.Tensor, latent: str, optimize_ws: int) -> torch.Tensor:
    """The tensor Adam optimises, as the official ``init_network``: W+ -> ``w0[:, :k]``; w -> ``w0[:, 0]``.

    Shapes: W+ ``[1, k, w_dim]``; w ``[1, w_dim]``. Only the first ``k`` layers are ever used, so the
    official code's extra, never-updated layers are left out (Adam is element-wise: same result).
    """
    if latent == "w+":
        return w0[:, :optimize_ws].detach().clone()
    return w0[:, 0].detach().clone()


def assemble_ws(w_opt: torch.Tensor, w0: torch.Tensor, optimize_ws: int) -> torch.Tensor:
    """``ws = cat(w[:, :k], w0[:, k:])``, broadcasting a single ``w [1, w_dim]`` to the first k layers.

    The one place where a single w is broadcast. Returns ``[1, num_ws, w_dim]``; gradients flow
    into ``w_opt``.
    """
    if w_opt.dim() == 2:
        w_opt = w_opt.unsqueeze(1).repeat(1, optimize_ws, 1)
    return torch.cat([w_opt[:, :optimize_ws], w0[:, optimize_ws:]], dim=1)


def is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
