"""The server's per-model drag settings (issue 15's lr_schedule report): the embedded default model drags
with its measured larger first steps and 1 px stop distance, every other model with the official
constant lr and stop rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from backend import jobs, models
from backend import protocol as P

G_WITH_7_BLOCKS = SimpleNamespace(synthesis=SimpleNamespace(num_blocks=7))


def test_the_default_model_gets_its_settings_and_others_the_official_ones() -> None:
    params = jobs._drag_params(P.EditParams(), G_WITH_7_BLOCKS, models.DEFAULT_MODEL)
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    assert (params.lr_boost, params.lr_half_life, params.stop_distance) == (
        spec.drag_lr_boost, spec.drag_lr_half_life, spec.drag_stop_distance)
    assert params.lr_boost > 1 and params.lr_at(0) == pytest.approx(P.EditParams().lr * spec.drag_lr_boost)
    assert 0 < params.stop_distance < 2  # finer than the official rule's 2 px floor
    for name in ("ffhq-512", "lions-512", "my-custom-file", "tiny"):
        other = jobs._drag_params(P.EditParams(), G_WITH_7_BLOCKS, name)
        assert other.lr_boost == 1.0 and other.lr_at(0) == other.lr_at(100) == P.EditParams().lr, name
        assert other.stop_distance == 0.0, name  # 0 = the official max(2 / 512 * H, 2)
    # the user's lr is the floor the warm-up decays to; everything else passes through unchanged
    mine = jobs._drag_params(P.EditParams(lr=0.004, max_steps=50, r1=5.0), G_WITH_7_BLOCKS, models.DEFAULT_MODEL)
    assert mine.lr == 0.004 and mine.max_steps == 50 and mine.r1 == 5.0 and mine.feature_block == 5
    assert mine.lr_at(10_000) == pytest.approx(0.004)
    mine.validate()


def test_only_measured_models_have_their_own_settings() -> None:
    """Each value is a measured figure (benchmarks/fidelity.py); the official checkpoints keep the paper's."""
    own = {name for name, spec in models.REGISTRY.items()
           if (spec.drag_lr_boost, spec.drag_stop_distance) != (1.0, 0.0)}
    assert own == {models.DEFAULT_MODEL}
    assert models.model_drag_defaults("not-in-the-registry") == models.DragDefaults()
    assert models.DragDefaults() == models.DragDefaults(1.0, 20.0, 0.0)
