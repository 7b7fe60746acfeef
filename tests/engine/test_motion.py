"""The drag's dense motion and the edit carried by the picture's own pixels (backend/engine/motion.py),
on synthetic pictures whose motion is known exactly: a shift and a rotation are recovered and
reproduced at a finer resolution within 1 px, nothing outside the moving region changes by a single
byte, and new content comes from the model's pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.engine import motion


def scene(size: int, dots: np.ndarray, sigma: float, angle_deg: float = 0.0, shift: tuple[float, float] = (0.0, 0.0),
          scale: float = 1.0) -> np.ndarray:
    """uint8 [size, size, 3]: a picture whose content (dark Gaussian dots at ``dots`` ([N, 2], x then y)
    on gentle colour waves) is rotated by ``angle_deg`` about the centre and then shifted by ``shift``,
    all in pixels of ``size / scale`` (``scale`` renders the same picture at another resolution).
    Pixel centres sample the content exactly, so the motion between two scenes is known exactly."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    ys, xs = (ys + 0.5) / scale - 0.5, (xs + 0.5) / scale - 0.5   # this grid's centres in base pixels
    centre = (size / scale - 1) / 2
    a = math.radians(angle_deg)
    px, py = xs - centre - shift[0], ys - centre - shift[1]       # undo the motion: content coordinates
    u = math.cos(a) * px + math.sin(a) * py + centre
    v = -math.sin(a) * px + math.cos(a) * py + centre
    img = np.stack([140 + 30 * np.sin(u / 9.0), 130 + 30 * np.sin(v / 11.0), 150 + 20 * np.sin((u + v) / 13.0)], -1)
    for cx, cy in dots:
        d = np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * sigma ** 2))
        img = img * (1 - 0.8 * d[..., None])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1


def centroids(img: np.ndarray, guesses: np.ndarray, radius: float) -> np.ndarray:
    """Darkness-weighted centroids near each guess (x, y)."""
    dark = 255.0 - img.astype(np.float64).mean(axis=2)
    dark -= np.median(dark)
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    out = []
    for gx, gy in guesses:
        w = np.where((xs - gx) ** 2 + (ys - gy) ** 2 <= radius ** 2, np.clip(dark, 0, None), 0)
        out.append(((w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()))
    return np.array(out)


def grid_points(size: int, step: int, margin: int) -> np.ndarray:
    ticks = np.arange(margin, size - margin + 1, step, dtype=np.float64)
    return np.array([(x, y) for y in ticks for x in ticks])


def rigid(points: np.ndarray, angle_deg: float, shift: tuple[float, float], centre: float) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (points - centre) @ rot.T + centre + np.array(shift)


def test_a_zero_flow_returns_an_8_bit_picture_unchanged() -> None:
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, 17, 23))).float()
    assert torch.equal(motion.warp(img, torch.zeros(1, 2, 17, 23)).round(), img)


@pytest.mark.parametrize("shift", [(3.0, -2.0), (0.4, 1.6)])
def test_block_matching_recovers_a_shift(shift: tuple[float, float]) -> None:
    """Block matching with Lucas-Kanade refinement on a gently textured picture: most of it within a
    fifth of a pixel (the waves leave some windows with one direction only, hence the 90th percentile)."""
    size = 96
    dots = grid_points(size, 12, 8)
    before = scene(size, dots, 2.0)
    after = scene(size, dots, 2.0, shift=shift)
    # the matcher alone (no preference for standing still: here everything moved)
    flow = motion.match_flow(as_tensor(before), as_tensor(after), motion.MotionSettings(stay_margin=0.0))
    inner = motion.flow_at(flow, grid_points(size, 2, 24))   # content near the border left the frame
    errors = np.hypot(*(inner + np.array(shift)).T)           # the backward flow points back to the content
    assert np.median(errors) <= 0.2 and np.percentile(errors, 90) <= 0.5, (np.median(errors), errors.max())


def test_what_did_not_change_stays_exactly_still_beside_what_moved() -> None:
    size = 64
    dots = grid_points(size, 12, 8)
    before = scene(size, dots, 2.0)
    moved = scene(size, dots, 2.0, shift=(2.0, 1.0))
    after = before.copy()
    after[20:44, 20:44] = moved[20:44, 20:44]          # a patch moved; the rest is the same picture
    flow = motion.match_flow(as_tensor(before), as_tensor(after))
    still = np.ones((size, size), bool)
    still[14:50, 14:50] = False                        # away from the patch (and its box-filter reach)
    assert float(flow[0].norm(dim=0)[torch.from_numpy(still)].max()) == 0.0
    inside = motion.flow_at(flow, grid_points(size, 2, 26))
    assert np.median(np.hypot(*(inside + np.array([2.0, 1.0])).T)) <= 0.3


