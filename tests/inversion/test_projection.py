"""Projection into W+: recovers a planted latent's image, reports progress, cancels, checks inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inversion_helpers import assert_unchanged, planted_image, state_snapshot

from inversion import InversionCancelled, ProjectionSettings, project
from inversion._common import psnr_uint8, tensor_to_uint8


def test_recovers_planted_latent_image(tiny_G, quick_settings: ProjectionSettings) -> None:
    _, target = planted_image(tiny_G)
    with torch.no_grad():  # where the projection starts from (roughly): the average latent's image
        w_mean = tiny_G.mapping(torch.randn(500, tiny_G.z_dim), None).mean(dim=0, keepdim=True)
        start = tensor_to_uint8(tiny_G.synthesis(w_mean, noise_mode="const"))
    snapshot = state_snapshot(tiny_G)
    calls: list[tuple[int, int, dict]] = []
    res = project(tiny_G, target, settings=quick_settings, progress=lambda s, t, m: calls.append((s, t, m)))

    assert res.ws.shape == (1, tiny_G.num_ws, tiny_G.w_dim) and torch.isfinite(res.ws).all()
    assert res.generator is tiny_G and not res.from_cache and res.steps == quick_settings.steps
    assert res.reconstruction.dtype == np.uint8 and res.reconstruction.shape == target.shape
    # the reported figures are those of the returned latent and generator
    with torch.no_grad():
        again = tensor_to_uint8(tiny_G.synthesis(res.ws, noise_mode="const"))
    assert np.array_equal(again, res.reconstruction)
    assert res.psnr == pytest.approx(psnr_uint8(res.reconstruction, target))
    # thresholds: well above the start (~8 dB) and perceptually close (ST-LPIPS VGG scale)
    assert res.psnr > psnr_uint8(start, target) + 6.0
    assert res.psnr > 15.0
    assert res.stlpips < 0.2
    assert_unchanged(tiny_G, snapshot)

    assert [c[0] for c in calls] == list(range(1, quick_settings.steps + 1))
    assert all(c[1] == quick_settings.steps for c in calls)
    assert {"phase", "loss", "stlpips", "psnr"} <= set(calls[-1][2]) and calls[-1][2]["phase"] == "project"
    assert calls[-1][2]["loss"] < calls[0][2]["loss"]


def test_cancel_raises_and_leaves_generator_alone(tiny_G, quick_settings: ProjectionSettings) -> None:
    _, target = planted_image(tiny_G, seed=6)
    snapshot = state_snapshot(tiny_G)
    polls = []

    def should_cancel() -> bool:
        polls.append(1)
        return len(polls) > 4

    with pytest.raises(InversionCancelled):
        project(tiny_G, target, settings=quick_settings.replace(optimize_noise=True), should_cancel=should_cancel)
    assert len(polls) == 5  # stopped at the first poll that said yes
    assert_unchanged(tiny_G, snapshot)


def test_optimised_noise_lives_in_a_weight_sharing_copy(tiny_G, quick_settings: ProjectionSettings) -> None:
    _, target = planted_image(tiny_G, seed=7)
    snapshot = state_snapshot(tiny_G)
    res = project(tiny_G, target, settings=quick_settings.replace(steps=10, optimize_noise=True))
    assert_unchanged(tiny_G, snapshot)  # the base generator's noise buffers are bit-identical
    tuned = res.generator
    assert tuned is not tiny_G
    base_params = dict(tiny_G.named_parameters())
    assert all(p.data_ptr() == base_params[n].data_ptr() for n, p in tuned.named_parameters())
    noise_names = [n for n in tiny_G.state_dict() if n.endswith("noise_const")]
    assert noise_names
    assert all(not torch.equal(tuned.state_dict()[n], snapshot[n]) for n in noise_names)
    for n in noise_names:  # kept zero-mean, unit-variance by the projector
        v = tuned.state_dict()[n]
        assert abs(float(v.mean())) < 1e-4 and float(v.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    with torch.no_grad():
        assert np.array_equal(tensor_to_uint8(tuned.synthesis(res.ws, noise_mode="const")), res.reconstruction)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: np.zeros((32, 32), np.uint8), "grayscale"),
        (lambda: np.zeros((32, 32, 1), np.uint8), "grayscale"),
        (lambda: np.zeros((32, 32, 4), np.uint8), "RGBA"),
        (lambda: np.zeros((48, 32, 3), np.uint8), "32x48 pixels but the model outputs 32x32"),
        (lambda: np.full((32, 32, 3), np.nan, np.float32), "NaN"),
        (lambda: np.full((32, 32, 3), 300.0), r"\[0, 255\]"),
        (lambda: np.zeros((32, 32, 3), np.complex64), "dtype"),
        (lambda: [[0, 0, 0]], "numpy array"),
        (lambda: np.zeros((2, 32, 32, 3), np.uint8), r"\[H, W, 3\]"),
    ],
)
def test_bad_images_are_refused_clearly(tiny_G, make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        project(tiny_G, make())


def test_bad_preset_and_settings(tiny_G) -> None:
    _, target = planted_image(tiny_G)
    with pytest.raises(ValueError, match="preset"):
        project(tiny_G, target, preset="fastest")
    with pytest.raises(ValueError, match="lpips_net"):
        ProjectionSettings(lpips_net="squeeze")
    with pytest.raises(ValueError, match="w_phase"):
        ProjectionSettings(w_phase=1.5)


def test_float_image_in_0_255_is_accepted(tiny_G, quick_settings: ProjectionSettings) -> None:
    _, target = planted_image(tiny_G)
    res = project(tiny_G, target.astype(np.float32), settings=quick_settings.replace(steps=2, search_samples=0))
    assert res.steps == 2 and res.ws.shape == (1, tiny_G.num_ws, tiny_G.w_dim)
