"""The server's per-model drag settings (measured with the lr_schedule hook): the embedded default model drags
with its measured larger first steps, 1 px stop distance and mask weight 5 (when the request leaves the
weight to the model), every other model with the official constant lr, stop rule and the paper's 20."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from backend import edit_runner, models
from draggan_wire import protocol as P

G_WITH_7_BLOCKS = SimpleNamespace(synthesis=SimpleNamespace(num_blocks=7))


def test_the_default_model_gets_its_settings_and_others_the_official_ones() -> None:
    params = edit_runner._drag_params(P.EditParams(), G_WITH_7_BLOCKS, models.DEFAULT_MODEL)
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    assert (params.lr_boost, params.lr_half_life, params.stop_distance, params.lambda_mask) == (
        spec.drag.lr_boost, spec.drag.lr_half_life, spec.drag.stop_distance, spec.drag.lambda_mask)
    assert params.lr_boost > 1 and params.lr_at(0) == pytest.approx(P.EditParams().lr * spec.drag.lr_boost)
    assert 0 < params.lambda_mask < 20  # lighter than the paper's: small selections stall less
    assert 0 < params.stop_distance < 2  # finer than the official rule's 2 px floor
    for name in ("ffhq-512", "lions-512", "my-custom-file", "tiny"):
        other = edit_runner._drag_params(P.EditParams(), G_WITH_7_BLOCKS, name)
        assert other.lr_boost == 1.0 and other.lr_at(0) == other.lr_at(100) == P.EditParams().lr, name
        assert other.stop_distance == 0.0, name  # 0 = the official max(2 / 512 * H, 2)
        assert other.lambda_mask == 20.0, name  # the paper's
    # the user's lr is the floor the warm-up decays to; everything else passes through unchanged
    mine = edit_runner._drag_params(P.EditParams(lr=0.004, max_steps=50, r1=5.0), G_WITH_7_BLOCKS, models.DEFAULT_MODEL)
    assert mine.lr == 0.004 and mine.max_steps == 50 and mine.r1 == 5.0 and mine.feature_block == 5
    assert mine.lr_at(10_000) == pytest.approx(0.004)
    mine.validate()
    # a mask weight the user chose wins over the model's, 0 included
    for chosen in (0.0, 20.0, 7.5):
        assert edit_runner._drag_params(P.EditParams(lambda_mask=chosen), G_WITH_7_BLOCKS,
                                 models.DEFAULT_MODEL).lambda_mask == chosen


def test_the_mask_weight_left_to_the_model_travels_as_no_field() -> None:
    """``lambda_mask=None`` (the plug-in's "-1 = the model's own") is sent as no field, which servers of
    this protocol before the per-model weight read as their 20; null and absence both parse to None."""
    assert "lambda_mask" not in P.EditParams().to_fields()
    assert P.EditParams(lambda_mask=3.0).to_fields()["lambda_mask"] == 3.0
    assert P.EditParams.from_fields({}).lambda_mask is None
    assert P.EditParams.from_fields({"lambda_mask": None}).lambda_mask is None
    assert P.EditParams.from_fields({"lambda_mask": 0}).lambda_mask == 0.0
    for bad in (-1, "5", float("inf"), 1e5, True):
        with pytest.raises(P.ProtocolError, match="lambda_mask"):
            P.EditParams.from_fields({"lambda_mask": bad})


def test_only_measured_models_have_their_own_settings() -> None:
    """Each value is a measured figure (benchmarks/fidelity.py); the official checkpoints keep the paper's."""
    own = {name for name, spec in models.REGISTRY.items() if spec.drag != models.DragDefaults()}
    assert own == {models.DEFAULT_MODEL}
    assert models.model_drag_defaults("not-in-the-registry") == models.DragDefaults()
    assert models.DragDefaults() == models.DragDefaults(1.0, 20.0, 0.0, 20.0)