def test_the_warp_reproduces_a_known_rotation_and_shift_at_four_times_the_model_s_resolution_within_1_px() -> None:
    """A flow known exactly in a 64 px model frame (rotation by 6 deg about the centre, then a shift)
    moves the dots of the 256 px native picture onto where the exact motion puts them: the crop <->
    model mapping, the flow's units and its direction all line up."""
    native_size, model_size, angle, shift = 256, 64, 6.0, (6.0, -4.0)
    dots = grid_points(native_size, 40, 48)
    centre = (native_size - 1) / 2
    moved = rigid(dots, angle, shift, centre)
    native_before = scene(native_size, dots, 5.0)
    exact = scene(native_size, dots, 5.0, angle, shift)
    small = model_size / native_size
    # the exact backward flow on the model grid: where each model pixel's content came from
    ys, xs = np.mgrid[0:model_size, 0:model_size].astype(np.float64)
    native_xy = np.stack([(xs + 0.5) / small - 0.5, (ys + 0.5) / small - 0.5], -1).reshape(-1, 2)
    a = math.radians(angle)
    rot_inv = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    source = (native_xy - centre - np.array(shift)) @ rot_inv.T + centre
    source_model = (source + 0.5) * small - 0.5
    flow = torch.from_numpy((source_model - np.stack([xs, ys], -1).reshape(-1, 2)).T.reshape(1, 2, model_size,
                                                                                              model_size)).float()
    region = torch.ones(1, 1, model_size, model_size)
    crop_to_model = np.array([[small, 0.0, 0.5 * small - 0.5], [0.0, small, 0.5 * small - 0.5]])
    pictures = torch.zeros(1, 3, model_size, model_size)
    result = motion.transfer_detail(native_before, crop_to_model, (model_size, model_size), flow, region,
                                    pictures, pictures)
    found = centroids(result, moved, 10.0)
    errors = np.hypot(*(found - centroids(exact, moved, 10.0)).T)
    assert errors.max() <= 1.0, errors.round(2)
    assert np.median(np.hypot(*(moved - dots).T)) > 7.0     # the dots really moved


def test_the_region_is_the_motion_connected_to_the_points_and_landed_checks_each_handle() -> None:
    flow = torch.zeros(1, 2, 40, 40)
    flow[0, 0, 5:15, 5:15] = -3.0      # one patch moved 3 px right (backward flow -3)
    flow[0, 1, 25:35, 25:35] = 2.0     # another, elsewhere, moved 2 px up
    settings = motion.MotionSettings(threshold=1.0, grow=0, feather=0, allowed_feather=0)
    hard, soft = motion.motion_region(flow, [(8.0, 10.0)], settings)
    assert hard[5:15, 5:15].all() and not hard[25:35, 25:35].any() and hard.sum() == 100
    assert torch.equal(soft[0, 0] > 0, hard)
    allowed = torch.zeros(40, 40)
    allowed[:, :10] = 1
    _, limited = motion.motion_region(flow, [(8.0, 10.0)], settings, allowed)
    assert (limited[0, 0] > 0).sum() == 50
    # handle 1 at (6, 10) moved to (9, 10): the flow at the target points back to it; handle 2 did not move
    assert motion.landed(flow, [(6.0, 10.0), (20.0, 20.0)], [(9.0, 10.0), (24.0, 20.0)], 1.0) == [True, False]
    # a short move carried part of the way is not "landed" because the rest is within the tolerance:
    # handle (6, 10) -> (10, 10) carried 3 px of 4 by this flow, 1 px short (within 1.5 px, not within 0.2 x 4)
    assert motion.landed(flow, [(6.0, 10.0)], [(10.0, 10.0)], 1.5) == [True]
    assert motion.landed(flow, [(6.0, 10.0)], [(10.0, 10.0)], 1.5, fraction=0.2) == [False]
    assert motion.landed(flow, [(6.0, 10.0)], [(9.0, 10.0)], 1.5, fraction=0.2) == [True]


