"""The model registry: folders per platform, listing, resolving, registering files, verifying."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend import models

REPO = Path(__file__).resolve().parents[2]


def test_default_models_dir_per_platform(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert models.default_models_dir("linux", {}, home) == home / ".local/share/draggan/models"
    assert models.default_models_dir("linux", {"XDG_DATA_HOME": "/x"}, home) == Path("/x/draggan/models")
    assert models.default_models_dir("win32", {"LOCALAPPDATA": str(tmp_path / "L")}, home) == \
        tmp_path / "L" / "draggan" / "models"
    assert models.default_models_dir("win32", {}, home) == home / "AppData/Local/draggan/models"
    assert models.default_models_dir("darwin", {}, home) == home / "Library/Application Support/draggan/models"
    assert models.default_models_dir("darwin", {"DRAGGAN_MODELS_DIR": "/m"}, home) == Path("/m")


def test_registry_is_the_official_list() -> None:
    urls = {s.name: s.url for s in models.REGISTRY.values()}
    assert urls["lions-512"] == "https://storage.googleapis.com/self-distilled-stylegan/lions_512_pytorch.pkl"
    assert urls["ffhq-512"].endswith("/stylegan2/versions/1/files/stylegan2-ffhq-512x512.pkl")
    assert urls["car-512"].endswith("/stylegan2/networks/stylegan2-car-config-f.pkl")
    kinds = {s.name: s.kind for s in models.REGISTRY.values()}
    assert [n for n, k in kinds.items() if k == "download"] == [
        "lions-512", "dogs-1024", "horses-256", "elephants-512", "ffhq-512", "afhqcat-512", "car-512", "cat-256"]
    assert [n for n, k in kinds.items() if k == "manual"] == ["human-512", "lhq-256"]
    human = models.REGISTRY["human-512"]
    assert (human.width, human.height) == (256, 512)           # x then y: portrait full-body
    assert "rows 64..447" in models.REGISTRY["car-512"].notes
    for spec in models.REGISTRY.values():
        assert spec.licence and spec.width > 0 and spec.height > 0
        assert spec.sha256 == ""          # no published hashes: trust on first use (module docstring)


def test_available_models_and_missing_embedded_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    infos = models.available_models(folder=tmp_path)
    assert infos[0].name == models.DEFAULT_MODEL == "faces-128"
    assert infos[0].installed == models.EMBEDDED_MODEL_FILE.is_file()
    monkeypatch.setattr(models, "EMBEDDED_MODEL_FILE", tmp_path / "nowhere" / "faces-128.pt")
    first = models.available_models(folder=tmp_path)[0]
    assert not first.installed and first.path == tmp_path / "nowhere" / "faces-128.pt"
    with pytest.raises(models.UnknownModelError, match="embedded default model file .* is missing"):
        models.resolve_model("faces-128", folder=tmp_path)
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "faces-128.pt").write_bytes(b"weights")
    assert models.resolve_model("faces-128", folder=tmp_path) == tmp_path / "nowhere" / "faces-128.pt"
    assert models.available_models(folder=tmp_path)[0].installed


def test_resolve_messages(tmp_path: Path) -> None:
    with pytest.raises(models.UnknownModelError,
                       match=r"model 'ffhq-512' is not installed; run `python install.py --model ffhq-512`"):
        models.resolve_model("ffhq-512", folder=tmp_path)
    with pytest.raises(models.UnknownModelError, match=r"unknown model 'ffhq'; known models: .*ffhq-512"):
        models.resolve_model("ffhq", folder=tmp_path)
    with pytest.raises(models.UnknownModelError, match="manual download: .*drive.google.com"):
        models.resolve_model("lhq-256", folder=tmp_path)
    extra_file = tmp_path / "mine.pkl"
    extra_file.write_bytes(b"x")
    assert models.resolve_model("mine", extra={"mine": extra_file}, folder=tmp_path) == extra_file
    with pytest.raises(models.UnknownModelError, match="does not exist"):
        models.resolve_model("gone", extra={"gone": tmp_path / "gone.pkl"}, folder=tmp_path)
    listed = {m.name: m for m in models.available_models({"mine": extra_file}, folder=tmp_path)}
    assert listed["mine"].installed and listed["mine"].path == extra_file


def test_add_file_registers_verifies_and_detects_changes(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    download = tmp_path / "Downloads" / "stylegan_human_v2_512.pkl"
    download.parent.mkdir()
    download.write_bytes(b"human weights" * 1000)
    lines: list[str] = []
    dest = models.add_model_file(download, "human-512", folder=folder, out=lines.append)
    assert dest == folder / "stylegan_human_v2_512.pkl" and dest.read_bytes() == download.read_bytes()
    assert lines[0].startswith("licence: StyleGAN-Human") and "registered human-512" in lines[1]
    assert models.resolve_model("human-512", folder=folder) == dest
    assert "OK" in models.verify_model("human-512", folder=folder)
    # Same name, different file: the recorded hash (trust on first use) refuses it; nothing changes.
    other = tmp_path / "other.pkl"
    other.write_bytes(b"something else")
    with pytest.raises(models.ChecksumMismatchError, match="different file; nothing was registered"):
        models.add_model_file(other, "human-512", folder=folder, out=None)
    assert dest.read_bytes() == download.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["registry.json", "stylegan_human_v2_512.pkl"]
    # Corruption with the same size: only verify (sha256) sees it.
    data = bytearray(dest.read_bytes())
    data[5] ^= 0xFF
    dest.write_bytes(bytes(data))
    assert models.resolve_model("human-512", folder=folder) == dest
    with pytest.raises(models.ChecksumMismatchError, match="corrupt or was replaced"):
        models.resolve_model("human-512", folder=folder, verify=True)
    # Truncation: resolve's cheap size check sees it.
    dest.write_bytes(b"short")
    with pytest.raises(models.ChecksumMismatchError, match="changed or is truncated"):
        models.resolve_model("human-512", folder=folder)
    assert models.remove_model("human-512", folder=folder) == f"removed {dest}"
    assert not dest.exists() and "human-512" not in json.loads((folder / "registry.json").read_text())["models"]


def test_add_custom_name(tmp_path: Path) -> None:
    src = tmp_path / "network-snapshot-001000.pkl"
    src.write_bytes(b"custom")
    dest = models.add_model_file(src, "my-cats", folder=tmp_path / "m", out=None)
    assert dest.name == "my-cats.pkl"
    info = {m.name: m for m in models.available_models(folder=tmp_path / "m")}["my-cats"]
    assert info.installed and info.kind == "file" and info.width == 0
    with pytest.raises(models.ModelError, match="not valid"):
        models.add_model_file(src, "My Cats!", folder=tmp_path / "m", out=None)
    with pytest.raises(models.ModelError, match="embedded default"):
        models.add_model_file(src, "faces-128", folder=tmp_path / "m", out=None)
    with pytest.raises(models.ModelError, match="is not a file"):
        models.add_model_file(tmp_path / "nope.pkl", "x", folder=tmp_path / "m", out=None)


def test_verify_records_hash_for_a_file_copied_in_by_hand(tmp_path: Path) -> None:
    (tmp_path / "stylegan2-cat-config-f.pkl").write_bytes(b"cat")
    assert "recorded sha256" in models.verify_model("cat-256", folder=tmp_path)
    assert models.expected_sha256("cat-256", tmp_path)
    assert "OK" in models.verify_model("cat-256", folder=tmp_path)


def test_cli_list_json_is_torch_free(tmp_path: Path) -> None:
    code = ("import sys, runpy; sys.argv = ['m', 'list', '--json']; "
            "import backend.models as m; rc = m.main(); assert 'torch' not in sys.modules, 'torch imported'; "
            "sys.exit(rc)")
    env = {**os.environ, "DRAGGAN_MODELS_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [m["name"] for m in listed][:2] == ["faces-128", "lions-512"]
    r = subprocess.run([sys.executable, "-m", "backend.models", "path", "ffhq-512"], capture_output=True,
                       text=True, timeout=60, cwd=REPO, env=env)
    assert r.returncode == 1 and "python install.py --model ffhq-512" in r.stderr
