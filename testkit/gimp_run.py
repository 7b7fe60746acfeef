"""The real backend and the staged plug-in for tests and benchmarks that drive the real GIMP:
``start_backend``/``end_backend`` run tests/gimp/backend_host.py (the built-in model, served for real)
in a subprocess; ``stage_plugin`` stages the plug-in as install.py does for a user."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_backend(folder: Path, threads: int = 1, max_seconds: int = 1500, inversion_steps: int = -1,
                  port: int = 0) -> tuple[subprocess.Popen[str], str]:
    """tests/gimp/backend_host.py (the real server: faces-128, its real inversion unless
    `inversion_steps` caps it) -> (its process, its endpoint); it appends one line per finished job to
    folder/jobs.jsonl."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "gimp" / "backend_host.py"), "--dir", str(folder),
                             "--inversion-steps", str(inversion_steps), "--max-seconds", str(max_seconds),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for _ in range(600):
        if (folder / "endpoint").is_file() or proc.poll() is not None:
            break
        time.sleep(0.1)
    if not (folder / "endpoint").is_file():
        proc.kill()
        raise RuntimeError("the backend did not start:\n" + (proc.stdout.read() if proc.stdout else ""))
    return proc, (folder / "endpoint").read_text().strip()


def end_backend(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def stage_plugin(plugins: Path) -> Path:
    """``install.py --plugin-only --gimp-dir plugins``: the plug-in staged there; ``plugins``."""
    r = subprocess.run([sys.executable, str(REPO / "install.py"), "--plugin-only", "--gimp-dir", str(plugins)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return plugins