def test_outside_the_region_and_the_selection_every_pixel_is_the_original_s() -> None:
    rng = np.random.default_rng(1)
    native = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    model = 32
    before = torch.rand(1, 3, model, model) * 2 - 1
    after = torch.rand(1, 3, model, model) * 2 - 1            # the model changed everything
    flow = torch.full((1, 2, model, model), 1.5)               # and moved everything
    region = torch.zeros(1, 1, model, model)
    region[..., 8:20, 8:20] = 1.0
    crop_to_model = np.array([[model / 80, 0.0, 0.5 * model / 80 - 0.5], [0.0, model / 96, 0.5 * model / 96 - 0.5]])
    keep = np.zeros((96, 80), bool)
    keep[:, :40] = True                                        # outside the selection
    out = motion.transfer_detail(native, crop_to_model, (model, model), flow, region, before, after, keep=keep)
    mx = (np.arange(80) + 0.5) * model / 80 - 0.5
    my = (np.arange(96) + 0.5) * model / 96 - 0.5
    in_region = ((my[:, None] > 7) & (my[:, None] < 20)) & ((mx[None, :] > 7) & (mx[None, :] < 20))
    untouched = ~in_region | keep
    assert np.array_equal(out[untouched], native[untouched])
    assert not np.array_equal(out[in_region & ~keep], native[in_region & ~keep])
    # no region at all: the crop comes back as it was, byte for byte
    empty = torch.zeros_like(region)
    assert np.array_equal(motion.transfer_detail(native, crop_to_model, (model, model), flow, empty, before, after),
                          native)


def test_new_content_comes_from_the_model_and_small_model_changes_do_not() -> None:
    size = 32
    native = np.full((64, 64, 3), 180, np.uint8)
    before = torch.full((1, 3, size, size), 180 / 127.5 - 1)
    after = before.clone()
    after[..., 10:20, 10:20] = -1.0                           # a dark mouth opened (no motion)
    after[..., 24:30, 24:30] += 0.05                          # a faint drift (6 levels): not added
    flow = torch.zeros(1, 2, size, size)
    region = torch.ones(1, 1, size, size)
    crop_to_model = np.array([[0.5, 0.0, -0.25], [0.0, 0.5, -0.25]])
    out = motion.transfer_detail(native, crop_to_model, (size, size), flow, region, before, after, residual_floor=0.1)
    assert out[30:38, 30:38].max() < 40                        # inside the new dark area
    assert np.array_equal(out[52:58, 52:58], native[52:58, 52:58])


PIN_NATIVE, PIN_MODEL = 256, 64


def pin_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pins' test picture: (native uint8 [256, 256, 3] with a dot at ``dot`` [1, 2] (x, y), the
    crop -> model map onto a 64 px model, the dot's model position, a target 5 model px to its right)."""
    small = PIN_MODEL / PIN_NATIVE
    dot = np.array([[128.0, 128.0]])
    crop_to_model = np.array([[small, 0.0, 0.5 * small - 0.5], [0.0, small, 0.5 * small - 0.5]])
    handle_m = (dot[0] + 0.5) * small - 0.5
    return scene(PIN_NATIVE, dot, 6.0), dot, crop_to_model, handle_m, handle_m + [5.0, 0.0]


def test_pins_take_a_handle_s_content_the_rest_of_the_way_and_stay_near_it() -> None:
    """The model's motion carried a dot 2 px of the 5 it should go (a uniform patch shift): the pins move
    it onto its target within 1 px of the 256 px picture (the dot's centroid: the field is exact at the
    target and stretches the dot a little around it), pixels far from the pins stay as the motion left
    them, and outside the selection nothing changes."""
    native, dot, crop_to_model, handle_m, target_m = pin_scene()
    native_size, model_size = PIN_NATIVE, PIN_MODEL
    flow = torch.zeros(1, 2, model_size, model_size)
    flow[0, 0, 24:40, 24:44] = -2.0                          # the model moved the patch 2 model px right
    region = torch.zeros(1, 1, model_size, model_size)
    region[..., 24:40, 24:44] = 1.0
    pictures = torch.zeros(1, 3, model_size, model_size)
    carried = motion.carried_to(flow, handle_m[None], handle_m[None])
    assert np.allclose(carried, [handle_m + [2.0, 0.0]], atol=1e-4)
    keep = np.zeros((native_size, native_size), bool)
    keep[:, :40] = True
    plain = motion.transfer_detail(native, crop_to_model, (model_size,) * 2, flow, region, pictures, pictures,
                                   keep=keep)
    # 4 model px wide (the way left, 3 px, asks for no more at 1x)
    pinned = motion.transfer_detail(native, crop_to_model, (model_size,) * 2, flow, region, pictures, pictures,
                                    keep=keep, pins=(carried, target_m[None]), pin_sigma=4.0, pin_width_per_move=1.0)
    assert np.hypot(*(centroids(plain, dot + [8.0, 0.0], 10.0) - (dot + [8.0, 0.0]))[0]) <= 0.5
    assert np.hypot(*(centroids(pinned, dot + [20.0, 0.0], 10.0) - (dot + [20.0, 0.0]))[0]) <= 1.0
    assert np.array_equal(pinned[keep], native[keep])
    far = np.zeros_like(keep)
    far[:, 200:] = True                                        # > 6 sigma from the pins: as the motion left it
    assert np.array_equal(pinned[far], plain[far])


