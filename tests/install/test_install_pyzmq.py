"""pyzmq for GIMP's Python: wheel tags and decisions as data, and the vendoring flow run for real with
a Python that cannot see pyzmq (`python -S`) and a fake pip that writes a wheel (no network)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

LINUX = {"version": [3, 13], "implementation": "cpython", "platform": "linux-x86_64", "machine": "x86_64",
         "free_threaded": False, "glibc": "2.41", "mac": "", "executable": "/usr/bin/python3", "zmq": None,
         "zmq_error": "ModuleNotFoundError: No module named 'zmq'"}


def test_linux_tags_follow_glibc(install) -> None:
    tags = install.wheel_platform_tags(LINUX)
    assert tags[0] == "manylinux_2_41_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux_2_16_x86_64" not in tags and "manylinux2014_x86_64" in tags and tags[-1] == "manylinux1_x86_64"
    arm = install.wheel_platform_tags({**LINUX, "platform": "linux-aarch64", "glibc": "2.36"})
    assert arm[0] == "manylinux_2_36_aarch64" and "manylinux1_aarch64" not in arm
    musl = install.wheel_platform_tags({**LINUX, "glibc": ""})
    assert musl == ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64"]


def test_windows_and_mingw_tags(install) -> None:
    assert install.wheel_platform_tags({**LINUX, "platform": "win-amd64"}) == ["win_amd64"]
    assert install.wheel_platform_tags({**LINUX, "platform": "win-arm64"}) == ["win_arm64"]
    assert install.wheel_platform_tags({**LINUX, "platform": "mingw_x86_64_clang"}) == []


def test_macos_tags(install) -> None:
    arm = install.wheel_platform_tags({**LINUX, "platform": "macosx-11.0-arm64", "machine": "arm64", "mac": "14.5"})
    assert arm[:2] == ["macosx_14_0_arm64", "macosx_14_0_universal2"] and "macosx_11_0_arm64" in arm
    assert "macosx_10_9_universal2" in arm and not any(t.startswith("macosx_10") and "arm64" in t for t in arm)
    intel = install.wheel_platform_tags({**LINUX, "platform": "macosx-10.13-universal2", "machine": "x86_64",
                                         "mac": "12.6"})
    assert intel[0] == "macosx_12_0_x86_64" and "macosx_10_9_x86_64" in intel


def test_decisions(install) -> None:
    assert install.decide_pyzmq({**LINUX, "zmq": "26.4.0"}).action == "present"
    assert install.decide_pyzmq(LINUX, {**LINUX, "zmq": "27.0"}).action == "vendored"
    d = install.decide_pyzmq(LINUX)
    assert d.action == "vendor"
    args = list(d.pip_args)
    assert args[:3] == ["download", "--only-binary=:all:", "--no-deps"]
    assert args[args.index("--python-version") + 1] == "3.13" and args[args.index("--abi") + 1] == "cp313"
    assert args[args.index("--platform") + 1] == "manylinux_2_41_x86_64" and args[-1] == "pyzmq>=25"
    ft = install.decide_pyzmq({**LINUX, "free_threaded": True})
    assert ft.pip_args[ft.pip_args.index("--abi") + 1] == "cp313t"
    win = install.decide_pyzmq({**LINUX, "version": [3, 12], "platform": "win-amd64"})
    assert win.action == "vendor" and "win_amd64" in win.pip_args and "3.12" in win.pip_args
    mingw = install.decide_pyzmq({**LINUX, "platform": "mingw_x86_64_ucrt"})
    assert mingw.action == "impossible" and "no pyzmq wheel" in mingw.message
    assert install.decide_pyzmq({**LINUX, "implementation": "pypy"}).action == "impossible"
    assert install.decide_pyzmq({"error": "could not run x"}).action == "unknown"


def test_probe_real_python(install, tmp_path: Path) -> None:
    facts = install.probe_python((sys.executable,))
    assert facts["version"] == list(sys.version_info[:2]) and facts["implementation"] == "cpython"
    assert facts["zmq"]                        # the test environment has pyzmq
    hidden = install.probe_python((sys.executable, "-S"))
    assert hidden["zmq"] is None and "zmq" in hidden["zmq_error"]
    assert "error" in install.probe_python((str(tmp_path / "no-python"),))


def test_unpack_wheel_refuses_escaping_paths(install, tmp_path: Path) -> None:
    evil = tmp_path / "evil.whl"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.py", "x")
    with pytest.raises(install.InstallError, match="outside its folder"):
        install.unpack_wheel(evil, tmp_path / "vendor")
    assert not (tmp_path / "outside.py").exists()


def _fake_pip(real_run, log: list[list[str]], wheel_ok: bool = True):
    """A runner: `pip download` writes a small pyzmq wheel (a zmq package with a version) into --dest;
    everything else (the probes) really runs."""
    def run(cmd, **kw):
        if "download" in cmd:
            log.append(list(cmd))
            dest = Path(cmd[cmd.index("--dest") + 1])
            if wheel_ok:
                with zipfile.ZipFile(dest / "pyzmq-99.0-cp313-cp313-manylinux_2_28_x86_64.whl", "w") as zf:
                    zf.writestr("zmq/__init__.py", "__version__ = '99.0'\n")
                    zf.writestr("pyzmq-99.0.dist-info/METADATA", "Name: pyzmq\n")
                return subprocess.CompletedProcess(cmd, 0, "", "")
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for pyzmq>=25")
        return real_run(cmd, **kw)
    return run


def test_vendoring_flow_for_a_python_without_pyzmq(install, tmp_path: Path) -> None:
    target = tmp_path / "plug-ins" / "draggan"
    target.mkdir(parents=True)
    gimp_python = install.GimpPython((sys.executable, "-S"), "test: site-packages hidden")
    log: list[list[str]] = []
    action, message = install.ensure_pyzmq(target, gimp_python, sys.executable, _fake_pip(subprocess.run, log))
    assert action == "vendored", message
    assert "GIMP's Python now imports pyzmq 99.0" in message
    assert (target / "vendor/zmq/__init__.py").is_file()
    assert log[0][:4] == [sys.executable, "-m", "pip", "download"]
    # Second run: the vendored copy works already; nothing is downloaded.
    action, message = install.ensure_pyzmq(target, gimp_python, sys.executable, _fake_pip(subprocess.run, log))
    assert action == "vendored" and "imports the vendored pyzmq 99.0" in message and len(log) == 1
    # A Python that has pyzmq: nothing to do.
    action, _ = install.ensure_pyzmq(target, install.GimpPython((sys.executable,), "t"), sys.executable,
                                     _fake_pip(subprocess.run, log))
    assert action == "present" and len(log) == 1


def test_vendoring_failures_are_reported(install, tmp_path: Path) -> None:
    target = tmp_path / "draggan"
    target.mkdir()
    gimp_python = install.GimpPython((sys.executable, "-S"), "t")
    action, message = install.ensure_pyzmq(target, gimp_python, sys.executable,
                                           _fake_pip(subprocess.run, [], wheel_ok=False))
    assert action == "failed" and "No matching distribution" in message and not (target / "vendor").exists()
    action, message = install.ensure_pyzmq(target, None, sys.executable)
    assert action == "unknown" and "--gimp-python" in message
