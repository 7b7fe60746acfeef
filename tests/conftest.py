"""Shared test helpers: paths to the repo and ../shared, tiny generators."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DRAGGAN_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official-tiny"

# Two cores, shared with other processes in CI: keep torch from oversubscribing.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The tests' CURVE keys (`draggan-backend serve` makes them on first use) and tokens live in a
# folder of their own, never in the user's: subprocesses inherit it through the environment.
_CONFIG = tempfile.mkdtemp(prefix="draggan-test-config-")
atexit.register(shutil.rmtree, _CONFIG, True)
os.environ["DRAGGAN_CONFIG_DIR"] = _CONFIG


def require_fixtures() -> Path:
    if not (FIXTURES / "G-128.pkl").is_file():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"official fixtures not found at {FIXTURES}", pytrace=False)
        pytest.skip(f"official fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require_fixtures()


def env_with_this_python(**extra: str) -> dict[str, str]:
    """os.environ with this interpreter's bin folder first on PATH (plus ``extra``): scripts written for the
    device call ``python3``, which here must be the test's venv (a fresh machine's system python has no torch)."""
    import sys

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, **extra, PATH=path)


GIMP3_KIT = Path(os.environ.get("GIMP3_KIT", SHARED / "gimp3"))


def gimp_unavailable(reason: str) -> None:
    """Skip locally; fail in CI (CI=true), where a skip would hide a broken install step."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason + " (CI must run the real-GIMP tests)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def gimp3_run() -> Path:
    """Path of the kit's run.sh once the GIMP 3 chroot is ready (1-2 min the first time, then 0.02 s)."""
    if not (GIMP3_KIT / "setup.sh").is_file():
        gimp_unavailable(f"GIMP 3 kit not found at {GIMP3_KIT}")
    if os.geteuid() != 0:
        gimp_unavailable("real-GIMP tests need root (debootstrap, chroot, mount)")
    r = subprocess.run(["bash", str(GIMP3_KIT / "setup.sh")], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        gimp_unavailable(f"GIMP 3 chroot could not be built (setup.sh exit {r.returncode}):\n{r.stderr[-3000:]}")
    return GIMP3_KIT / "run.sh"
