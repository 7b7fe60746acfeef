"""Crop geometry: model aspect, clamping to the layer, margins, modes; model coordinates; mask plan."""

from __future__ import annotations

import random

import pytest
from draggan_core import errors, geometry
from draggan_core.geometry import Rect


def _inside(crop: Rect, layer: Rect) -> bool:
    return layer.contains_rect(crop)


def test_auto_crop_has_model_aspect_margin_and_at_least_model_size() -> None:
    layer = Rect(0, 0, 1000, 800)
    pts = [(400.0, 300.0), (460.0, 330.0)]
    crop = geometry.plan_crop(pts, layer, (256, 256))
    assert crop.w == crop.h == 256          # small drag: the model's own resolution
    crop = geometry.plan_crop(pts, layer, (64, 32))
    assert crop.w == 2 * crop.h
    # margin: 25 % of the larger side of the points' box, at least 16 px, on every side
    big = geometry.plan_crop([(100.0, 100.0), (500.0, 300.0)], layer, (128, 128))
    # region 0..600 x 0..400 -> a 600 px square centred at y 200, clamped to the layer's top edge
    assert big == Rect(0, 0, 600, 600)


def test_auto_crop_includes_the_selection() -> None:
    layer = Rect(0, 0, 1000, 1000)
    sel = Rect(600, 600, 200, 100)
    crop = geometry.plan_crop([(610.0, 610.0), (620.0, 615.0)], layer, (128, 128), selection=sel)
    assert crop.contains_rect(sel)
    assert crop.w == crop.h


def test_crop_is_clamped_to_the_layer_and_keeps_aspect() -> None:
    layer = Rect(50, 20, 300, 200)           # layer offsets (50, 20)
    crop = geometry.plan_crop([(55.0, 25.0), (70.0, 30.0)], layer, (128, 128))
    assert crop == Rect(50, 20, 128, 128)    # pushed into the layer's top-left corner
    crop = geometry.plan_crop([(340.0, 210.0), (345.0, 215.0)], layer, (128, 128))
    assert crop.x2 == 350 and crop.y2 == 220 and crop.w == crop.h == 128


def test_crop_shrinks_to_the_largest_model_shape_inside_the_layer() -> None:
    layer = Rect(0, 0, 300, 100)
    crop = geometry.plan_crop([(10.0, 10.0), (90.0, 90.0)], layer, (256, 256))
    assert crop == Rect(0, 0, 100, 100)


def test_points_too_far_apart_for_the_model_shape() -> None:
    layer = Rect(0, 0, 300, 100)
    with pytest.raises(errors.PluginError, match="span 280x10 px.*largest crop.*100x100"):
        geometry.plan_crop([(10.0, 50.0), (290.0, 60.0)], layer, (256, 256))


def test_whole_layer_mode() -> None:
    square = Rect(10, 10, 200, 200)
    assert geometry.plan_crop([(50.0, 50.0), (60.0, 60.0)], square, (64, 64), geometry.CROP_LAYER) == square
    wide = Rect(0, 0, 400, 200)
    crop = geometry.plan_crop([(300.0, 50.0), (320.0, 60.0)], wide, (64, 64), geometry.CROP_LAYER)
    assert crop.w == crop.h == 200 and crop.contains_point((320.0, 60.0)) and _inside(crop, wide)


def test_selection_mode() -> None:
    layer = Rect(0, 0, 400, 400)
    sel = Rect(100, 100, 80, 40)
    crop = geometry.plan_crop([(110.0, 110.0), (150.0, 120.0)], layer, (64, 64), geometry.CROP_SELECTION, sel)
    assert crop.contains_rect(sel) and crop.w == crop.h == 80
    with pytest.raises(errors.PluginError, match="needs a selection"):
        geometry.plan_crop([(110.0, 110.0), (150.0, 120.0)], layer, (64, 64), geometry.CROP_SELECTION, None)
    with pytest.raises(errors.PluginError, match="inside the selection's bounding box"):
        geometry.plan_crop([(10.0, 10.0), (150.0, 120.0)], layer, (64, 64), geometry.CROP_SELECTION, sel)
    with pytest.raises(errors.PluginError, match="unknown crop mode"):
        geometry.plan_crop([(10.0, 10.0)], layer, (64, 64), "middle")


