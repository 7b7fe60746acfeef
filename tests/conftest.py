"""Shared test helpers: the repo's path, this interpreter's environment, the real-GIMP kit."""

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
# The repository's own kit for the real-GIMP tests: setup.sh builds a Debian chroot with GIMP 3
# (root, once), run.sh runs Python batches in that GIMP headless.
GIMP_KIT = REPO / "tests" / "gimp" / "kit"

# Two cores, shared with other processes in CI: keep torch from oversubscribing.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The tests' CURVE keys (`draggan-backend serve` makes them on first use) and tokens live in a
# folder of their own, never in the user's: subprocesses inherit it through the environment.
_CONFIG = tempfile.mkdtemp(prefix="draggan-test-config-")
atexit.register(shutil.rmtree, _CONFIG, True)
os.environ["DRAGGAN_CONFIG_DIR"] = _CONFIG


def env_with_this_python(**extra: str) -> dict[str, str]:
    """os.environ with this interpreter's bin folder first on PATH (plus ``extra``): scripts written for the
    device call ``python3``, which here must be the test's venv (a fresh machine's system python has no torch)."""
    import sys

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, **extra, PATH=path)


def gimp_unavailable(reason: str) -> None:
    """Skip locally; fail in CI (CI=true), where a skip would hide a broken install step."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason + " (CI must run the real-GIMP tests)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def gimp3_run() -> Path:
    """Path of the kit's run.sh once its GIMP 3 chroot is ready: setup.sh builds it the first time
    (1-2 min, 740 MB under /opt/draggan-gimp3, or $DRAGGAN_GIMP3_ROOT), then only checks it."""
    if os.geteuid() != 0:
        gimp_unavailable("real-GIMP tests need root (debootstrap, chroot, mount)")
    r = subprocess.run(["bash", str(GIMP_KIT / "setup.sh")], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        gimp_unavailable(f"the GIMP 3 chroot could not be built (tests/gimp/kit/setup.sh exit {r.returncode}):\n"
                         f"{r.stderr[-3000:]}")
    return GIMP_KIT / "run.sh"
