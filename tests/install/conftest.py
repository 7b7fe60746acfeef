"""Shared fixtures for install.py's tests: install.py is a script at the repo root, loaded as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_install():
    spec = importlib.util.spec_from_file_location("draggan_install", REPO / "install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["draggan_install"] = module   # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def install():
    """install.py as a module."""
    return _load_install()


@pytest.fixture()
def fake_repo(tmp_path: Path) -> Path:
    """A minimal repo tree with the plug-in folder and the draggan_wire package (plus caches to skip);
    the package's __init__.py is the real one (it puts the staged vendor/ folder on sys.path)."""
    repo = tmp_path / "repo"
    plugin = repo / "gimp_plugin" / "draggan"
    (plugin / "draggan_core").mkdir(parents=True)
    (plugin / "draggan.py").write_text("#!/usr/bin/env python3\nprint('entry')\n")
    (plugin / "draggan_core" / "__init__.py").write_text("")
    (plugin / "draggan_core" / "points.py").write_text("PAIRS = 1\n")
    (plugin / "draggan_core" / "__pycache__").mkdir()
    (plugin / "draggan_core" / "__pycache__" / "points.cpython-311.pyc").write_bytes(b"\0")
    (plugin / "__pycache__").mkdir()
    wire = repo / "draggan_wire"
    (wire / "__pycache__").mkdir(parents=True)
    (wire / "__pycache__" / "protocol.cpython-311.pyc").write_bytes(b"\0")
    (wire / "__init__.py").write_text((REPO / "draggan_wire" / "__init__.py").read_text())
    (wire / "protocol.py").write_text("VERSION = 1\n")
    (wire / "client.py").write_text("from . import protocol\n")
    (wire / "relay_bridge.py").write_text("MAX_FRAMES = 64\n")
    return repo
