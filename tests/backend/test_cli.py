"""The `draggan-backend` command line: help, purge, models, argument parsing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from backend.cli import _alignment_overrides, _parse_bytes, build_parser, main
from draggan_wire import protocol as P

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
    assert "faces-128" in out and "ffhq-512" in out and ("not installed" in out or "manual" in out)


def test_serve_refuses_an_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAGGAN_MODELS_DIR", str(tmp_path))
    assert main(["serve", "--model", "ffhq-512", "--device", "cpu", "--no-cache"]) == 2
    assert "python install.py --model ffhq-512" in capsys.readouterr().err


def _serve_align(*args: str) -> dict[str, str]:
    """`serve ARGS` parsed as main() does: the --model-align overrides (name -> kind)."""
    parsed = build_parser().parse_args(["serve", *args])
    return _alignment_overrides(parsed.model_align, parsed.model)


def test_model_align_accepts_served_registered_and_registry_names(tmp_path: Path, tiny_model: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from backend import models

    monkeypatch.setenv("DRAGGAN_MODELS_DIR", str(tmp_path))
    models.add_model_file(tiny_model, "mine", out=None)  # `install.py --model-file tiny.pt mine`
    assert _serve_align() == {}
    assert _serve_align("--model", "myface=/data/ffhq-tune.pkl", "--model-align", "myface=ffhq") == {"myface": "ffhq"}
    # every --model form names a model --model-align can flag; registered and registry names too
    assert _serve_align("--model", str(tiny_model), "--model", "ffhq-512", "--model-align", "tiny=FFHQ",
                        "--model-align", "ffhq-512=none", "--model-align", "mine=ffhq",
                        "--model-align", "lions-512=none") == {
        "tiny": "ffhq", "ffhq-512": "none", "mine": "ffhq", "lions-512": "none"}
    assert _serve_align("--model", "a=/x.pt", "--model-align", "a=ffhq", "--model-align", "a=none") == {"a": "none"}


@pytest.mark.parametrize("args, words", [
    (["--model", "myface=/x.pkl", "--model-align", "myface=dlib"], ["unknown alignment 'dlib'", "none, ffhq"]),
    (["--model", "myface=/x.pkl", "--model-align", "myface"], ["is not NAME=KIND", "none, ffhq"]),
    (["--model", "myface=/x.pkl", "--model-align", "=ffhq"], ["is not NAME=KIND"]),
    (["--model", "myface=/x.pkl", "--model-align", "myfac=ffhq"], ["unknown model 'myfac'", "myface", "ffhq-512"]),
])
def test_model_align_refuses_bad_values(args: list[str], words: list[str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAGGAN_MODELS_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["serve", *args, "--device", "cpu", "--no-cache"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --model-align" in err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("text, value", [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GB", int(1.5 * (1 << 30))),
                                         ("1000", 1000), ("2 GiB", 2 << 30)])
def test_sizes(text: str, value: int) -> None:
    assert _parse_bytes(text) == value


def _interrupt(proc: subprocess.Popen) -> None:
    """Stop a `serve` process as Ctrl+C does; kill it if it has not exited within 30 s."""
    proc.send_signal(2)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "backend.cli", "status", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)


def test_status_with_nothing_listening_fails_within_five_seconds() -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    out = _status("--address", f"tcp://127.0.0.1:{port}")
    assert out.returncode == 1 and time.monotonic() - started < 5.0
    assert "no answer" in out.stderr


def test_status_and_models_against_a_real_server(tiny_model: Path, tmp_path: Path) -> None:
    from backend import keys

    from .test_server_restart import free_port

    keys_dir = tmp_path / "keys"
    keys.init(keys_dir)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([PYTHON, "-m", "backend.cli", "serve", "--bind", f"tcp://127.0.0.1:{port}", "--curve",
                             "--keys-dir", str(keys_dir), "--model", f"tiny={tiny_model}", "--device", "cpu",
                             "--no-cache"], cwd=REPO, env=subprocess_env(), stderr=log.open("w"), text=True)
    try:
        address = f"tcp://127.0.0.1:{port}"
        for _ in range(120):  # the server imports torch first
            out = _status("--address", address, "--keys-dir", str(keys_dir))
            if out.returncode == 0:
                break
        assert out.returncode == 0, out.stderr + log.read_text()
        text = out.stdout
        for words in (f"protocol {P.PROTOCOL_VERSION}", "device   : cpu", "tiny (32x32, loaded)", "auth     : curve",
                      "queue    : 0 running, 0 waiting (limit 4)", "16 connections",
                      "stores   : 0 of 64 photos (0% full), 0 of 32 drag sessions (0% full), held by 0 client(s)",
                      "waiting  : 0 of 4 queue places (0% full)", "of 16 connections"):
            assert words in text, text
        plain = _status("--address", address, "--timeout", "1")  # a CURVE server refuses a keyless client
        assert plain.returncode != 0
    finally:
        _interrupt(proc)
    models = subprocess.run([PYTHON, "-m", "backend.cli", "models"], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert models.returncode == 0 and "faces-128" in models.stdout
    assert "manual downloads" in models.stdout and "--model-file PATH human-512" in models.stdout
    listed = subprocess.run([PYTHON, "-m", "backend.models", "list"], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert listed.stdout.strip() in models.stdout  # the same table as install.py --list-models
    helped = subprocess.run([PYTHON, "-m", "backend.cli", "models", "--help"], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert "install.py --list-models" in helped.stdout and "manual" in helped.stdout


def test_served_model_align_reaches_welcome_status_and_banner(tiny_model: Path, tmp_path: Path) -> None:
    """`serve --model-align`: welcome's models[].alignment (what the plug-in's align=auto follows),
    `status` and the start-up banner say the alignment the server uses."""
    from backend import keys
    from draggan_wire.client import Client, ClientKeys

    from .test_server_restart import free_port

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    keys.init(keys.default_keys_dir())  # what the default serve makes on first use (no-op when there)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([PYTHON, "-m", "backend.cli", "serve", "--bind", address, "--model", f"tiny={tiny_model}",
                             "--model", f"plain={tiny_model}", "--model-align", "tiny=ffhq", "--device", "cpu",
                             "--no-cache", "--no-preload"], cwd=REPO, env=subprocess_env(), stderr=log.open("w"),
                            text=True)
    try:
        # generous handshake retries: the process imports torch first
        with Client(address, keys=ClientKeys.for_endpoint(address), timeout_s=60, connect_timeout_s=2.0,
                    retries=60) as client:
            served = {m.name: m.alignment for m in client.hello().models}
        assert served["tiny"] == "ffhq" and served["plain"] == "none", served
        out = _status("--address", address)
        assert out.returncode == 0, out.stderr
        assert "tiny (32x32, loaded, ffhq alignment)" in out.stdout and "plain (32x32, available)" in out.stdout
        assert "tiny (32x32, loaded, ffhq alignment)" in log.read_text()
    finally:
        _interrupt(proc)