def test_tiny_layer_is_refused() -> None:
    with pytest.raises(errors.PluginError, match="only 4x30 px"):
        geometry.plan_crop([(1.0, 1.0)], Rect(0, 0, 4, 30), (64, 64))


def test_random_crops_always_fit_contain_points_and_keep_aspect() -> None:
    rng = random.Random(1)
    for _ in range(400):
        layer = Rect(rng.randint(-50, 50), rng.randint(-50, 50), rng.randint(8, 900), rng.randint(8, 900))
        model = rng.choice([(128, 128), (256, 256), (512, 384), (64, 128)])
        pts = [(layer.x + rng.random() * layer.w, layer.y + rng.random() * layer.h) for _ in range(4)]
        mode = rng.choice(geometry.CROP_MODES)
        sel = Rect(layer.x + 2, layer.y + 2, max(1, layer.w // 2), max(1, layer.h // 2)) if rng.random() < 0.5 else None
        try:
            crop = geometry.plan_crop(pts, layer, model, mode, sel)
        except errors.PluginError:
            continue
        assert _inside(crop, layer), (crop, layer)
        assert all(crop.contains_point(p) for p in pts)
        # aspect within one pixel of rounding
        assert abs(crop.w / crop.h - model[0] / model[1]) <= 1.0 / crop.h + 1.0 / crop.w + 1e-9


def test_sent_coordinates_round_trip_and_pixel_centres() -> None:
    crop = Rect(100, 50, 4096, 2048)
    size = geometry.sent_size(crop)
    assert size == (2048, 1024)                       # over the backend's 2048 px: halved, aspect kept
    assert geometry.sent_size(Rect(0, 0, 300, 200)) == (300, 200)   # at most 2048: sent as it is
    pts = [(102.0, 52.0), (103.0, 53.0), (200.25, 99.5)]
    there = geometry.to_sent_points(pts, crop, size)
    assert there[0] == (0.5, 0.5)            # the centre of the first 2x2 block of the crop
    assert there[1] == (1.0, 1.0)
    back = geometry.from_sent_points(there, crop, size)
    assert all(abs(a - b) < 1e-9 for p, q in zip(pts, back) for a, b in zip(p, q))
    # the backend takes pixel indices 0..size-1: edge anchors are pulled onto the grid
    edge = geometry.to_sent_points([(100.0, 50.0), (4196.0, 2098.0)], crop, size)
    assert edge == [(0.0, 0.0), (2047.0, 1023.0)]
    # at its own size a point's crop pixel is its image pixel minus the crop's corner
    assert geometry.to_sent_points([(105.5, 60.5)], Rect(100, 50, 64, 64), (64, 64)) == [(5.0, 10.0)]


def test_detail_results_need_no_feathered_mask() -> None:
    plan = geometry.plan_mask(Rect(0, 0, 400, 300), True, detail=True)
    assert (plan.use_selection, plan.grow, plan.inset, plan.feather) == (False, 0, 0, 0)


def test_mask_plan_grow_feather_inset() -> None:
    with_sel = geometry.plan_mask(Rect(0, 0, 400, 300), True)
    assert with_sel.use_selection and with_sel.grow == 12 and with_sel.feather == 12
    assert with_sel.inset == with_sel.feather
    without = geometry.plan_mask(Rect(0, 0, 400, 300), False)
    assert not without.use_selection and without.grow == 0 and without.feather == 18
    small = geometry.plan_mask(Rect(0, 0, 10, 12), False)
    assert small.feather == 2 and small.inset == 2
    assert Rect(0, 0, 10, 12).inset(20) == Rect(4, 5, 1, 1)
