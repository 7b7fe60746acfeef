"""The real-GIMP kit itself (tests/gimp/kit): what every other real-GIMP test relies on.

run.sh must run Python in the chroot's GIMP 3 and report clear exit codes, seal each run (binds,
environment, a fresh profile and /tmp, no process or mount outliving it), stop a run at its
timeout, and wait for a setup.sh that holds the chroot's lock. setup.sh must be idempotent when
called again or concurrently, and must never take over a folder it did not make. Each GIMP run
costs about 2 s.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gimp

ROOT = Path(os.environ.get("DRAGGAN_GIMP3_ROOT", "/opt/draggan-gimp3"))
SETUP = Path(__file__).resolve().parent / "kit" / "setup.sh"


def run(gimp3_run: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None):
    return subprocess.run(["bash", str(gimp3_run), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def host_processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_runs_python_in_gimp3_and_reports_the_batch_exception(gimp3_run: Path) -> None:
    ok = run(gimp3_run, "--batch", "import zmq; print('KIT-OK', Gimp.version(), zmq.zmq_version())")
    assert ok.returncode == 0, ok.stderr
    line = next(ln for ln in ok.stdout.splitlines() if ln.startswith("KIT-OK"))
    assert line.split()[1].startswith("3.")
    # the lines every healthy run prints are filtered, unless asked for
    assert "Welcome to GIMP" not in ok.stderr
    assert "Welcome to GIMP" in run(gimp3_run, "--raw", "--batch", "pass").stderr

    bad = run(gimp3_run, "--batch", "raise ValueError('kit-test-boom')")
    assert bad.returncode == 64
    assert "ValueError: kit-test-boom" in bad.stderr and "the batch code raised" in bad.stderr


def test_each_run_is_sealed(gimp3_run: Path, tmp_path: Path) -> None:
    rw, ro, plugins = tmp_path / "rw", tmp_path / "ro", tmp_path / "plug-ins"
    for folder in (rw, ro, plugins / "lazy", plugins / "misnamed"):
        folder.mkdir(parents=True)
    (plugins / "misnamed" / "other.py").write_text("# GIMP starts only misnamed/misnamed.py\n")
    (ro / "given.txt").write_text("from the host")
    (plugins / "lazy" / "lazy.py").write_text("# not executable: GIMP would skip it without a word\n")
    (tmp_path / "helper.py").write_text("VALUE = 'sibling imported'\n")
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import os, subprocess, helper\n"
        "out = os.environ['OUT']\n"
        "report = [helper.VALUE, os.environ['KIT_GREETING'], open('/mnt/ro/given.txt').read()]\n"
        "try:\n"
        "    open('/mnt/ro/new.txt', 'w')\n"
        "    report.append('read-only bind was writable')\n"
        "except OSError:\n"
        "    report.append('read-only bind refused a write')\n"
        "report.append('tmp had: ' + ','.join(sorted(n for n in os.listdir('/tmp') if n.startswith('kit-'))))\n"
        "open('/tmp/kit-left-behind', 'w').close()\n"
        "profile = os.environ['GIMP3_DIRECTORY']\n"
        "report.append('profile had marker: %s' % os.path.exists(os.path.join(profile, 'kit-marker')))\n"
        "open(os.path.join(profile, 'kit-marker'), 'w').close()\n"
        "subprocess.Popen(['sleep', '417.25'])  # would outlive GIMP without the PID namespace\n"
        "open(os.path.join(out, 'report.txt'), 'w').write('\\n'.join(report))\n")
    for attempt in range(2):
        r = run(gimp3_run, "--bind", f"{rw}:/mnt/rw", "--bind", f"{ro}:/mnt/ro:ro", "--plugins", str(plugins),
                "--env", "OUT=/mnt/rw", "--env", "KIT_GREETING=hello from --env", "--batch-file", str(driver))
        assert r.returncode == 0, r.stderr
        assert "lazy.py is not executable" in r.stderr and "no misnamed.py" in r.stderr
        assert (rw / "report.txt").read_text().splitlines() == [
            "sibling imported", "hello from --env", "from the host", "read-only bind refused a write",
            "tmp had: ", "profile had marker: False"], f"run {attempt}"
        assert not (ro / "new.txt").exists()
    assert host_processes_with("417.25") == []
    assert [m for m in Path("/proc/self/mounts").read_text().splitlines() if f" {ROOT}/" in m] == []


def test_timeout_stops_gimp_and_everything_it_started(gimp3_run: Path) -> None:
    started = time.monotonic()
    r = run(gimp3_run, "--timeout", "3", "--batch", "import subprocess, time\n"
            "subprocess.Popen(['sleep', '418.25'])\n"
            "time.sleep(300)")
    assert r.returncode in (124, 137)
    assert "timeout" in r.stderr
    assert time.monotonic() - started < 60
    assert host_processes_with("418.25") == []


def test_usage_and_environment_errors_have_their_own_exit_codes(gimp3_run: Path, tmp_path: Path) -> None:
    assert run(gimp3_run, "--timeout", "5").returncode == 2                       # no batch
    assert run(gimp3_run, "--frobnicate", "--batch", "pass").returncode == 2
    assert run(gimp3_run, "--bind", "/nonexistent-kit-path:/mnt/x", "--batch", "pass").returncode == 2
    assert run(gimp3_run, "--root", str(tmp_path / "nothing"), "--batch", "pass").returncode == 3
    nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(gimp3_run),
                             "--batch", "pass"], capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 3 and "root" in nobody.stderr


def test_a_run_waits_while_setup_holds_the_lock(gimp3_run: Path) -> None:
    holder = subprocess.Popen(["flock", "-x", f"{ROOT}.lock", "sleep", "4"])
    try:
        time.sleep(0.5)
        gave_up = run(gimp3_run, "--batch", "pass", env={"DRAGGAN_GIMP3_LOCK_WAIT": "1"})
        assert gave_up.returncode == 6, gave_up.stderr
        started = time.monotonic()
        waited = run(gimp3_run, "--batch", "print('after the build')")
        assert waited.returncode == 0 and "after the build" in waited.stdout
        assert time.monotonic() - started > 1.5
    finally:
        holder.kill()
        holder.wait()


def test_setup_is_idempotent_concurrently_and_keeps_off_foreign_folders(gimp3_run: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    both = [subprocess.Popen(["bash", str(SETUP)], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in both:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "ready" in err
    assert time.monotonic() - started < 30

    foreign = tmp_path / "somebody" / "root"
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("not ours")
    r = subprocess.run(["bash", str(SETUP), "--root", str(foreign)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, DRAGGAN_GIMP3_LOGS=str(tmp_path / "logs")))
    assert r.returncode == 3, r.stderr
    assert (foreign / "precious.txt").read_text() == "not ours"
    assert subprocess.run(["bash", str(SETUP), "--root", "/opt"], capture_output=True).returncode == 3
