"""The backend venv: torch choice and pip command lines as data, the stamp that makes a second run fast,
the whole main() flow on a fake machine (home folder, GIMP profile, recorded commands), uninstall."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def test_choose_torch(install) -> None:
    assert install.choose_torch("auto", True, "linux") == "cuda"
    assert install.choose_torch("auto", False, "linux") == "cpu"
    assert install.choose_torch("auto", True, "darwin") == "cpu"
    assert install.choose_torch("cpu", True, "win32") == "cpu"
    assert install.choose_torch("cuda", False, "linux") == "cuda"
    with pytest.raises(install.InstallError, match="no CUDA build of torch for macOS"):
        install.choose_torch("cuda", False, "darwin")


def test_nvidia_detection(install) -> None:
    ok = subprocess.CompletedProcess([], 0, "GPU 0: NVIDIA H100 (UUID: GPU-x)\n", "")
    bad = subprocess.CompletedProcess([], 9, "", "NVIDIA-SMI has failed")
    assert install.nvidia_gpu_present(lambda _n: "/usr/bin/nvidia-smi", lambda *a, **k: ok)
    assert not install.nvidia_gpu_present(lambda _n: "/usr/bin/nvidia-smi", lambda *a, **k: bad)
    assert not install.nvidia_gpu_present(lambda _n: None, lambda *a, **k: ok)


def test_pip_command_lines(install) -> None:
    repo = Path("/src/draggan")
    cmds, notes = install.pip_commands("/v/bin/python", "cpu", "linux", repo)
    assert cmds == [["/v/bin/python", "-m", "pip", "install", "torch==2.13.0"],
                    ["/v/bin/python", "-m", "pip", "install", "-e", "/src/draggan"]]
    assert "download.pytorch.org/whl/cpu" in notes[0]          # how to get the small CPU build
    cmds, notes = install.pip_commands("/v/bin/python", "cpu", "linux", repo,
                                       torch_index="https://download.pytorch.org/whl/cpu", editable=False,
                                       extras=("test",))
    assert cmds == [["/v/bin/python", "-m", "pip", "install", "torch==2.13.0", "--index-url",
                     "https://download.pytorch.org/whl/cpu"],
                    ["/v/bin/python", "-m", "pip", "install", "/src/draggan[test]"]]
    assert notes == []
    cmds, notes = install.pip_commands("/v/bin/python", "cuda", "linux", repo)
    assert cmds[0] == ["/v/bin/python", "-m", "pip", "install", "torch==2.13.0"] and notes == []   # PyPI = CUDA
    cmds, notes = install.pip_commands("C:/v/Scripts/python.exe", "cuda", "win32", repo)
    assert "only the CPU build of torch for Windows" in notes[0]
    cmds, notes = install.pip_commands("/v/bin/python", "cpu", "darwin", repo)
    assert notes == []
    cmds, notes = install.pip_commands("/v/bin/python", "none", "linux", repo)
    assert cmds == [["/v/bin/python", "-m", "pip", "install", "pyzmq>=25"],
                    ["/v/bin/python", "-m", "pip", "install", "--no-deps", "-e", "/src/draggan"]]


def test_stamp_logic(install, fake_repo: Path) -> None:
    (fake_repo / "pyproject.toml").write_text("[project]\nname='x'\n")
    a = install.install_stamp(fake_repo, "cpu", None, True, (), False)
    assert install.stamp_matches(a, install.install_stamp(fake_repo, "cpu", None, True, (), False))
    assert not install.stamp_matches(None, a)
    assert not install.stamp_matches(a, install.install_stamp(fake_repo, "cuda", None, True, (), False))
    assert not install.stamp_matches(a, install.install_stamp(fake_repo, "cpu", "https://i", True, (), False))
    assert not install.stamp_matches(a, install.install_stamp(fake_repo, "cpu", None, True, ("test",), False))
    # A full install serves a client-only request; not the other way round.
    assert install.stamp_matches(a, install.install_stamp(fake_repo, "none", None, True, (), False))
    client = install.install_stamp(fake_repo, "none", None, True, (), False)
    assert not install.stamp_matches(client, a)
    (fake_repo / "pyproject.toml").write_text("[project]\nname='x'\ndependencies=['new']\n")
    assert not install.stamp_matches(a, install.install_stamp(fake_repo, "cpu", None, True, (), False))


class FakeMachine:
    """Records commands; `python -m venv` makes the venv's python (a script that runs this Python), pip
    succeeds, everything else (health checks, probes, backend.models) really runs.

    A script, not a symlink: when this Python is itself a venv's (README's flow runs the tests in the
    .venv that install.py made), a link to it outside that venv finds no pyvenv.cfg and loses the
    venv's packages; `exec` keeps the real path, so the packages stay."""

    def __init__(self, pip_rc: int = 0) -> None:
        self.commands: list[list[str]] = []
        self.pip_rc = pip_rc

    def __call__(self, cmd, **kw):
        cmd = [str(c) for c in cmd]
        self.commands.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            py = Path(cmd[-1]) / "bin" / "python"
            py.parent.mkdir(parents=True)
            py.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            py.chmod(0o755)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if cmd[1:4] == ["-m", "pip", "install"]:
            return subprocess.CompletedProcess(cmd, self.pip_rc, "", "")
        if cmd[0].endswith("nvidia-smi"):
            return subprocess.CompletedProcess(cmd, 1, "", "")
        if any("find_spec('facenet_pytorch')" in c for c in cmd):
            return subprocess.CompletedProcess(cmd, 0, "", "")   # the optional face landmarks: present
        return subprocess.run(cmd, **kw)

    def pip(self) -> list[list[str]]:
        return [c for c in self.commands if c[1:3] == ["-m", "pip"]]


