"""The poor-inversion verdict uses the model's own thresholds (sent by the backend), with defaults
for a backend or model that sends none."""

from __future__ import annotations

import json
from types import SimpleNamespace

from draggan_core import texts


def test_model_limits_come_from_the_model_else_defaults() -> None:
    assert texts.model_limits(SimpleNamespace(name="x")) == (texts.POOR_STLPIPS, texts.POOR_PSNR_DB)
    assert texts.model_limits(SimpleNamespace(poor_stlpips=0.0, poor_psnr_db=0.0)) == (0.35, 16.0)
    assert texts.model_limits(SimpleNamespace(poor_stlpips=0.12, poor_psnr_db=20.5)) == (0.12, 20.5)


def test_the_issues_out_of_domain_figures_are_poor_under_calibrated_limits() -> None:
    # two out-of-domain crops, reported by a user, scored (ST-LPIPS, PSNR) = (0.14, 19.0) and (0.31, 16.4):
    # under the old constants neither was flagged.
    for stlpips, psnr in ((0.14, 19.0), (0.31, 16.4)):
        assert not texts.is_poor(psnr, stlpips)
        assert texts.is_poor(psnr, stlpips, (0.12, 20.0))
    assert not texts.is_poor(23.0, 0.08, (0.12, 20.0))              # an in-domain fit stays good
    line = texts.quality_text(19.0, 0.14, (0.12, 20.0))
    assert line.startswith("reconstruction poor") and "ST-LPIPS 0.140" in line


def test_welcome_carries_each_models_thresholds_to_the_plugin() -> None:
    from draggan_wire import protocol

    sys_path_repo()
    from backend import models

    welcome = protocol.Welcome(server="t", protocol=protocol.PROTOCOL_VERSION, device="cpu", models=[
        protocol.ModelEntry("faces-128", 128, 128, True, 0.12, 20.5), protocol.ModelEntry("old", 64, 64, False)])
    env = protocol.decode(protocol.encode(welcome, "r1"), allowed=protocol.REPLY_TYPES)
    got = env.message.models
    assert (got[0].poor_stlpips, got[0].poor_psnr_db) == (0.12, 20.5)
    assert texts.model_limits(got[0]) == (0.12, 20.5)
    assert texts.model_limits(got[1]) == (texts.POOR_STLPIPS, texts.POOR_PSNR_DB)   # none sent: defaults
    # the server fills them from the model registry (the default model's committed calibration)
    poor = models.poor_inversion(models.DEFAULT_MODEL)
    assert (poor.stlpips, poor.psnr_db) != (0.35, 16.0)
    fallback = models.poor_inversion("ffhq-512")
    assert (fallback.stlpips, fallback.psnr_db) == (0.35, 16.0)


def test_welcome_carries_each_models_framing() -> None:
    """The built-in faces-128 draws whole faces ("whole": the plug-in's Auto crop sends the whole layer);
    models without an entry and older servers (no field) mean "any"; anything else is refused."""
    import pytest

    from draggan_wire import protocol

    sys_path_repo()
    from backend import models

    welcome = protocol.Welcome(server="t", protocol=protocol.PROTOCOL_VERSION, device="cpu", models=[
        protocol.ModelEntry("faces-128", 128, 128, True, framing="whole"), protocol.ModelEntry("x", 64, 64, False)])
    frames = protocol.encode(welcome, "r1")
    got = protocol.decode(frames, allowed=protocol.REPLY_TYPES).message.models
    assert [m.framing for m in got] == ["whole", "any"]
    header = json.loads(frames[0])
    del header["fields"]["models"][0]["framing"]                       # an older server's welcome
    old = protocol.decode([json.dumps(header).encode(), *frames[1:]], allowed=protocol.REPLY_TYPES)
    assert old.message.models[0].framing == "any"
    header["fields"]["models"][0]["framing"] = "part"
    with pytest.raises(protocol.ProtocolError, match="framing"):
        protocol.decode([json.dumps(header).encode(), *frames[1:]], allowed=protocol.REPLY_TYPES)
    assert models.model_framing(models.DEFAULT_MODEL) == "whole"
    assert {name for name, spec in models.REGISTRY.items() if spec.framing != "any"} == {models.DEFAULT_MODEL}
    assert models.model_framing("ffhq-512") == models.model_framing("my-file") == "any"


def sys_path_repo() -> None:
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    if repo not in sys.path:
        sys.path.insert(0, repo)
