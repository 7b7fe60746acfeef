"""Reading the upsampled feature map from the low-resolution block output equals building it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend.engine.features import sample_at_pixels, sample_bilinear, upsample_features
from backend.engine.sources import FullResFeatures, LowResFeatures


def random_map(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(seed))


def all_pixels(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return rows.reshape(-1), cols.reshape(-1)


def test_same_size_reads_are_bit_identical_copies():
    f = random_map(6, 16, 16)
    rows, cols = all_pixels(16, 16)
    assert torch.equal(sample_at_pixels(f, rows, cols, 16, 16), f[0][:, rows, cols])


@pytest.mark.parametrize(("low", "high"), [((8, 8), (16, 16)), ((8, 8), (32, 32)), ((32, 32), (128, 128)),
                                           ((8, 6), (32, 24)), ((10, 10), (15, 15)), ((6, 4), (16, 9))])
def test_integer_pixels_equal_bilinear_upsample_including_borders(low, high):
    f = random_map(5, *low)
    full = upsample_features(f, *high)
    rows, cols = all_pixels(*high)
    values = sample_at_pixels(f, rows, cols, *high)
    torch.testing.assert_close(values, full[0][:, rows, cols], rtol=0, atol=3e-6)


@pytest.mark.parametrize(("low", "high"), [((16, 16), (16, 16)), ((8, 8), (32, 32)), ((10, 10), (15, 15))])
def test_fractional_samples_equal_grid_sample_on_the_upsampled_map(low, high):
    f = random_map(4, *low, seed=1)
    full = FullResFeatures(upsample_features(f, *high))
    gen = torch.Generator().manual_seed(2)
    # positions inside, on the borders and up to 1.5 px outside (zeros padding there)
    ys = torch.rand(400, generator=gen) * (high[0] + 2) - 1.5
    xs = torch.rand(400, generator=gen) * (high[1] + 2) - 1.5
    ys[:4] = torch.tensor([0.0, high[0] - 1.0, -1.0, high[0] * 1.0])
    expected = full.bilinear(ys, xs)
    # the official normalise/unnormalise round trip moves positions by ~1 ulp of H: ~1e-5 at 128 px
    torch.testing.assert_close(sample_bilinear(f, ys, xs, *high), expected, rtol=0, atol=2e-5)
    outside = (ys <= -1) | (ys >= high[0]) | (xs <= -1) | (xs >= high[1])
    assert torch.all(sample_bilinear(f, ys, xs, *high)[:, outside] == 0)


def test_gradients_match_the_upsample_then_sample_path():
    f = random_map(3, 8, 8, seed=3).requires_grad_(True)
    ys = torch.tensor([[3.3, 17.9], [0.2, 31.0]])
    xs = torch.tensor([[5.5, 0.0], [30.7, 12.25]])
    weights = random_map(3, 2, 2, seed=4)[0]
    (LowResFeatures(f, 32, 32).bilinear(ys, xs) * weights).sum().backward()
    low_grad = f.grad.clone()
    f.grad = None
    (FullResFeatures.from_block(f, 32, 32).bilinear(ys, xs) * weights).sum().backward()
    torch.testing.assert_close(low_grad, f.grad, rtol=0, atol=1e-5)


def test_sources_report_image_size():
    f = random_map(7, 8, 4)
    low = LowResFeatures(f, 32, 16)
    full = FullResFeatures.from_block(f, 32, 16)
    assert (low.channels, low.height, low.width) == (full.channels, full.height, full.width) == (7, 32, 16)
    assert F.interpolate(f, [32, 16], mode="bilinear").shape == full.full.shape