@pytest.fixture()
def machine(install, fake_repo: Path, tmp_path: Path):
    (fake_repo / "pyproject.toml").write_text("[project]\nname='draggan-gimp'\n")
    home = tmp_path / "home"
    (home / ".config/GIMP/3.0").mkdir(parents=True)
    fake = FakeMachine()
    probed: list[str] = []

    def unreachable(url: str) -> str:
        probed.append(url)
        return "no answer within 4 s"

    ctx = install.Context(platform="linux", home=home, env={}, root=tmp_path / "root", run=fake,
                          which=lambda _n: None, repo=fake_repo, base_python=sys.executable,
                          probe_index=unreachable)
    fake.probed = probed
    return ctx, fake, home


def test_full_install_then_already_installed(install, machine, tmp_path: Path) -> None:
    ctx, fake, home = machine
    venv = tmp_path / "venv"
    lines: list[str] = []
    assert install.main(["--venv", str(venv)], out=lines.append, ctx=ctx) == 0, lines
    assert [c[4:] for c in fake.pip()] == [["torch==2.13.0"], ["-e", str(ctx.repo)]]   # CPU index unreachable
    assert fake.probed == ["https://download.pytorch.org/whl/cpu"]
    assert any(line.startswith("note: PyTorch's CPU index https://download.pytorch.org/whl/cpu cannot be "
                               "reached (no answer within 4 s); falling back") for line in lines)
    plugins = home / ".config/GIMP/3.0/plug-ins"
    assert (plugins / "draggan/draggan.py").is_file()
    assert any("[GIMP 3.0, native]" in line for line in lines)
    assert any(line.startswith("pyzmq: GIMP's Python was not found") for line in lines)   # no GIMP under root
    assert lines[-1].startswith("  in GIMP (restart it first):")
    stamp = install.read_stamp(venv)
    assert stamp["torch"] == "cpu" and stamp["staged_into"] == [str(plugins)]
    # the venv's Python is recorded for the plug-in's pyzmq relay, and survives a --plugin-only restage
    assert json.loads((plugins / "draggan/relay.json").read_text()) == {"python": str(venv / "bin/python")}
    assert install.main(["--plugin-only", "--gimp-dir", str(plugins)], out=lines.append, ctx=ctx) == 0
    assert (plugins / "draggan/relay.json").is_file()

    fake.commands.clear()
    fake.probed.clear()
    lines.clear()
    assert install.main(["--venv", str(venv)], out=lines.append, ctx=ctx) == 0
    assert fake.pip() == [] and fake.probed == []          # nothing to install: no network probe either
    assert lines[0] == f"backend already installed in {venv} (torch 2.13.0 cpu); nothing to do"

    # The project changes its dependencies: the next run installs again.
    (ctx.repo / "pyproject.toml").write_text("[project]\nname='draggan-gimp'\nversion='2'\n")
    fake.commands.clear()
    assert install.main(["--venv", str(venv), "--skip-pyzmq"], out=lines.append, ctx=ctx) == 0
    assert len(fake.pip()) == 2


