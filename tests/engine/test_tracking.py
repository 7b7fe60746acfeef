"""Point tracking: nearest neighbour of the initial feature in a (2r+1)^2 window, official tie rule."""

from __future__ import annotations

import torch

from backend.engine.sources import FullResFeatures, LowResFeatures
from backend.engine.tracking import nearest_in_window, track_points, track_points_reference, window_positions


def random_map(channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))


def both(full: torch.Tensor, refs: torch.Tensor, points: list[tuple[int, int]], radius: int):
    reference = track_points_reference(full, [r.view(1, -1) for r in refs], points, radius)
    batched = track_points(FullResFeatures(full), refs, torch.tensor(points), radius)
    return reference, [tuple(p) for p in batched.tolist()]


def test_finds_a_planted_feature_inside_the_window():
    full = random_map(8, 32)
    planted = torch.full((8,), 5.0)
    full[0, :, 20, 23] = planted
    refs = planted.view(1, -1)
    for start in [(18, 21), (20, 23), (23, 26), (17, 20)]:
        reference, batched = both(full, refs, [start], radius=3)
        assert reference == batched == [(20, 23)], start


def test_a_feature_outside_the_window_is_not_found():
    full = random_map(8, 32)
    full[0, :, 20, 23] = 5.0
    reference, batched = both(full, torch.full((1, 8), 5.0), [(20, 27)], radius=3)
    assert reference == batched and reference[0] != (20, 23)
    assert abs(reference[0][0] - 20) <= 3 and abs(reference[0][1] - 27) <= 3


def test_ties_go_to_the_first_pixel_in_row_major_order_of_the_clipped_window():
    full = torch.zeros(1, 4, 16, 16)
    refs = torch.zeros(1, 4)
    assert both(full, refs, [(8, 8)], radius=2) == ([(6, 6)], [(6, 6)])
    # at the border the official window is clipped, so its first pixel is the image corner
    assert both(full, refs, [(1, 0)], radius=3) == ([(0, 0)], [(0, 0)])
    # two equal best matches: the upper one wins, then the left one
    full = random_map(4, 16, seed=5)
    full[0, :, 9, 7] = 3.0
    full[0, :, 7, 9] = 3.0
    full[0, :, 7, 8] = 3.0
    assert both(full, torch.full((1, 4), 3.0), [(8, 8)], radius=2) == ([(7, 8)], [(7, 8)])


def test_batched_equals_the_official_loop_everywhere_including_borders():
    full = random_map(6, 24, seed=7)
    gen = torch.Generator().manual_seed(8)
    refs = torch.randn(5, 6, generator=gen)
    points = [(0, 0), (23, 23), (0, 23), (12, 1), (22, 11)]
    for radius in (0, 1, 3, 5):
        reference, batched = both(full, refs, points, radius)
        assert reference == batched


def test_low_resolution_source_tracks_like_the_upsampled_map():
    f = random_map(6, 12, seed=9)
    full = torch.nn.functional.interpolate(f, [48, 48], mode="bilinear")
    points = torch.tensor([[5, 5], [30, 40], [47, 0], [20, 21]])
    refs = full[0][:, [7, 33, 45, 17], [6, 38, 2, 24]].t()
    low = track_points(LowResFeatures(f, 48, 48), refs, points, radius=4)
    assert torch.equal(low, track_points(FullResFeatures(full), refs, points, radius=4))


def test_window_positions_flag_pixels_outside_the_image():
    rows, cols, inside = window_positions(torch.tensor([[0, 5]]), 1, height=8, width=6)
    assert rows.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 1]]
    assert cols.tolist() == [[4, 5, 5, 4, 5, 5, 4, 5, 5]]
    assert inside.tolist() == [[False, False, False, True, True, False, True, True, False]]


def test_nearest_in_window_never_picks_outside_positions():
    window = torch.tensor([[[0.0, 1.0, 2.0]]])  # [C=1, P=1, M=3]
    assert nearest_in_window(window, torch.tensor([[False, True, True]]), torch.tensor([[0.0]])).tolist() == [1]
