"""The one place where public conventions become official ones: rounding, radii, mask, ws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine import conventions


def test_handles_round_half_to_even_and_swap_to_row_col():
    # (x, y) -> (row, col); Python round: 2.5 -> 2, 3.5 -> 4, 40.5 -> 40
    assert conventions.handles_to_rowcol([(40.5, 2.5), (3.5, 1.5), (7.2, 9.8)]) == [(2, 40), (2, 4), (10, 7)]


def test_targets_stay_float_and_swap_to_row_col():
    assert conventions.targets_to_rowcol([(52.0, 48.0), (1.25, 3.75)]) == [(48.0, 52.0), (3.75, 1.25)]
    assert conventions.rowcol_to_xy([(48, 52)]) == [(52.0, 48.0)]


@pytest.mark.parametrize(
    ("radius", "resolution", "pixels"),
    [(3, 128, 1), (12, 128, 3), (10, 128, 2), (20, 128, 5), (3, 256, 2), (12, 256, 6), (3, 512, 3),
     (12, 512, 12), (3, 1024, 6)],
)
def test_pixel_radius_is_official_round_half_even(radius, resolution, pixels):
    # r1=10 at 128 is round(2.5) = 2 (half-up would give 3); r1=3 at 256 is round(1.5) = 2.
    assert conventions.pixel_radius(radius, resolution) == pixels


def test_stop_threshold():
    assert conventions.stop_threshold(128) == 2
    assert conventions.stop_threshold(512) == 2
    assert conventions.stop_threshold(1024) == 4


def test_mask_inverted_and_only_applied_when_it_has_both_zero_and_one():
    editable = np.zeros((4, 5), np.float32)
    editable[1:3, 1:4] = 1.0
    editable[0, 0] = 0.25
    fixed = conventions.fixed_mask_from_editable(editable, 4, 5)
    assert fixed is not None and fixed.dtype == torch.float32
    assert torch.equal(fixed, torch.from_numpy(1.0 - editable))
    # all editable -> fixed all 0; nothing editable -> fixed all 1: the official rule skips both
    assert conventions.fixed_mask_from_editable(np.ones((4, 5)), 4, 5) is None
    assert conventions.fixed_mask_from_editable(np.zeros((4, 5)), 4, 5) is None
    assert conventions.fixed_mask_from_editable(None, 4, 5) is None
    # soft values only (no exact 0 and 1 in the fixed mask) -> skipped too
    assert conventions.fixed_mask_from_editable(np.full((4, 5), 0.5), 4, 5) is None


@pytest.mark.parametrize(
    ("mask", "message"),
    [(np.ones((4, 4)), r"mask: expected shape \[4, 5\]"), (np.full((4, 5), np.nan), "mask: contains NaN"),
     (np.full((4, 5), 1.5), r"mask: values must be in \[0, 1\]"), ("abc", "mask")],
)
def test_bad_masks_name_the_field(mask, message):
    with pytest.raises(ValueError, match=message):
        conventions.fixed_mask_from_editable(mask, 4, 5)


def test_validate_points():
    assert conventions.validate_points([(0, 0), (4, 3)], height=4, width=5, field="handle_points") == [
        (0.0, 0.0), (4.0, 3.0)]
    with pytest.raises(ValueError, match=r"handle_points\[1\] = \(5, 0\) is outside the image"):
        conventions.validate_points([(0, 0), (5, 0)], height=4, width=5, field="handle_points")
    with pytest.raises(ValueError, match=r"target_points\[0\].*outside"):
        conventions.validate_points([(1, -0.5)], height=4, width=5, field="target_points")
    with pytest.raises(ValueError, match="handle_points: no points"):
        conventions.validate_points([], height=4, width=5, field="handle_points")
    with pytest.raises(ValueError, match="handle_points: contains NaN"):
        conventions.validate_points([(1, float("nan"))], height=4, width=5, field="handle_points")
    with pytest.raises(ValueError, match="target_points: contains NaN or infinite"):
        conventions.validate_points([(float("inf"), 1)], height=4, width=5, field="target_points")
    with pytest.raises(ValueError, match=r"handle_points: expected a sequence of \(x, y\) pairs"):
        conventions.validate_points([(1, 2, 3)], height=4, width=5, field="handle_points")


def test_validate_ws():
    ws = torch.zeros(1, 8, 32)
    assert conventions.validate_ws(ws, 8, 32).shape == (1, 8, 32)
    with pytest.raises(ValueError, match=r"ws: expected shape \[1, 8, 32\]"):
        conventions.validate_ws(torch.zeros(1, 7, 32), 8, 32)
    with pytest.raises(ValueError, match=r"ws: expected shape"):
        conventions.validate_ws(torch.zeros(2, 8, 32), 8, 32)
    bad = ws.clone()
    bad[0, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="ws: contains NaN or infinite"):
        conventions.validate_ws(bad, 8, 32)
    with pytest.raises(ValueError, match="ws: expected a tensor"):
        conventions.validate_ws([[0.0]], 8, 32)


def test_w_latent_is_broadcast_to_the_optimised_layers_only():
    w0 = torch.randn(1, 8, 4)
    w = conventions.initial_optimised_latent(w0, "w", 6).requires_grad_(True)
    assert w.shape == (1, 4) and torch.equal(w, w0[:, 0])
    ws = conventions.assemble_ws(w, w0, 6)
    assert ws.shape == (1, 8, 4)
    assert all(torch.equal(ws[:, i], w0[:, 0]) for i in range(6))
    assert torch.equal(ws[:, 6:], w0[:, 6:])
    ws.sum().backward()
    assert torch.equal(w.grad, torch.full((1, 4), 6.0))


def test_w_plus_latent_splices_the_first_layers():
    w0 = torch.randn(1, 8, 4)
    w = conventions.initial_optimised_latent(w0, "w+", 6).requires_grad_(True)
    assert w.shape == (1, 6, 4)
    with torch.no_grad():
        w += 1.0
    ws = conventions.assemble_ws(w, w0, 6)
    assert torch.equal(ws[:, :6], w0[:, :6] + 1.0) and torch.equal(ws[:, 6:], w0[:, 6:])
