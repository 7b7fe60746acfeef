"""CURVE security and the CLI's refusals: key files, allow-list, wrong keys, non-loopback binds."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from backend import keys
from backend.cli import is_loopback, main
from draggan_wire.client import Client, ClientKeys, read_public_key, read_secret_key
from draggan_wire.protocol import ErrorCode, ProtocolError

from .conftest import PYTHON, REPO, FakeRunner, fake_edit, start_server, subprocess_env


@pytest.fixture()
def keys_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    keys.init(folder)
    return folder


def curve_server(keys_dir: Path, runner: FakeRunner | None = None):  # type: ignore[no-untyped-def]
    server_keys = keys.load_server_keys(keys_dir)
    return start_server(runner or FakeRunner(), auth="curve", server_public_key=server_keys.public,
                        server_secret_key=server_keys.secret, allowed_clients_dir=str(server_keys.allowed_dir))


def test_keys_init_makes_private_files_and_lists_public_keys(keys_dir: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((keys_dir / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) & 0o077 == 0
    assert (keys_dir / "allowed_clients" / "local.key").is_file()
    assert "secret-key" not in (keys_dir / "server.key").read_text()
    assert main(["keys", "--keys-dir", str(keys_dir), "list"]) == 0
    out = capsys.readouterr().out
    assert read_public_key(str(keys_dir / "server.key")).decode() in out and "allowed clients (1)" in out
    assert main(["keys", "--keys-dir", str(keys_dir), "init"]) == 0  # idempotent: keeps the pairs
    assert "exists" in capsys.readouterr().out
    assert main(["keys", "--keys-dir", str(keys_dir), "new-client", "laptop"]) == 0
    assert (keys_dir / "allowed_clients" / "laptop.key").is_file()


def test_allowed_key_works_and_requests_are_owned_by_the_key(keys_dir: Path) -> None:
    runner = FakeRunner(steps=1)
    server = curve_server(keys_dir, runner)
    try:
        with Client(server.endpoint, keys=ClientKeys.from_dir(str(keys_dir))) as client:
            assert client.hello().auth == "curve"
            client.edit(fake_edit())
        public = read_public_key(str(keys_dir / "client.key")).decode()
        assert runner.owners == [f"key:{public}"]
    finally:
        server.stop()


def test_unknown_client_key_is_refused_with_a_clear_error(keys_dir: Path) -> None:
    keys.create_pair(keys_dir, "stranger")  # made, but never allowed in
    server = curve_server(keys_dir)
    try:
        secret = str(keys_dir / "stranger.key_secret")
        stranger = ClientKeys(read_public_key(str(keys_dir / "server.key")), read_public_key(secret),
                              read_secret_key(secret))
        with Client(server.endpoint, keys=stranger, connect_timeout_s=1.0, retries=2) as client:
            with pytest.raises(ProtocolError) as info:
                client.hello()
        assert info.value.code == ErrorCode.AUTH and "allow-list" in info.value.message
        # allowing it takes effect without a restart (the allow-list folder is re-read)
        keys.allow(keys_dir, keys_dir / "stranger.key")
        deadline = time.monotonic() + 20
        while True:
            try:
                with Client(server.endpoint, keys=stranger, connect_timeout_s=1.0, retries=1) as client:
                    assert client.hello().auth == "curve"
                break
            except ProtocolError:
                assert time.monotonic() < deadline, "the allow-list was not re-read"
    finally:
        server.stop()


def test_wrong_server_key_or_no_keys_fail_with_a_clear_client_error(keys_dir: Path) -> None:
    server = curve_server(keys_dir)
    keys.create_pair(keys_dir, "impostor")
    try:
        good = ClientKeys.from_dir(str(keys_dir))
        wrong = ClientKeys(read_public_key(str(keys_dir / "impostor.key")), good.client_public, good.client_secret)
        with Client(server.endpoint, keys=wrong, connect_timeout_s=1.0, retries=2) as client:
            with pytest.raises(ProtocolError) as info:
                client.hello()
        assert info.value.code == ErrorCode.AUTH and "server.key" in info.value.message
        with Client(server.endpoint, connect_timeout_s=1.0, retries=2) as client:
            with pytest.raises(ProtocolError) as info:
                client.hello()
        assert info.value.code == ErrorCode.AUTH and "has none" in info.value.message
    finally:
        server.stop()


def test_client_keys_missing_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as info:
        ClientKeys.from_dir(str(tmp_path))
    assert info.value.code == ErrorCode.AUTH and "docs/remote.md" in info.value.message


def test_non_loopback_bind_without_keys_refuses_to_start(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--bind", "tcp://0.0.0.0:0", "--keys-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "requires CURVE keys" in err and "draggan-backend keys init" in err and "SSH tunnel" in err


def test_secret_key_readable_by_others_refuses_to_start(keys_dir: Path, capsys: pytest.CaptureFixture) -> None:
    if os.name != "posix":  # pragma: no cover - the check is about POSIX permission bits
        pytest.skip("POSIX permissions only")
    os.chmod(keys_dir / "server.key_secret", 0o644)
    assert main(["serve", "--bind", "tcp://192.0.2.1:5555", "--keys-dir", str(keys_dir)]) == 2
    err = capsys.readouterr().err
    assert "readable by other users" in err and "chmod 600" in err


@pytest.mark.parametrize("endpoint, loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.5.0.1:1", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/draggan", True), ("tcp://0.0.0.0:5555", False),
    ("tcp://*:5555", False), ("tcp://192.168.1.20:5555", False), ("tcp://eth0:5555", False),
    ("tcp://workstation.local:5555", False),
])
def test_loopback_detection(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


def test_insecure_network_bind_warns_loudly_and_stops_cleanly_on_sigint(tiny_model: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen([PYTHON, "-m", "backend.cli", "serve", "--bind", "tcp://0.0.0.0:0", "--insecure",
                             "--model", f"tiny={tiny_model}", "--device", "cpu", "--cache-dir", str(tmp_path)],
                            cwd=REPO, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("ready"):
                break
        text = "".join(lines)
        assert "WITHOUT authentication" in text and "auth     : NONE (--insecure)" in text
        assert "tiny (32x32, loaded)" in text.split("models   :")[1].splitlines()[0]
        proc.send_signal(2)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_keys_command_needs_neither_torch_nor_numpy(tmp_path: Path) -> None:
    """install.py and a laptop without the backend's heavy dependencies run the one key generator."""
    script = ("import sys\n"
              "class Block:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name.split('.')[0] in ('torch', 'numpy', 'PIL'):\n"
              "            raise ImportError('blocked: ' + name)\n"
              "sys.meta_path.insert(0, Block())\n"
              "from backend.cli import main\n"
              f"sys.exit(main(['keys', '--keys-dir', {str(tmp_path / 'k')!r}, 'init', '--client-only']))\n")
    out = subprocess.run([PYTHON, "-c", script], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "k" / "client.key_secret").is_file() and not (tmp_path / "k" / "server.key").exists()


def test_client_keys_for_endpoint(keys_dir: Path) -> None:
    # every server uses CURVE, loopback (a local server, an SSH tunnel) included
    for endpoint in ("tcp://127.0.0.1:5555", "tcp://192.0.2.7:5555"):
        found = ClientKeys.for_endpoint(endpoint, str(keys_dir))
        assert found is not None and found.server_public == read_public_key(str(keys_dir / "server.key"))
    assert ClientKeys.for_endpoint("tcp://192.0.2.7:5555", str(keys_dir / "missing")) is None
    assert ClientKeys.for_endpoint("tcp://127.0.0.1:5555", str(keys_dir / "missing")) is None
