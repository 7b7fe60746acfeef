"""Pivotal tuning: tunes a copy towards the photo and leaves the base generator bit-identical."""

from __future__ import annotations

import pytest
import torch
from inversion_helpers import assert_unchanged, planted_image, state_snapshot

from inversion import InversionCancelled, ProjectionSettings, pivotal_tuning, project
from inversion._common import image_to_tensor
from inversion.lpips import STLPIPS


def test_pti_tunes_a_copy_and_base_stays_bit_identical(tiny_G, quick_settings: ProjectionSettings) -> None:
    # A photo the pivot cannot reach: another latent's image (projection stand-in: the mean w).
    _, target_pixels = planted_image(tiny_G, seed=11)
    _, target = image_to_tensor(target_pixels, tiny_G)
    with torch.no_grad():
        pivot = tiny_G.mapping(torch.randn(200, tiny_G.z_dim), None).mean(dim=0, keepdim=True)
    snapshot = state_snapshot(tiny_G)
    calls = []
    tuned, steps = pivotal_tuning(tiny_G, pivot, target, settings=quick_settings,
                                  progress=lambda s, t, m: calls.append((s, t, m["phase"])), return_steps=True)
    assert_unchanged(tiny_G, snapshot)
    assert tuned is not tiny_G and steps == quick_settings.pti_steps
    assert calls == [(s, quick_settings.pti_steps, "pti") for s in range(1, steps + 1)]
    assert all(not p.requires_grad and p.grad is None for p in tuned.parameters())
    tuned_state = tuned.state_dict()
    changed = [n for n, t in tuned_state.items() if not torch.equal(t, snapshot[n])]
    assert changed and all(n.startswith("synthesis.") for n in changed)  # mapping untouched
    metric = STLPIPS("vgg")
    with torch.no_grad():
        before = metric(tiny_G.synthesis(pivot, noise_mode="const"), target).item()
        after = metric(tuned.synthesis(pivot, noise_mode="const"), target).item()
    assert after < before * 0.8, (before, after)


def test_pti_cancel_and_bad_pivot(tiny_G, quick_settings: ProjectionSettings) -> None:
    _, target_pixels = planted_image(tiny_G)
    _, target = image_to_tensor(target_pixels, tiny_G)
    ws = torch.zeros(1, tiny_G.num_ws, tiny_G.w_dim)
    snapshot = state_snapshot(tiny_G)
    with pytest.raises(InversionCancelled):
        pivotal_tuning(tiny_G, ws, target, settings=quick_settings, should_cancel=lambda: True)
    assert_unchanged(tiny_G, snapshot)
    with pytest.raises(ValueError, match="ws must have shape"):
        pivotal_tuning(tiny_G, ws[:, :3], target, settings=quick_settings)
    with pytest.raises(ValueError, match="NaN"):
        pivotal_tuning(tiny_G, ws * float("nan"), target, settings=quick_settings)


def test_project_with_pti(tiny_G, quick_settings: ProjectionSettings) -> None:
    _, target = planted_image(tiny_G, seed=12)
    snapshot = state_snapshot(tiny_G)
    settings = quick_settings.replace(steps=15)
    phases = []
    res = project(tiny_G, target, pti=True, settings=settings,
                  progress=lambda s, t, m: phases.append((s, t, m["phase"])))
    assert_unchanged(tiny_G, snapshot)
    assert res.pti and res.generator is not tiny_G
    total = settings.steps + settings.pti_steps
    assert res.steps == total
    assert [p[0] for p in phases] == list(range(1, total + 1)) and all(p[1] == total for p in phases)
    assert phases[settings.steps - 1][2] == "project" and phases[settings.steps][2] == "pti"
    metric = STLPIPS("vgg")
    with torch.no_grad():  # the same latent on the untuned generator is further from the photo
        untuned = tiny_G.synthesis(res.ws, noise_mode="const").clamp(-1, 1)
        untuned_stlpips = metric(untuned, image_to_tensor(target, tiny_G)[1]).item()
    assert res.stlpips < untuned_stlpips
