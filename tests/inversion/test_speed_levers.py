"""Inversion speed levers: lighter network for the first steps, precision, random ST-LPIPS for timing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from inversion_helpers import assert_unchanged, planted_image, state_snapshot

from inversion import ProjectionSettings, project
from inversion import _common as common
from inversion.lpips import STLPIPS
from inversion.settings import settings_key


def test_new_fields_stay_out_of_the_cache_key_at_their_defaults() -> None:
    settings = ProjectionSettings()
    old = {k: v for k, v in dataclasses.asdict(settings).items()
           if k not in ("precision", "early_fraction", "early_net", "early_max_side", "refine_steps",
                        "refine_above", "pti_lpips_net", "pti_lpips_max_side")}
    assert settings_key(settings) == old  # entries written before these fields existed still hit
    assert settings_key(settings.replace(early_fraction=0.5))["early_fraction"] == 0.5
    assert settings_key(settings.replace(precision="bf16"))["precision"] == "bf16"
    assert settings_key(settings.replace(refine_steps=100))["refine_steps"] == 100
    assert settings_key(settings.replace(pti_lpips_net="alex"))["pti_lpips_net"] == "alex"


@pytest.mark.parametrize(("field", "value"), [("precision", "fp16"), ("early_fraction", 1.5),
                                              ("early_net", "squeeze"), ("early_max_side", -1),
                                              ("refine_steps", -1), ("refine_above", -0.1)])
def test_bad_lever_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ProjectionSettings(**{field: value})


def test_early_phase_uses_the_light_network_then_the_main_one(tiny_G, quick_settings, monkeypatch) -> None:
    _, target = planted_image(tiny_G, seed=8)
    used: list[str] = []
    original = common.shared_stlpips

    def spy(net: str, device: torch.device) -> STLPIPS:
        used.append(net)
        return original(net, device)

    monkeypatch.setattr("inversion.settings.shared_stlpips", spy)
    settings = quick_settings.replace(lpips_net="vgg", early_fraction=0.5, early_net="alex", steps=20)
    calls: list[dict] = []
    snapshot = state_snapshot(tiny_G)
    res = project(tiny_G, target, settings=settings, progress=lambda s, t, m: calls.append(m))
    assert_unchanged(tiny_G, snapshot)
    assert set(used) == {"vgg", "alex"}
    assert len(calls) == 20 and res.steps == 20 and torch.isfinite(res.ws).all()
    assert res.psnr > 12.0 and res.stlpips < 0.35


def test_bf16_projection_runs_and_returns_float32(tiny_G, quick_settings) -> None:
    _, target = planted_image(tiny_G, seed=9)
    settings = quick_settings.replace(steps=6, search_samples=2)
    fp32 = project(tiny_G, target, settings=settings)
    bf16 = project(tiny_G, target, settings=settings.replace(precision="bf16"))
    assert bf16.ws.dtype == torch.float32 and torch.isfinite(bf16.ws).all()
    assert bf16.reconstruction.dtype == np.uint8
    assert abs(bf16.psnr - fp32.psnr) < 1.5 and abs(bf16.stlpips - fp32.stlpips) < 0.05


def test_random_stlpips_has_the_shipped_shapes_and_can_stand_in(monkeypatch) -> None:
    shipped = STLPIPS("alex")
    random = STLPIPS("alex", weights="random")
    assert random.shipped_keys == ()
    assert {k: v.shape for k, v in shipped.state_dict().items()} == {k: v.shape for k, v in random.state_dict().items()}
    image = torch.rand(1, 3, 40, 40) * 2 - 1
    assert float(random(image, image)) == 0.0 and float(random(image, -image)) > 0
    with pytest.raises(ValueError, match="weights"):
        STLPIPS("alex", weights="other")  # type: ignore[arg-type]
    monkeypatch.setattr(common, "_lpips_nets", {})
    common.register_stlpips("alex", "cpu", random)
    assert common.shared_stlpips("alex", torch.device("cpu")) is random