def test_broken_venv_is_repaired(install, machine, tmp_path: Path) -> None:
    ctx, fake, _home = machine
    venv = tmp_path / "venv"
    assert install.main(["--venv", str(venv), "--skip-pyzmq"], out=lambda _l: None, ctx=ctx) == 0
    stamp = install.read_stamp(venv)
    # The stamp matches but a module is gone: simulate with a health check that the fake fails.
    real = fake.__call__
    fake_calls = []

    def failing_health(cmd, **kw):
        cmd = [str(c) for c in cmd]
        if "-I" in cmd and "find_spec" in cmd[-1] and not fake_calls:
            fake_calls.append(cmd)
            return subprocess.CompletedProcess(cmd, 1, "missing: torch\n", "")
        return real(cmd, **kw)

    ctx.run = failing_health
    fake.commands.clear()
    lines: list[str] = []
    assert install.main(["--venv", str(venv), "--skip-pyzmq"], out=lines.append, ctx=ctx) == 0
    assert any("is incomplete (missing: torch); repairing it" in line for line in lines)
    assert len(fake.pip()) == 2 and install.read_stamp(venv)["pyproject_sha256"] == stamp["pyproject_sha256"]


def test_pip_failure_is_an_error_and_leaves_no_stamp(install, machine, tmp_path: Path) -> None:
    ctx, fake, _home = machine
    fake.pip_rc = 1
    lines: list[str] = []
    assert install.main(["--venv", str(tmp_path / "v"), "--torch", "cuda"], out=lines.append, ctx=ctx) == 1
    assert lines[-1].startswith("error: `") and "torch==2.13.0" in lines[-1] and "--torch-index" in lines[-1]
    assert install.read_stamp(tmp_path / "v") is None


