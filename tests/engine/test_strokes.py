"""Strokes under the handles, moved as wholes in the picture's own pixels (backend.engine.strokes), on
drawn pictures whose right answer is known: a dark bar on a lit background, anti-aliased."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine.strokes import StrokeSettings, find_stroke, move_strokes

UNIT = 4.0   # crop pixels per model pixel: a 512 px layer over a 128 px model
SIZE = 200
BAR_COLOUR = np.array([60.0, 40.0, 30.0])


def _background() -> np.ndarray:
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    base = np.stack([230 - 0.1 * xs, 190 - 0.05 * ys, 160 + 0.0 * xs], -1)   # skin with a gentle light gradient
    return base


def _draw(shapes: list[tuple[np.ndarray, np.ndarray]], background: np.ndarray | None = None) -> np.ndarray:
    """Shapes (a coverage function of supersampled x, y; a colour) over the background, 4x4 supersampled."""
    out = _background() if background is None else background.copy()
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    for inside, colour in shapes:
        cover = np.zeros((SIZE, SIZE))
        for dy in sub:
            for dx in sub:
                cover += inside(xs + dx, ys + dy)
        cover /= 16
        out = out * (1 - cover[..., None]) + colour * cover[..., None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _bar(x0: float, y0: float, x1: float, y1: float, half_width: float):
    """A straight bar from (x0, y0) to (x1, y1) (its centre line), ``half_width`` either side, square ends."""
    d = np.array([x1 - x0, y1 - y0])
    length = float(np.hypot(*d))
    u = d / length

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        along = (x - x0) * u[0] + (y - y0) * u[1]
        across = -(x - x0) * u[1] + (y - y0) * u[0]
        return ((along >= 0) & (along <= length) & (np.abs(across) <= half_width)).astype(np.float64)
    return inside


def _dark_rows(picture: np.ndarray, x: int) -> np.ndarray:
    """Rows where column ``x`` is more than half-way from the background to the bar's colour."""
    darkness = (_background()[:, x, 0] - picture[:, x, 0].astype(np.float64)) / (_background()[:, x, 0] - 60.0)
    return np.nonzero(darkness > 0.5)[0]


def _centre_row(picture: np.ndarray, x: int) -> float:
    rows = _dark_rows(picture, x)
    assert len(rows), f"no bar at column {x}"
    return float(rows.mean())


BROW = (50.0, 100.0, 146.0, 100.0, 6.0)   # 24 model px long, 3 thick: a brow at 512 px


def test_one_end_dragged_bends_the_stroke_and_its_far_end_stays() -> None:
    picture = _draw([(_bar(*BROW), BAR_COLOUR)])
    handle, target = np.array([[52.0, 100.0]]), np.array([[52.0, 116.0]])   # the left end, 4 model px down
    out = move_strokes(picture, handle, target, UNIT)
    assert out is not None
    assert abs(_centre_row(out, 52) - 116.0) <= 1.0           # the handle's content is at its target
    assert abs(_centre_row(out, 144) - 100.0) <= 0.1 * 16      # the far end stays (Gaussian tail < 10 %)
    middle = _centre_row(out, 98)
    assert 100.0 < middle < 116.0                              # in between, it bends
    # where the end was is background again (filled from around the stroke), not a dark ghost
    assert np.abs(out[96:105, 50:56].astype(float) - _background()[96:105, 50:56]).max() <= 12
    # the bar keeps its thickness: 12 px, anti-aliased edges
    assert abs(len(_dark_rows(out, 52)) - len(_dark_rows(picture, 98))) <= 1


def test_both_ends_dragged_alike_move_the_whole_stroke() -> None:
    picture = _draw([(_bar(*BROW), BAR_COLOUR)])
    handles = np.array([[52.0, 100.0], [144.0, 100.0]])
    out = move_strokes(picture, handles, handles + [0.0, -12.0], UNIT)
    assert out is not None
    for x in (52, 98, 144):
        assert abs(_centre_row(out, x) - 88.0) <= 1.0
    expected = _draw([(_bar(50.0, 88.0, 146.0, 88.0, 6.0), BAR_COLOUR)])
    assert np.abs(out.astype(int) - expected).max() <= 40          # anti-aliased edges land within a pixel
    assert np.abs(out.astype(int) - expected).mean() <= 0.5


