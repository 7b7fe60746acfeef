"""--remote: the client keys come from the real `draggan-backend keys` (run through a venv whose python
is this Python), the server key is pinned, and draggan.json holds the address and the keys."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_backend_address(install) -> None:
    assert install.backend_address("gpu-box") == "tcp://gpu-box:5555"
    assert install.backend_address("10.1.2.3:6000") == "tcp://10.1.2.3:6000"
    assert install.backend_address("[fe80::1]:7000") == "tcp://[fe80::1]:7000"
    assert install.backend_address("tcp://h:1") == "tcp://h:1"
    for bad in ("", "host:99999", "a b", "host:port"):
        with pytest.raises(install.InstallError):
            install.backend_address(bad)


@pytest.fixture()
def laptop(install, fake_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake venv whose python and draggan-backend run this Python and the real backend.cli."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    # a wrapper, not a symlink: a symlink to a venv's python outside that venv starts the base
    # interpreter, which on a fresh machine has neither torch nor the backend
    (venv / "bin/python").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (venv / "bin/python").chmod(0o755)
    script = venv / "bin/draggan-backend"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -I -m backend.cli \"$@\"\n")
    script.chmod(0o755)
    (fake_repo / "pyproject.toml").write_text("[project]\nname='draggan-gimp'\n")
    stamp = install.install_stamp(fake_repo, "cpu", None, True, (), False)
    install.write_stamp(venv, stamp)
    config = tmp_path / "config"
    monkeypatch.setenv("DRAGGAN_CONFIG_DIR", str(config))      # draggan_wire.client.config_dir() honours it

    def run(cmd, **kw):
        cmd = [str(c) for c in cmd]
        if "find_spec" in cmd[-1]:                              # the venv health check: it is "installed"
            return subprocess.CompletedProcess(cmd, 0, "ok\n", "")
        return subprocess.run(cmd, **kw)

    ctx = install.Context(platform="linux", home=tmp_path / "home", env={}, root=tmp_path / "root", run=run,
                          which=lambda _n: None, repo=fake_repo, base_python=sys.executable)
    return ctx, venv, config / "keys"


def test_remote_without_server_key_makes_client_keys_and_explains(install, laptop, tmp_path: Path) -> None:
    ctx, venv, keys = laptop
    lines: list[str] = []
    rc = install.main(["--venv", str(venv), "--gimp-dir", str(tmp_path / "plug-ins"), "--remote", "gpu-box"],
                      out=lines.append, ctx=ctx)
    assert rc == 1
    assert (keys / "client.key").is_file() and (keys / "client.key_secret").is_file()
    assert not (keys / "server.key_secret").exists()                    # a laptop gets no server pair
    assert "--server-key PATH" in lines[-1] and "keys allow client.key" in lines[-1]
    assert not (tmp_path / "plug-ins/draggan/draggan.json").exists()


def test_remote_writes_config_with_pinned_keys(install, laptop, tmp_path: Path) -> None:
    ctx, venv, keys = laptop
    server_dir = tmp_path / "workstation-keys"
    r = subprocess.run([sys.executable, "-I", "-m", "backend.cli", "keys", "--keys-dir", str(server_dir), "init",
                        "--server-only"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    plugins = tmp_path / "plug-ins"
    lines: list[str] = []
    rc = install.main(["--venv", str(venv), "--gimp-dir", str(plugins), "--skip-pyzmq", "--remote", "gpu-box:6000",
                       "--server-key", str(server_dir / "server.key")], out=lines.append, ctx=ctx)
    assert rc == 0, lines
    config_path = plugins / "draggan/draggan.json"
    config = json.loads(config_path.read_text())
    assert stat.S_IMODE(os.stat(config_path).st_mode) == 0o600
    assert config["address"] == "tcp://gpu-box:6000"
    assert config["server_public_key"] == install.read_cert_key(server_dir / "server.key", "public-key")
    assert config["client_public_key"] == install.read_cert_key(keys / "client.key", "public-key")
    assert config["client_secret_key"] == install.read_cert_key(keys / "client.key_secret", "secret-key")
    assert (keys / "server.key").read_bytes() == (server_dir / "server.key").read_bytes()
    assert any("keys allow client.key" in line and "--bind tcp://0.0.0.0:6000" in line for line in lines)
    # The client library accepts exactly these keys.
    sys.path.insert(0, str(REPO))
    from draggan_wire.client import ClientKeys
    ClientKeys(config["server_public_key"].encode(), config["client_public_key"].encode(),
               config["client_secret_key"].encode())
    # Re-staging (a later install.py run) keeps the config.
    assert install.main(["--plugin-only", "--gimp-dir", str(plugins)], out=lambda _l: None, ctx=ctx) == 0
    assert json.loads(config_path.read_text()) == config


def test_wrong_server_key_file(install, laptop, tmp_path: Path) -> None:
    ctx, venv, _keys = laptop
    bogus = tmp_path / "server.key"
    bogus.write_text("not a key\n")
    lines: list[str] = []
    rc = install.main(["--venv", str(venv), "--gimp-dir", str(tmp_path / "p"), "--skip-pyzmq", "--remote", "h",
                       "--server-key", str(bogus)], out=lines.append, ctx=ctx)
    assert rc == 1 and "is not a ZeroMQ key file with a public-key" in lines[-1]


def test_plain_install_makes_this_users_keys_and_the_local_config(install, laptop, tmp_path: Path) -> None:
    """The backend uses CURVE on loopback too: `python install.py` makes this user's keys (the one
    generator, through the venv) and writes draggan.json for tcp://127.0.0.1:5555 with them; a
    draggan.json that --remote wrote for another backend is kept."""
    ctx, venv, keys = laptop
    plugins = tmp_path / "plug-ins"
    lines: list[str] = []
    assert install.main(["--venv", str(venv), "--gimp-dir", str(plugins), "--skip-pyzmq"], out=lines.append,
                        ctx=ctx) == 0, lines
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE(os.stat(keys / name).st_mode) == 0o600
    assert (keys / "allowed_clients" / "local.key").is_file()
    config_path = plugins / "draggan/draggan.json"
    config = json.loads(config_path.read_text())
    assert stat.S_IMODE(os.stat(config_path).st_mode) == 0o600
    assert config["address"] == "tcp://127.0.0.1:5555"
    assert config["server_public_key"] == install.read_cert_key(keys / "server.key", "public-key")
    assert config["client_secret_key"] == install.read_cert_key(keys / "client.key_secret", "secret-key")
    assert any(line.startswith("CURVE keys for this machine's backend in") for line in lines)
    # a second run keeps the keys (clients pinned them) and rewrites the same config
    before = (keys / "server.key_secret").read_bytes()
    assert install.main(["--venv", str(venv), "--gimp-dir", str(plugins), "--skip-pyzmq"], out=lambda _l: None,
                        ctx=ctx) == 0
    assert (keys / "server.key_secret").read_bytes() == before
    assert json.loads(config_path.read_text()) == config
    remote = dict(config, address="tcp://gpu-box:5555")
    config_path.write_text(json.dumps(remote))
    lines.clear()
    assert install.main(["--venv", str(venv), "--gimp-dir", str(plugins), "--skip-pyzmq"], out=lines.append,
                        ctx=ctx) == 0
    assert json.loads(config_path.read_text()) == remote
    assert any("kept" in line and "tcp://gpu-box:5555" in line for line in lines)
