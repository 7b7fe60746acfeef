"""A W+ encoder shipped beside a model file is loaded with it and starts the server's inversions;
one made for other weights is ignored; `serve` preloads the model and the perceptual networks."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest
import torch

from backend.model_pool import ModelPool, encoder_path
from draggan_util.hashing import sha256_file
from draggan_wire.client import Client
from inversion import ENCODER_PRESETS
from inversion.encoder import LatentEncoder, save_encoder

from .conftest import FAST, PYTHON, REPO, edit, make_tiny_generator, real_runner, start_server, subprocess_env


def write_encoder(model: Path, sha: str | None = None) -> Path:
    import stylegan2

    G = stylegan2.load_generator(model)
    torch.manual_seed(0)
    enc = LatentEncoder(G.num_ws, G.w_dim, input_size=32, channels=(8, 8, 8))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_encoder(enc, encoder_path(model), sha or sha256_file(model))
    return encoder_path(model)


def test_the_pool_loads_the_encoder_beside_the_model_and_ignores_a_foreign_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = make_tiny_generator(tmp_path / "tiny.pt")
    assert encoder_path(model) == tmp_path / "tiny.encoder.pt"
    pool = ModelPool({"tiny": model}, "cpu")
    assert pool.encoder_for(pool.get("tiny")) is None  # no file: no encoder

    write_encoder(model)
    pool = ModelPool({"tiny": model}, "cpu")
    G = pool.get("tiny")
    assert isinstance(pool.encoder_for(G), LatentEncoder)
    assert pool.encoder_for(object()) is None

    write_encoder(model, sha="f" * 64)  # trained for other weights
    pool = ModelPool({"tiny": model}, "cpu")
    with caplog.at_level(logging.WARNING, logger="draggan"):
        G = pool.get("tiny")
    assert pool.encoder_for(G) is None
    assert "another generator" in caplog.text


def test_the_servers_inversion_starts_from_the_encoder(tmp_path: Path, photo) -> None:  # noqa: ANN001
    model = make_tiny_generator(tmp_path / "tiny.pt")
    write_encoder(model)
    server = start_server(real_runner(model, inversion_steps=None))
    try:
        with Client(server.endpoint, timeout_s=60) as client:
            progress = []
            result = client.edit(edit(image=photo, params=FAST), on_progress=progress.append)
        totals = {p.total for p in progress if p.phase == "inversion" and p.total}
        # the encoder preset's step count, not the 150 of the search-started "fast" preset (a random
        # tiny model's picture is out of the quick path's reach, so the refinement may follow)
        preset = ENCODER_PRESETS["fast"]
        assert totals in ({preset.steps}, {preset.steps, preset.steps + preset.refine_steps}), totals
        assert result.inversion is not None and result.steps >= 1
    finally:
        server.stop()


def test_serve_preloads_in_the_background(tmp_path: Path) -> None:
    model = make_tiny_generator(tmp_path / "tiny.pt")
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([PYTHON, "-m", "backend.cli", "serve", "--bind", "tcp://127.0.0.1:0", "--model",
                                 f"tiny={model}", "--device", "cpu", "--no-cache", "-v"],
                                cwd=REPO, env=subprocess_env(), stderr=err, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "preloaded" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert "preloaded model 'tiny' and the perceptual networks" in text
        assert text.index("ready") < text.index("preloaded")  # serving did not wait for it
    finally:
        proc.terminate()
        proc.wait(timeout=30)