def test_torch_index_env_and_flags(install, machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, fake, _home = machine
    monkeypatch.setenv("DRAGGAN_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
    assert install.main(["--venv", str(tmp_path / "v"), "--dev", "--no-editable", "--skip-pyzmq"],
                        out=lambda _l: None, ctx=ctx) == 0
    assert [c[4:] for c in fake.pip()] == [
        ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"], [f"{ctx.repo}[test]"]]
    assert fake.probed == []                                  # an explicit index is not probed
    staged = ctx.home / ".config/GIMP/3.0/plug-ins/draggan"
    assert (staged / "draggan_core").is_symlink()            # --dev links


def test_no_profile_warns_but_plugin_only_fails(install, machine, tmp_path: Path) -> None:
    ctx, _fake, home = machine
    (home / ".config/GIMP/3.0").rmdir()
    lines: list[str] = []
    assert install.main(["--venv", str(tmp_path / "v")], out=lines.append, ctx=ctx) == 0
    assert any(line.startswith("warning: no GIMP 3 profile found") for line in lines)
    lines.clear()
    assert install.main(["--plugin-only"], out=lines.append, ctx=ctx) == 1
    assert lines[-1].startswith("error: no GIMP 3 profile found") and "--gimp-dir" in lines[-1]


def test_uninstall_removes_what_it_installed(install, machine, tmp_path: Path) -> None:
    ctx, _fake, home = machine
    venv = tmp_path / "venv"
    extra = tmp_path / "custom-plugins"
    assert install.main(["--venv", str(venv), "--skip-pyzmq"], out=lambda _l: None, ctx=ctx) == 0
    assert install.main(["--venv", str(venv), "--gimp-dir", str(extra), "--skip-pyzmq"],
                        out=lambda _l: None, ctx=ctx) == 0
    foreign = home / ".config/GIMP/3.0/plug-ins/other-plugin"
    foreign.mkdir()
    lines: list[str] = []
    assert install.main(["--venv", str(venv), "--uninstall"], out=lines.append, ctx=ctx) == 0
    assert not (home / ".config/GIMP/3.0/plug-ins/draggan").exists()
    assert not (extra / "draggan").exists()           # remembered in the venv's stamp
    assert not venv.exists() and foreign.is_dir()
    assert f"removed the backend venv {venv}" in lines
    # A venv we did not make is left alone.
    other = tmp_path / "someone-elses-venv"
    (other / "bin").mkdir(parents=True)
    lines.clear()
    assert install.main(["--venv", str(other), "--uninstall"], out=lines.append, ctx=ctx) == 0
    assert other.is_dir() and any("was not made by install.py" in line for line in lines)


def test_list_models_without_venv_runs_the_registry(install, machine, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, fake, _home = machine
    ctx.repo = Path(__file__).resolve().parents[2]           # the real backend/models.py
    monkeypatch.setenv("DRAGGAN_MODELS_DIR", str(tmp_path / "models"))
    assert install.main(["--venv", str(tmp_path / "none"), "--list-models"], out=lambda _l: None, ctx=ctx) == 0
    assert fake.commands == [[sys.executable, "-m", "backend.models", "list"]]


def test_model_file_through_install(install, machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, fake, _home = machine
    ctx.repo = Path(__file__).resolve().parents[2]           # the real backend/models.py
    models_dir = tmp_path / "models"
    monkeypatch.setenv("DRAGGAN_MODELS_DIR", str(models_dir))
    download = tmp_path / "stylegan_human_v2_512.pkl"
    download.write_bytes(b"weights")
    args = ["--plugin-only", "--gimp-dir", str(tmp_path / "p"), "--venv", str(tmp_path / "none")]
    assert install.main([*args, "--model-file", str(download), "human-512"], out=lambda _l: None, ctx=ctx) == 0
    assert (models_dir / "stylegan_human_v2_512.pkl").read_bytes() == b"weights"
    lines: list[str] = []
    assert install.main([*args, "--model", "lhq-256"], out=lines.append, ctx=ctx) == 1   # a manual download
    assert lines[-1].startswith("error: downloading model lhq-256 failed: see the message above")


def test_cpu_build_uses_the_cpu_index_when_it_answers(install, machine, tmp_path: Path) -> None:
    ctx, fake, _home = machine
    ctx.probe_index = lambda url: None
    lines: list[str] = []
    assert install.main(["--venv", str(tmp_path / "v"), "--skip-pyzmq"], out=lines.append, ctx=ctx) == 0
    assert [c[4:] for c in fake.pip()] == [
        ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"], ["-e", str(ctx.repo)]]
    assert not any("bundles the CUDA libraries" in line for line in lines)
    assert install.read_stamp(tmp_path / "v")["torch_index"] == ""       # the default choice, not a pin


def test_torch_index_choice_as_data(install) -> None:
    cpu = "https://download.pytorch.org/whl/cpu"
    up: list[str] = []

    def reachable(url: str) -> None:
        up.append(url)

    assert install.torch_index_for("cpu", "linux", None, reachable) == (cpu, [f"torch (CPU build) comes from "
                                                                              f"PyTorch's CPU index {cpu}"])
    assert up == [cpu]
    index, notes = install.torch_index_for("cpu", "linux", None, lambda _u: "URLError: refused")
    assert index is None and "cannot be reached (URLError: refused); falling back" in notes[0]
    assert install.torch_index_for("cpu", "linux", "https://mirror/simple", reachable) == ("https://mirror/simple", [])
    assert install.torch_index_for("cuda", "linux", None, reachable) == (None, [])       # PyPI's Linux wheel
    assert install.torch_index_for("cpu", "win32", None, reachable) == (None, [])        # PyPI: CPU already
    assert install.torch_index_for("cpu", "darwin", None, reachable) == (None, [])
    assert up == [cpu]                                     # probed only for the Linux CPU choice


def test_index_probe_against_a_closed_local_port(install) -> None:
    """The fallback decision is fast: a refused connection is known at once, silence after the timeout."""
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]            # closed again when the block ends: nothing listens there
    start = time.monotonic()
    why = install.probe_index(f"http://127.0.0.1:{port}/whl/cpu", timeout_s=2.0)
    assert why is not None and "refused" in why.lower(), why
    assert time.monotonic() - start < 2.5
    with socket.socket() as silent:          # listens but never answers: the timeout bounds the probe
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.monotonic()
        why = install.probe_index(f"http://127.0.0.1:{silent.getsockname()[1]}/whl/cpu", timeout_s=1.0)
        assert why is not None and time.monotonic() - start < 2.0, why


@pytest.mark.parametrize("pip_ok", [True, False])
def test_face_landmarks_are_optional(install, machine, tmp_path: Path, pip_ok: bool) -> None:
    """The MTCNN weights (facenet-pytorch, --no-deps) are installed when missing; a failure there
    is a note that says what it means, never a failed install; when present nothing is run."""
    ctx, fake, _home = machine
    real = fake.__call__

    def run(cmd, **kw):
        cmd = [str(c) for c in cmd]
        if install.LANDMARKS_CHECK in cmd:
            fake.commands.append(cmd)
            return subprocess.CompletedProcess(cmd, 1, "", "")     # not installed yet
        if cmd[-2:] == ["--no-deps", install.LANDMARKS_PACKAGE]:
            fake.commands.append(cmd)
            return subprocess.CompletedProcess(cmd, 0 if pip_ok else 1, "", "")
        return real(cmd, **kw)

    ctx.run = run
    lines: list[str] = []
    assert install.main(["--venv", str(tmp_path / "venv"), "--skip-pyzmq"], out=lines.append, ctx=ctx) == 0, lines
    pips = [c[4:] for c in fake.pip()]
    assert pips[-1] == ["--no-deps", "facenet-pytorch==2.6.0"] and len(pips) == 3
    if pip_ok:
        assert any("MTCNN landmark weights installed" in line for line in lines)
    else:
        note = next(line for line in lines if "face-landmark weights could not be installed" in line)
        assert "edit without face alignment" in note and "install goes on" in note
    # already there: nothing is installed
    assert install.ensure_face_landmarks(Path("/nonexistent/python"), lines.append,
                                         lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "", "")) is None
