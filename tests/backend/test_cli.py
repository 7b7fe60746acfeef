"""The `draggan-backend` command line: help, purge, models, argument parsing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from backend.cli import _parse_bytes, main

from .conftest import PYTHON, REPO, subprocess_env


def test_help_explains_commands_and_security() -> None:
    out = subprocess.run([PYTHON, "-m", "backend.cli", "serve", "--help"], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for words in ("--model", "--bind", "--max-memory", "--no-cache", "--insecure", "CURVE", "loopback"):
        assert words in out.stdout
    top = subprocess.run([PYTHON, "-m", "backend.cli", "--help"], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, timeout=60)
    assert "docs/remote.md" in top.stdout and "keys init" in top.stdout


def test_purge_deletes_the_latent_cache(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "latents"
    cache.mkdir()
    (cache / "a.pt").write_bytes(b"x")
    assert main(["purge", "--cache-dir", str(cache)]) == 0
    assert not cache.exists() and "deleted 1" in capsys.readouterr().out
    assert main(["purge", "--cache-dir", str(cache)]) == 0
    assert "nothing to purge" in capsys.readouterr().out


def test_models_lists_the_registry(capsys: pytest.CaptureFixture, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAGGAN_MODELS_DIR", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "faces-128" in out and "ffhq-512" in out and "not installed" in out


def test_serve_refuses_an_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAGGAN_MODELS_DIR", str(tmp_path))
    assert main(["serve", "--model", "ffhq-512", "--device", "cpu", "--no-cache"]) == 2
    assert "python install.py --model ffhq-512" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GB", int(1.5 * (1 << 30))),
                                         ("1000", 1000), ("2 GiB", 2 << 30)])
def test_sizes(text: str, value: int) -> None:
    assert _parse_bytes(text) == value
