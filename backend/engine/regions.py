"""Which part of the feature map a fast drag step reads, so that only that part is synthesised.

Without a mask, a step reads the features only near the handles: the tracking window (``r2``
around the previous position), then the motion-supervision disk (``r1 + 1`` around the tracked
position, which is within ``r2`` of the previous one) and its shifted bilinear samples (one more
pixel each way, and one for the bilinear corner). Everything else in the map cannot change the
step, so :meth:`stylegan2.SynthesisNetwork.features_in_regions` computes just these boxes (and what
they depend on in earlier blocks). The mask term reads the whole map: with a mask there is no region.
"""

from __future__ import annotations

import math

Region = tuple[int, int, int, int]  # (top, bottom, left, right) in feature-map pixels, half-open

EXTRA_READ_PX = 3  # disk edge (r1 + 1) + the unit shift + the bilinear corner, beyond r1
SAFETY_PX = 1      # one more feature pixel each side: a read never relies on an exact edge


def step_reach(r1_px: int, r2_px: int) -> int:
    """Image pixels around a handle's previous position that one step can read."""
    return r2_px + r1_px + EXTRA_READ_PX


def _feature_span(low: int, high: int, size: int, feature_size: int) -> tuple[int, int]:
    """Feature rows read for image rows ``low..high`` (inclusive): the official resize reads ``f`` at
    ``(r + 0.5) * h / H - 0.5``, i.e. rows ``floor(s)`` and ``floor(s) + 1``."""
    scale = feature_size / size
    first = math.floor((low + 0.5) * scale - 0.5) - SAFETY_PX
    last = math.floor((high + 0.5) * scale - 0.5) + 1 + SAFETY_PX
    return max(first, 0), min(last + 1, feature_size)


def _overlap(a: Region, b: Region) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def feature_regions(
    points_rc: list[tuple[int, int]],
    reach_px: int,
    image_size: tuple[int, int],
    feature_size: tuple[int, int],
    max_fraction: float = 0.5,
) -> list[Region] | None:
    """Disjoint feature-map boxes holding every value a step can read around ``points_rc``.

    ``points_rc``: handles ``(row, col)`` in image pixels; ``reach_px``: :func:`step_reach`;
    ``image_size``/``feature_size``: ``(H, W)`` / ``(h, w)``. Overlapping boxes are merged into
    their bounding box. Returns None when the boxes cover more than ``max_fraction`` of the map
    (computing the whole map is then about as cheap and simpler).
    """
    height, width = image_size
    feature_height, feature_width = feature_size
    boxes: list[Region] = []
    for row, col in points_rc:
        top, bottom = _feature_span(max(row - reach_px, 0), min(row + reach_px, height - 1), height, feature_height)
        left, right = _feature_span(max(col - reach_px, 0), min(col + reach_px, width - 1), width, feature_width)
        boxes.append((top, bottom, left, right))
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if _overlap(boxes[i], boxes[j]):
                    a, b = boxes[i], boxes.pop(j)
                    boxes[i] = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
                    merged = True
                    break
            if merged:
                break
    area = sum((b - t) * (r - l) for t, b, l, r in boxes)
    if not boxes or area > max_fraction * feature_height * feature_width:
        return None
    return boxes
