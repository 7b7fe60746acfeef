"""The model registry's alignment field: which kind of face alignment each model asks for."""

from __future__ import annotations

import pytest

from alignment import align
from backend import models
from draggan_wire import protocol


def test_alignment_per_model() -> None:
    assert models.REGISTRY["ffhq-512"].alignment == "ffhq"
    assert models.REGISTRY[models.DEFAULT_MODEL].alignment == "none"   # faces-128: see docs/alignment.md
    for spec in models.REGISTRY.values():
        assert spec.alignment in align.ALIGNMENTS
        if spec.name != "ffhq-512":
            assert spec.alignment == "none", spec.name
    infos = {m.name: m for m in models.available_models(folder=models.Path("/nonexistent-models-dir"))}
    assert infos["ffhq-512"].alignment == "ffhq" and infos["lions-512"].alignment == "none"


def test_auto_and_off() -> None:
    assert models.model_alignment("ffhq-512") == "ffhq"
    assert models.model_alignment("ffhq-512", "off") == "none"
    assert models.model_alignment("faces-128", "auto") == "none"
    assert models.model_alignment("my-custom-model", "auto") == "none"   # no registry entry: none
    with pytest.raises(ValueError):
        models.model_alignment("ffhq-512", "on")


def test_server_overrides() -> None:
    """`serve --model-align NAME=KIND`: a custom file flagged ffhq, a registry model turned off."""
    overrides = {"myface": "ffhq", "ffhq-512": "none"}
    assert models.model_alignment("myface", "auto", overrides) == "ffhq"
    assert models.model_alignment("myface", "off", overrides) == "none"
    assert models.model_alignment("ffhq-512", "auto", overrides) == "none"
    assert models.model_alignment("lions-512", "auto", overrides) == "none"
    assert models.model_alignment("myface", "auto", {}) == "none"
    # the CLI validates against protocol.ALIGNMENTS (torch-free): it must be align.ALIGNMENTS
    assert protocol.ALIGNMENTS == align.ALIGNMENTS