def test_pins_start_from_where_the_motion_as_applied_put_the_handle() -> None:
    """Where the region fades the motion (its soft edge, a default box's border) the picture moves less than
    the model did: the pins must start from where the faded motion put the handle's content, or they land
    it short by the difference. Here the region's weight is 0.5 at the handle: the model moved the dot 4
    model px of the 5 it should go, the picture only 2; pins from the applied motion land it within 1 px of
    its target (256 px picture), pins from the model's whole motion leave it 8 px short."""
    native, dot, crop_to_model, handle_m, target_m = pin_scene()
    model_size = PIN_MODEL
    flow = torch.zeros(1, 2, model_size, model_size)
    flow[0, 0, 20:44, 20:48] = -4.0                          # the model moved the patch 4 model px right
    region = torch.zeros(1, 1, model_size, model_size)
    region[..., 20:44, 20:48] = 0.5                          # ... and the region lets half of that through
    pictures = torch.zeros(1, 3, model_size, model_size)
    landing = {}
    for name, applied in (("applied", flow * region), ("whole", flow)):
        carried = motion.carried_to(applied, handle_m[None], handle_m[None])
        out = motion.transfer_detail(native, crop_to_model, (model_size,) * 2, flow, region, pictures, pictures,
                                     pins=(carried, target_m[None]), pin_sigma=4.0)
        goal = dot + [20.0, 0.0]
        landing[name] = float(np.hypot(*(centroids(out, goal, 10.0) - goal)[0]))
    assert landing["applied"] <= 1.0
    assert landing["whole"] >= 3.0   # 8 px short; the centroid's window pulls the measure towards the goal


def test_a_long_way_left_moves_the_part_around_the_handle_instead_of_smearing_it() -> None:
    """The model's motion left a dot 10 model px (40 px of the 256 px picture) from its target. A pin field
    4 model px wide would carry it there by folding the picture over itself (it squeezes by 0.61 x 10 / 4,
    more than all of it): the dot is dragged out into a streak. A field twice as wide as the way left
    moves the dot whole: it lands within 1 px and nothing dark is left along the way."""
    native, dot, crop_to_model, handle_m, _ = pin_scene()
    model_size = PIN_MODEL
    target_m = handle_m + [10.0, 0.0]
    flow = torch.zeros(1, 2, model_size, model_size)
    region = torch.ones(1, 1, model_size, model_size)
    pictures = torch.zeros(1, 3, model_size, model_size)
    goal = dot + [40.0, 0.0]
    midway = (dot + goal)[0] / 2

    def darkness(img: np.ndarray) -> np.ndarray:
        dark = 255.0 - img.astype(np.float64).mean(axis=2)
        return np.clip(dark - np.median(dark), 0, None)

    peak = darkness(native)[int(dot[0, 1]), int(dot[0, 0])]
    out = {}
    for width_per_move in (0.0, 2.0):
        out[width_per_move] = motion.transfer_detail(native, crop_to_model, (model_size,) * 2, flow, region, pictures,
                                                     pictures, pins=(handle_m[None], target_m[None]), pin_sigma=4.0,
                                                     pin_width_per_move=width_per_move)
    streak = darkness(out[0.0])[int(midway[1]), int(midway[0])]
    assert streak > 0.5 * peak                                 # the narrow field smears the dot along its way
    whole = out[2.0]
    assert np.hypot(*(centroids(whole, goal, 10.0) - goal)[0]) <= 1.0
    assert darkness(whole)[int(midway[1]), int(midway[0])] < 0.3 * peak


