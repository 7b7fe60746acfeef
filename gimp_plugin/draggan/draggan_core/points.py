"""Drag points from a GIMP path.

A path holds strokes; each stroke is a list of anchors. Consecutive anchor pairs of a stroke are
(handle, target): anchors 1+2 are the first drag, 3+4 the second, and so on, so a user can draw
one stroke per drag (two clicks, then Shift+click for the next) or one long stroke.

Coordinates: GIMP path anchors are image coordinates, floats, x then y.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import errors

Point = tuple[float, float]

# GIMP returns a bezier stroke as 6 floats per anchor: in-control x, y, ANCHOR x, y, out-control x, y.
FLOATS_PER_ANCHOR = 6


@dataclass(frozen=True)
class DragPoints:
    """Handles and targets in image coordinates (pixels, floats, x then y); same length >= 1."""

    handles: list[Point]
    targets: list[Point]

    def all_points(self) -> list[Point]:
        return list(self.handles) + list(self.targets)


def anchors_from_stroke_floats(floats: Sequence[float]) -> list[Point]:
    """Anchor positions from `path.stroke_get_points()`'s flat float list (6 per anchor)."""
    if len(floats) % FLOATS_PER_ANCHOR:
        raise ValueError(f"a bezier stroke has 6 floats per anchor, got {len(floats)} floats")
    return [(float(floats[i + 2]), float(floats[i + 3])) for i in range(0, len(floats), FLOATS_PER_ANCHOR)]


def pairs_from_strokes(strokes: Sequence[Sequence[Point]], path_name: str) -> DragPoints:
    """Pair consecutive anchors of each stroke into (handle, target).

    Raises PluginError (what to draw) for no strokes or a stroke with an odd anchor count.
    """
    if not strokes:
        raise errors.no_strokes(path_name)
    handles: list[Point] = []
    targets: list[Point] = []
    for number, anchors in enumerate(strokes, start=1):
        if len(anchors) == 0:
            continue
        if len(anchors) % 2:
            raise errors.odd_anchors(path_name, number, len(anchors))
        for i in range(0, len(anchors), 2):
            handles.append((float(anchors[i][0]), float(anchors[i][1])))
            targets.append((float(anchors[i + 1][0]), float(anchors[i + 1][1])))
    if not handles:
        raise errors.no_strokes(path_name)
    return DragPoints(handles, targets)


def strokes_of_path(path: Any) -> list[list[Point]]:
    """Anchors of each stroke of a `Gimp.Path` (duck-typed: get_strokes, stroke_get_points)."""
    strokes = []
    for stroke_id in path.get_strokes() or []:
        _type, floats, _closed = path.stroke_get_points(stroke_id)
        strokes.append(anchors_from_stroke_floats(list(floats)))
    return strokes


def choose_path(image: Any, chosen: Any | None) -> Any:
    """The path to read: the one chosen in the dialog, else the active (selected) one.

    When no path is selected but the image has exactly one, that one is used.
    Raises PluginError when there is none.
    """
    if chosen is not None:
        if chosen.get_image() is not None and chosen.get_image().get_id() != image.get_id():
            raise errors.unknown_path(chosen.get_name())
        return chosen
    selected = list(image.get_selected_paths() or [])
    if selected:
        return selected[0]
    every = list(image.get_paths() or [])
    if len(every) == 1:
        return every[0]
    if not every:
        raise errors.no_path()
    raise errors.PluginError(
        f"DragGAN: the image has {len(every)} paths and none is active. Click the path with the drag "
        "points in the Paths dock (or choose it in the dialog). " + errors.HOW_TO_DRAW,
        calling=True,
    )


def drag_points_from_image(image: Any, chosen_path: Any | None) -> DragPoints:
    """Handles and targets (image coordinates) from the chosen or active path."""
    path = choose_path(image, chosen_path)
    return pairs_from_strokes(strokes_of_path(path), path.get_name())


def check_inside(points: DragPoints, rect: tuple[int, int, int, int], layer_name: str) -> None:
    """Every handle and target must lie on the layer (rect = x, y, w, h in image coordinates)."""
    x0, y0, w, h = rect
    for kind, seq in (("handle", points.handles), ("target", points.targets)):
        for number, (x, y) in enumerate(seq, start=1):
            if not (x0 <= x <= x0 + w and y0 <= y <= y0 + h):
                raise errors.point_outside_layer(kind, number, x, y, layer_name, rect)