def test_pixels_away_from_the_points_and_kept_pixels_are_the_original_s() -> None:
    picture = _draw([(_bar(*BROW), BAR_COLOUR)])
    handle, target = np.array([[52.0, 100.0]]), np.array([[52.0, 116.0]])
    assert move_strokes(picture, handle, target, UNIT, settings=StrokeSettings(window=12.0)) is None  # 24 long
    out = move_strokes(picture, handle, target, UNIT, settings=StrokeSettings(window=26.0))
    assert out is not None
    reach = 26.0 * UNIT + 16 + 4     # the window, the move and a margin (crop pixels)
    far = np.zeros((SIZE, SIZE), bool)
    far[:, int(52 + reach) + 2:] = True
    assert far.any() and np.array_equal(out[far], picture[far])
    assert not np.array_equal(out[:, :150], picture[:, :150])
    keep = np.zeros((SIZE, SIZE), bool)
    keep[108:, :] = True          # below the bar may not change: the end cannot come down there
    kept = move_strokes(picture, handle, target, UNIT, keep=keep)
    assert kept is not None and np.array_equal(kept[keep], picture[keep])


@pytest.mark.parametrize("what", ["round blob", "faint bar", "plain skin", "two lips", "lip over the mouth"])
def test_what_is_not_a_stroke_is_left_to_the_model(what: str) -> None:
    handles, targets = np.array([[98.0, 100.0]]), np.array([[98.0, 90.0]])
    if what == "round blob":       # a pupil: as wide as it is long
        picture = _draw([(lambda x, y: ((x - 98) ** 2 + (y - 100) ** 2 <= 100).astype(float), BAR_COLOUR)])
    elif what == "faint bar":      # 20 levels from the skin: shading, not a mark
        picture = _draw([(_bar(*BROW), _background()[100, 98] - 12)])
    elif what == "plain skin":
        picture = _draw([])
    elif what == "lip over the mouth":   # a lower lip dragged up over the mouth's dark inside: the model's job
        inside = np.array([90.0, 30.0, 40.0])
        picture = _draw([(lambda x, y: ((np.abs(x - 98) <= 48) & (y >= 70) & (y < 97)).astype(float), inside),
                         (_bar(*BROW), BAR_COLOUR + 60)])
        handles, targets = np.array([[98.0, 100.0]]), np.array([[98.0, 88.0]])
        moved_away = move_strokes(picture, handles, np.array([[98.0, 112.0]]), UNIT)
        assert moved_away is not None     # dragged down, over the skin, it is a stroke like any other
    else:                          # two strokes dragged together 2 model px apart: what is between them goes too
        picture = _draw([(_bar(50.0, 96.0, 146.0, 96.0, 4.0), BAR_COLOUR), (_bar(50.0, 112.0, 146.0, 112.0, 4.0),
                                                                              BAR_COLOUR + 60)])
        handles = np.array([[98.0, 96.0], [98.0, 112.0]])
        targets = handles + [0.0, -8.0]
    assert move_strokes(picture, handles, targets, UNIT) is None


def test_the_stroke_is_found_from_a_handle_on_its_edge() -> None:
    picture = _draw([(_bar(*BROW), BAR_COLOUR)])
    grid = torch.from_numpy(picture).permute(2, 0, 1).float()
    for handle in ((50.0, 100.0), (98.0, 94.5), (146.0, 100.0)):   # its end, its top edge, its other end
        stroke = find_stroke(grid, handle, UNIT)
        assert stroke is not None
        assert np.abs(stroke.colour.numpy() - BAR_COLOUR).max() <= 3
        rows, cols = torch.nonzero(stroke.mask, as_tuple=True)
        assert 92 <= int(rows.min()) and int(rows.max()) <= 107 and int(cols.min()) <= 51 and int(cols.max()) >= 145
