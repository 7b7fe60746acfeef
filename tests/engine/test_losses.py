"""Motion supervision, mask term and stop rule on hand-made feature maps with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from backend.engine.losses import (
    mask_at_resolution,
    mask_loss,
    motion_loss,
    motion_loss_reference,
    stop_reached,
    supervised_pixels,
    supervised_pixels_reference,
)
from backend.engine.sources import FullResFeatures, LowResFeatures


def pixel_set(point, radius, size):
    rows, cols = supervised_pixels_reference(point, radius, size, size)
    return set(zip(rows.tolist(), cols.tolist()))


def batched_set(point, radius, size):
    rows, cols, keep = supervised_pixels(torch.tensor([point]), radius, size, size)
    return set(zip(rows[keep].tolist(), cols[keep].tolist()))


def test_official_disk_examples_with_the_linspace_quirk():
    # README examples: the disk sits ~0.5 px up-left of the handle.
    assert pixel_set((40, 40), 1, 128) == {(39, 39), (39, 40), (40, 39), (40, 40)}
    assert pixel_set((90, 80), 1, 128) == {(89, 79), (89, 80), (90, 79), (90, 80)}
    assert len(pixel_set((256, 256), 3, 512)) == 32
    assert len(pixel_set((10, 10), 3, 512)) == 27


@pytest.mark.parametrize("point", [(40, 40), (90, 80), (0, 0), (127, 127), (0, 127), (64, 1), (126, 3)])
@pytest.mark.parametrize("radius", [1, 2, 3, 5])
def test_batched_disk_equals_the_official_one(point, radius):
    assert batched_set(point, radius, 128) == pixel_set(point, radius, 128)


def ramp(size: int = 64) -> torch.Tensor:
    """Channel 0 = row index, channel 1 = column index: a bilinear sample at (y, x) is exactly (y, x)."""
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
    return torch.stack([rows, cols]).unsqueeze(0)


def both_losses(full: torch.Tensor, points, targets, radius):
    reference = motion_loss_reference(full, points, targets, radius)
    batched = motion_loss(FullResFeatures(full), torch.tensor(points), torch.tensor(targets, dtype=torch.float64),
                          radius)
    return float(reference), float(batched)


def test_motion_loss_known_answers_on_a_ramp():
    full = ramp()
    # straight right by 10 px: unit step (0, 1) -> |diff| = (0, 1) per pixel -> mean 0.5
    assert both_losses(full, [(30, 30)], [(30.0, 40.0)], 2) == pytest.approx((0.5, 0.5), abs=1e-6)
    # diagonal: unit step (1/sqrt2, 1/sqrt2) -> mean 1/sqrt2
    expected = 1 / math.sqrt(2)
    assert both_losses(full, [(30, 30)], [(38.0, 38.0)], 3) == pytest.approx((expected, expected), abs=1e-6)
    # a handle within 1 px of its target contributes nothing; losses of handles add up
    assert both_losses(full, [(30, 30), (10, 10)], [(30.0, 40.0), (10.0, 11.0)], 2) == pytest.approx(
        (0.5, 0.5), abs=1e-6)
    assert both_losses(full, [(30, 30), (10, 10)], [(30.0, 40.0), (20.0, 10.0)], 2) == pytest.approx(
        (1.0, 1.0), abs=1e-6)


def test_motion_gradient_flows_only_through_the_shifted_sample():
    full = ramp().requires_grad_(True)
    loss = motion_loss_reference(full, [(40, 40)], [(40.0, 50.0)], 1)  # disk {39,40}x{39,40}, shift +1 col
    loss.backward()
    grad = full.grad[0]
    # shifted samples land exactly on {39,40}x{40,41}; d|here - shifted|/d shifted = +1 for channel 1
    # (here - shifted = -1), 0 for channel 0 (no difference); mean over 2 channels x 4 pixels
    expected = torch.zeros_like(grad)
    expected[1, 39:41, 40:42] = 1 / 8
    torch.testing.assert_close(grad, expected)


def test_batched_motion_loss_and_gradient_equal_the_official_loop_on_random_maps():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(1, 8, 16, 16, generator=gen)
    # Corners of an upsampled map are constant 2x2 patches (border clamping), where |here - shifted| is an
    # exact tie at 0 and the L1 gradient's sign is decided by rounding: keep the handles off those.
    points = [(5, 7), (40, 60), (0, 58), (60, 8)]
    targets = [(9.0, 2.0), (41.0, 60.5), (10.0, 50.0), (50.0, 20.0)]  # second one is within 1 px: skipped
    full = torch.nn.functional.interpolate(f, [64, 64], mode="bilinear").requires_grad_(True)
    reference = motion_loss_reference(full, points, targets, 3)
    (reference_grad,) = torch.autograd.grad(reference, [full])
    batched = motion_loss(FullResFeatures(full), torch.tensor(points), torch.tensor(targets, dtype=torch.float64), 3)
    (batched_grad,) = torch.autograd.grad(batched, [full])
    torch.testing.assert_close(batched, reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(batched_grad, reference_grad, rtol=0, atol=1e-9)
    # on the low-resolution map: same loss, and the same gradient pulled back through the upsample
    low = f.clone().requires_grad_(True)
    low_loss = motion_loss(LowResFeatures(low, 64, 64), torch.tensor(points),
                           torch.tensor(targets, dtype=torch.float64), 3)
    (low_grad,) = torch.autograd.grad(low_loss, [low])
    f_full = f.clone().requires_grad_(True)
    up_loss = motion_loss_reference(torch.nn.functional.interpolate(f_full, [64, 64], mode="bilinear"), points,
                                    targets, 3)
    (up_grad,) = torch.autograd.grad(up_loss, [f_full])
    torch.testing.assert_close(low_loss, up_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(low_grad, up_grad, rtol=0, atol=1e-6)


def test_mask_loss_is_a_mean_over_all_elements_not_normalised_by_mask_area():
    features = torch.full((1, 3, 4, 4), 2.0)
    initial = torch.zeros(1, 3, 4, 4)
    fixed = torch.zeros(4, 4)
    fixed[:2] = 1.0  # half the image fixed
    assert float(mask_loss(features, initial, fixed)) == pytest.approx(1.0)  # 2 * 0.5
    fixed[:2] = 0.5  # soft weights scale the term
    assert float(mask_loss(features, initial, fixed)) == pytest.approx(0.5)
    assert float(mask_loss(features, initial, torch.zeros(4, 4))) == 0.0


def test_mask_at_resolution_is_an_area_average():
    fixed = torch.zeros(8, 8)
    fixed[:, :3] = 1.0
    low = mask_at_resolution(fixed, 4, 4)
    assert low[:, 0].tolist() == [1.0] * 4 and low[:, 1].tolist() == [0.5] * 4 and low[:, 2:].sum() == 0
    assert mask_at_resolution(fixed, 8, 8) is fixed


def test_stop_rule_needs_every_handle_within_the_threshold_inclusive():
    targets = torch.tensor([[10.0, 10.0], [50.0, 50.0]], dtype=torch.float64)
    assert stop_reached(torch.tensor([[10, 12], [50, 48]]), targets, 2.0)  # exactly 2 px: stop (<=)
    assert not stop_reached(torch.tensor([[10, 12], [51, 48]]), targets, 2.0)  # sqrt(5) > 2
    assert not stop_reached(torch.tensor([[10, 10], [40, 50]]), targets, 2.0)  # one far handle keeps going
    assert stop_reached(torch.tensor([[12, 12], [50, 50]]), targets, 4.0)
