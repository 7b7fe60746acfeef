"""Plug-in staging: layout, executable bit, idempotent re-staging, --dev links, uninstall."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_stage_layout_and_exec_bit(install, fake_repo: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    report = install.stage_plugin(plugins, fake_repo)
    target = plugins / "draggan"
    assert report.target == target
    assert report.files == [
        "draggan.py", "draggan_core/__init__.py", "draggan_core/points.py",
        "draggan_wire/__init__.py", "draggan_wire/client.py", "draggan_wire/protocol.py",
        "draggan_wire/relay_bridge.py",
    ]
    assert os.stat(target / "draggan.py").st_mode & stat.S_IXUSR
    assert not (target / "draggan_core" / "__pycache__").exists()
    assert (target / "draggan_wire" / "protocol.py").read_text() == "VERSION = 1\n"
    assert not (target / "draggan_wire" / "protocol.py").is_symlink()
    manifest = json.loads((target / install.STAGE_MANIFEST).read_text())
    assert manifest["mode"] == "copy" and manifest["files"] == report.files
    # Nothing left over from the atomic build.
    assert sorted(p.name for p in plugins.iterdir()) == ["draggan"]


def test_staged_wire_package_imports_relatively(install, fake_repo: Path, tmp_path: Path) -> None:
    """client.py's `from . import protocol` works in the staged package, and its __init__ puts the
    plug-in's vendor/ folder on sys.path."""
    plugins = tmp_path / "plug-ins"
    install.stage_plugin(plugins, fake_repo)
    (plugins / "draggan" / "vendor").mkdir()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from draggan_wire import client; "
            "print(client.protocol.VERSION); print(any(p.endswith('vendor') for p in sys.path))")
    r = subprocess.run([sys.executable, "-c", code, str(plugins / "draggan")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "True"]


def test_restage_replaces_cleanly_keeps_vendor_and_config(install, fake_repo: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    install.stage_plugin(plugins, fake_repo)
    target = plugins / "draggan"
    (target / "vendor" / "zmq").mkdir(parents=True)
    (target / "draggan.json").write_text('{"endpoint": "tcp://h:5555"}')
    (target / "stale.py").write_text("old file from an older version")
    # The repo moves on: a file disappears, one changes.
    (fake_repo / "gimp_plugin" / "draggan" / "draggan_core" / "points.py").unlink()
    (fake_repo / "draggan_wire" / "protocol.py").write_text("VERSION = 2\n")
    report = install.stage_plugin(plugins, fake_repo)
    assert report.replaced_previous and sorted(report.preserved) == ["draggan.json", "vendor"]
    assert not (target / "stale.py").exists()
    assert not (target / "draggan_core" / "points.py").exists()
    assert (target / "draggan_wire" / "protocol.py").read_text() == "VERSION = 2\n"
    assert (target / "vendor" / "zmq").is_dir()
    assert (target / "draggan.json").read_text() == '{"endpoint": "tcp://h:5555"}'
    assert sorted(p.name for p in plugins.iterdir()) == ["draggan"]


def test_dev_mode_links_sources_but_copies_entry(install, fake_repo: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    install.stage_plugin(plugins, fake_repo, link=True)
    target = plugins / "draggan"
    assert (target / "draggan_core").is_symlink()
    assert (target / "draggan_wire").is_symlink()             # the package folder, as it is in the repo
    assert not (target / "draggan.py").is_symlink()          # realpath(__file__) must stay here
    (fake_repo / "draggan_wire" / "protocol.py").write_text("VERSION = 3\n")
    assert (target / "draggan_wire" / "protocol.py").read_text() == "VERSION = 3\n"
    # Switching back to a copy replaces the links with files.
    install.stage_plugin(plugins, fake_repo, link=False)
    assert not (target / "draggan_core").is_symlink()
    assert not (target / "draggan_wire").is_symlink() and (target / "draggan_wire" / "client.py").is_file()


def test_refuses_foreign_folder_and_missing_sources(install, fake_repo: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    (plugins / "draggan").mkdir(parents=True)
    (plugins / "draggan" / "notes.txt").write_text("someone else's")
    with pytest.raises(install.InstallError, match="not made by install.py"):
        install.stage_plugin(plugins, fake_repo)
    assert (plugins / "draggan" / "notes.txt").exists()
    (fake_repo / "draggan_wire" / "client.py").unlink()
    with pytest.raises(install.InstallError, match="client.py is missing"):
        install.stage_plugin(tmp_path / "other", fake_repo)


def test_unstage_removes_only_ours(install, fake_repo: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    install.stage_plugin(plugins, fake_repo)
    assert install.unstage_plugin(plugins) == f"removed {plugins / 'draggan'}"
    assert not (plugins / "draggan").exists()
    assert install.unstage_plugin(plugins) is None
    (plugins / "draggan").mkdir()
    assert "left" in install.unstage_plugin(plugins)
    assert (plugins / "draggan").exists()


def test_cli_plugin_only_on_real_repo(tmp_path: Path) -> None:
    """`python install.py --plugin-only --gimp-dir DIR` on the real tree, twice (idempotent)."""
    for _ in range(2):
        cmd = [sys.executable, str(REPO / "install.py"), "--plugin-only", "--gimp-dir", str(tmp_path)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "staged the plug-in into" in r.stdout
    target = tmp_path / "draggan"
    assert os.access(target / "draggan.py", os.X_OK)
    staged_client = (target / "draggan_wire" / "client.py").read_bytes()
    assert staged_client == (REPO / "draggan_wire" / "client.py").read_bytes()
    assert (target / "draggan_core").is_dir()
