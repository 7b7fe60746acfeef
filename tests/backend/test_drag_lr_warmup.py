"""The server's per-model drag step-size warm-up (issue 15's lr_schedule report): the embedded default
model drags with its measured larger first steps, every other model with the official constant lr."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from backend import jobs, models
from backend import protocol as P

G_WITH_7_BLOCKS = SimpleNamespace(synthesis=SimpleNamespace(num_blocks=7))


def test_the_default_model_gets_its_warm_up_and_others_the_constant_lr() -> None:
    params = jobs._drag_params(P.EditParams(), G_WITH_7_BLOCKS, models.DEFAULT_MODEL)
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    assert (params.lr_boost, params.lr_half_life) == (spec.drag_lr_boost, spec.drag_lr_half_life)
    assert params.lr_boost > 1 and params.lr_at(0) == pytest.approx(P.EditParams().lr * spec.drag_lr_boost)
    for name in ("ffhq-512", "lions-512", "my-custom-file", "tiny"):
        other = jobs._drag_params(P.EditParams(), G_WITH_7_BLOCKS, name)
        assert other.lr_boost == 1.0 and other.lr_at(0) == other.lr_at(100) == P.EditParams().lr, name
    # the user's lr is the floor the warm-up decays to; everything else passes through unchanged
    mine = jobs._drag_params(P.EditParams(lr=0.004, max_steps=50, r1=5.0), G_WITH_7_BLOCKS, models.DEFAULT_MODEL)
    assert mine.lr == 0.004 and mine.max_steps == 50 and mine.r1 == 5.0 and mine.feature_block == 5
    assert mine.lr_at(10_000) == pytest.approx(0.004)
    mine.validate()


def test_only_measured_models_have_a_warm_up() -> None:
    """A boost is a measured figure (benchmarks/fidelity.py); the official checkpoints keep the paper's lr."""
    boosted = {name for name, spec in models.REGISTRY.items() if spec.drag_lr_boost != 1.0}
    assert boosted == {models.DEFAULT_MODEL}
    assert models.model_drag_lr_warmup("not-in-the-registry") == (1.0, 20.0)
