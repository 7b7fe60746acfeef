"""Paths -> (handle, target) pairs, and the error texts that say what to draw."""

from __future__ import annotations

import pytest
from draggan_core import errors, points

from . import fakegimp


def test_consecutive_anchor_pairs_of_each_stroke() -> None:
    strokes = [[(1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.5, 8.25)], [(10.0, 11.0), (12.0, 13.0)]]
    drag = points.pairs_from_strokes(strokes, "p")
    assert drag.handles == [(1.0, 2.0), (5.0, 6.0), (10.0, 11.0)]
    assert drag.targets == [(3.0, 4.0), (7.5, 8.25), (12.0, 13.0)]
    assert all(isinstance(c, float) for p in drag.all_points() for c in p)


def test_odd_anchor_count_names_the_stroke_and_says_what_to_draw() -> None:
    with pytest.raises(errors.PluginError) as info:
        points.pairs_from_strokes([[(1, 1), (2, 2)], [(1, 1), (2, 2), (3, 3)]], "Drag me")
    msg = info.value.message
    assert "stroke 2 of path 'Drag me' has 3 anchors" in msg
    assert "Paths tool" in msg and "handle" in msg and "target" in msg
    assert info.value.calling


def test_single_anchor_message_is_singular() -> None:
    with pytest.raises(errors.PluginError, match="has 1 anchor, an odd number"):
        points.pairs_from_strokes([[(1, 1)]], "p")


@pytest.mark.parametrize("strokes", [[], [[]], [[], []]])
def test_no_strokes(strokes) -> None:
    with pytest.raises(errors.PluginError, match="path 'P' has no strokes.*Paths tool"):
        points.pairs_from_strokes(strokes, "P")


def test_anchor_floats_are_the_middle_pair_of_each_six() -> None:
    floats = [0, 0, 10.5, 20.25, 0, 0, 1, 1, 30, 40, 2, 2]
    assert points.anchors_from_stroke_floats(floats) == [(10.5, 20.25), (30.0, 40.0)]
    with pytest.raises(ValueError):
        points.anchors_from_stroke_floats([1, 2, 3])


def test_path_choice_active_chosen_single_none() -> None:
    image, _layer = fakegimp.make_photo(20, 20)
    with pytest.raises(errors.PluginError, match="has no path.*Paths tool"):
        points.drag_points_from_image(image, None)
    first = fakegimp.add_path(image, [[(1, 1), (2, 2)]], "first")
    assert points.drag_points_from_image(image, None).handles == [(1.0, 1.0)]
    second = fakegimp.add_path(image, [[(5, 5), (6, 6)]], "second")   # inserting selects it
    assert points.drag_points_from_image(image, None).handles == [(5.0, 5.0)]
    assert points.drag_points_from_image(image, first).handles == [(1.0, 1.0)]
    image.selected_paths = []
    with pytest.raises(errors.PluginError, match="2 paths and none is active"):
        points.drag_points_from_image(image, None)
    other, _ = fakegimp.make_photo(5, 5)
    with pytest.raises(errors.PluginError, match="does not belong to this image"):
        points.drag_points_from_image(other, second)


def test_points_must_lie_on_the_layer_in_image_coordinates() -> None:
    drag = points.DragPoints([(15.0, 12.0)], [(45.0, 12.0)])
    points.check_inside(drag, (10, 10, 40, 20), "L")            # x 10..50, y 10..30
    with pytest.raises(errors.PluginError) as info:
        points.check_inside(drag, (20, 10, 40, 20), "Photo")
    assert "handle 1 at (15.0, 12.0) lies outside the layer 'Photo'" in info.value.message
    assert "x 20..60" in info.value.message


def test_dialog_summary_line_says_what_the_path_holds_or_what_is_wrong() -> None:
    from draggan_core import dialog

    image, _layer = fakegimp.make_photo(20, 20)
    assert dialog.points_text(image, None).startswith("the image has no path")
    path = fakegimp.add_path(image, [[(1, 1), (2, 2), (3, 3), (4, 4)], [(5, 5), (6, 6)]], "P")
    assert dialog.points_text(image, None) == "3 drags (handle → target) from path 'P'"
    path.strokes[2].append((7, 7))
    assert "has 3 anchors, an odd number" in dialog.points_text(image, path)