def test_a_rigid_move_is_three_spread_points_moved_by_one_shift_and_scale_and_nothing_else() -> None:
    """The gate that decides a drag moves a whole part: a shift or a resize of points spread over the
    picture passes; a rotation, a non-uniform move, two points, or points along a line do not."""
    height = 128
    pts = np.array([[40.0, 40.0], [80.0, 44.0], [60.0, 90.0]])
    shifted = pts + np.array([5.0, -3.0])
    fit = motion.rigid_move(pts, shifted, height)
    assert fit is not None
    np.testing.assert_allclose(shifted @ fit[:, :2].T + fit[:, 2], pts, atol=1e-9)   # targets -> handles
    centre = pts.mean(0)
    resized = (pts - centre) * 1.1 + centre
    assert motion.rigid_move(pts, resized, height) is not None
    assert motion.rigid_move(pts, rigid(pts, 8.0, (0.0, 0.0), 64.0), height) is None        # a rotation
    uneven = shifted.copy()
    uneven[2] += (0.0, 2.0)                                                                # one moves more
    assert motion.rigid_move(pts, uneven, height) is None
    assert motion.rigid_move(pts[:2], shifted[:2], height) is None                         # two points
    line = np.array([[30.0, 60.0], [60.0, 62.0], [90.0, 61.0]])                            # a row of points
    assert motion.rigid_move(line, line + np.array([0.0, 4.0]), height) is None


def test_turning_is_spread_points_turned_as_one_about_their_centre_and_nothing_else() -> None:
    """The gate that lets a drag's motion reach well around its points: points spread over the picture,
    turned (and shifted) as one by a few degrees, pass; a shift, a resize, points close together, a
    turn of under 3 degrees, or one point off the turn do not."""
    height = 128
    pts = np.array([[40.0, 40.0], [80.0, 44.0], [60.0, 90.0]])
    assert motion.turning(pts, rigid(pts, 8.0, (2.0, -1.0), 64.0), height)
    assert motion.turning(pts[[0, 2]], rigid(pts[[0, 2]], -6.0, (0.0, 0.0), 64.0), height)        # two points
    assert not motion.turning(pts, pts + np.array([5.0, -3.0]), height)                          # a shift
    centre = pts.mean(0)
    assert not motion.turning(pts, (pts - centre) * 1.1 + centre, height)                        # a resize
    close = np.array([[50.0, 60.0], [62.0, 61.0], [56.0, 70.0]])
    assert not motion.turning(close, rigid(close, 10.0, (0.0, 0.0), 56.0), height)              # close together
    assert not motion.turning(pts, rigid(pts, 2.0, (0.0, 0.0), 64.0), height)                    # 2 degrees
    bent = rigid(pts, 8.0, (0.0, 0.0), 64.0)
    bent[2] += (0.0, 4.0)                                                                         # one off the turn
    assert not motion.turning(pts, bent, height)
    same = np.array([[40.0, 40.0], [40.0, 40.0]])
    assert not motion.turning(same, same + np.array([[20.0, 25.0], [-20.0, -25.0]]), height)  # handles at one spot


def test_a_rigid_move_reproduces_a_known_shift_and_scale_at_four_times_the_model_s_resolution_within_1_px() -> None:
    """transfer_rigid on a 256 px native picture through a 64 px model frame: the dots inside the area
    land where the exact shift-and-scale puts them (within 1 px), and every pixel outside the area, or
    kept, is the original's byte for byte."""
    native_size, model_size, scale, shift = 256, 64, 1.08, (5.0, -3.0)
    small = model_size / native_size
    dots = grid_points(native_size, 40, 64)
    centre = (native_size - 1) / 2
    moved = (dots - centre) * scale + centre + np.array(shift)
    native = scene(native_size, dots, 5.0)
    # the same move in model pixels: handles -> targets, spread over the frame
    handles_native = np.array([[80.0, 80.0], [176.0, 84.0], [128.0, 170.0]])
    targets_native = (handles_native - centre) * scale + centre + np.array(shift)
    to_model = lambda p: (p + 0.5) * small - 0.5   # noqa: E731
    fit = motion.rigid_move(to_model(handles_native), to_model(targets_native), model_size)
    assert fit is not None
    area = torch.zeros(model_size, model_size)
    area[8:56, 8:56] = 1.0
    soft = motion.feathered(area, 2)
    crop_to_model = np.array([[small, 0.0, 0.5 * small - 0.5], [0.0, small, 0.5 * small - 0.5]])
    keep = np.zeros((native_size, native_size), bool)
    keep[:, :40] = True
    result = motion.transfer_rigid(native, crop_to_model, (model_size, model_size), fit, soft, keep)
    inner = [i for i, (x, y) in enumerate(moved) if 64 <= x <= 192 and 64 <= y <= 192]
    assert len(inner) >= 4
    found = centroids(result, moved[inner], 10.0)
    assert np.hypot(*(found - moved[inner]).T).max() <= 1.0
    assert np.median(np.hypot(*(moved - dots).T)) > 5.0     # the dots really moved
    outside = np.ones((native_size, native_size), bool)
    outside[28:228, 28:228] = False     # the area (model 8..56) is native 32..224; its reach ends there
    assert np.array_equal(result[outside | keep], native[outside | keep])
