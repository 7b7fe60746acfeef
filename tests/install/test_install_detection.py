"""GIMP 3 profile folders and GIMP's Python, found on fake directory trees for each platform."""

from __future__ import annotations

from pathlib import Path


def _mk(*paths: Path) -> None:
    for p in paths:
        p.mkdir(parents=True, exist_ok=True)


def test_linux_native_flatpak_snap(install, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _mk(home / ".config/GIMP/3.0/plug-ins", home / ".config/GIMP/3.2", home / ".config/GIMP/2.10/plug-ins",
        home / ".config/GIMP/3.10", home / ".config/GIMP/3.x", home / ".var/app/org.gimp.GIMP/config/GIMP/3.0",
        home / "snap/gimp/current/.config/GIMP/3.0")
    (home / ".config/GIMP/3.4").write_text("a file, not a profile")
    found = install.find_gimp_profiles("linux", home, {})
    assert [(p.kind, p.version, p.plugins_dir) for p in found] == [
        ("native", "3.0", home / ".config/GIMP/3.0/plug-ins"),
        ("native", "3.2", home / ".config/GIMP/3.2/plug-ins"),       # created by staging when missing
        ("native", "3.10", home / ".config/GIMP/3.10/plug-ins"),     # numeric order, not text order
        ("flatpak", "3.0", home / ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins"),
        ("snap", "3.0", home / "snap/gimp/current/.config/GIMP/3.0/plug-ins"),
    ]


def test_linux_xdg_config_home(install, tmp_path: Path) -> None:
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    _mk(home / ".config/GIMP/3.0", xdg / "GIMP/3.0")
    found = install.find_gimp_profiles("linux", home, {"XDG_CONFIG_HOME": str(xdg)})
    assert [p.plugins_dir for p in found] == [xdg / "GIMP/3.0/plug-ins"]


def test_windows_and_macos(install, tmp_path: Path) -> None:
    home = tmp_path / "home"
    appdata = tmp_path / "Roaming"
    _mk(appdata / "GIMP/3.0", appdata / "GIMP/2.10", home / "Library/Application Support/GIMP/3.0",
        home / "AppData/Roaming/GIMP/3.2")
    assert [p.plugins_dir for p in install.find_gimp_profiles("win32", home, {"APPDATA": str(appdata)})] == [
        appdata / "GIMP/3.0/plug-ins"]
    assert [p.version for p in install.find_gimp_profiles("win32", home, {})] == ["3.2"]  # %APPDATA% unset
    mac = install.find_gimp_profiles("darwin", home, {})
    assert [(p.kind, p.plugins_dir) for p in mac] == [("macos", home / "Library/Application Support/GIMP/3.0/plug-ins")]


def test_no_profile(install, tmp_path: Path) -> None:
    assert install.find_gimp_profiles("linux", tmp_path, {}) == []
    assert install.find_gimp_profiles("darwin", tmp_path, {}) == []


def test_profile_kind_of_given_folder(install, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert install.profile_kind_of(home / ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins", home) == "flatpak"
    assert install.profile_kind_of(home / "snap/gimp/current/.config/GIMP/3.0/plug-ins", home) == "snap"
    assert install.profile_kind_of(tmp_path / "somewhere", home) == "given"


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_gimp_python_linux_debian_layout(install, tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    assert install.find_gimp_python("native", "linux", home, {}, root, lambda _n: None) is None   # no GIMP
    _exe(root / "usr/bin/python3")
    assert install.find_gimp_python("native", "linux", home, {}, root, lambda _n: None) is None   # still no GIMP
    _mk(root / "usr/lib/x86_64-linux-gnu/gimp/3.0/plug-ins")       # Debian: no pygimp.interp, shebang python3
    found = install.find_gimp_python("native", "linux", home, {}, root, lambda _n: None)
    assert found is not None and found.command == ("/usr/bin/python3",)


def test_gimp_python_linux_interp_file(install, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _exe(root / "opt/py/bin/python3.12")
    interp = root / "usr/lib64/gimp/3.0/interpreters/pygimp.interp"
    interp.parent.mkdir(parents=True)
    interp.write_text("# comment\npython=/opt/py/bin/python3.12\npython3=/opt/py/bin/python3.12\n"
                      ":Python:E::py::python3:\n")
    found = install.find_gimp_python("given", "linux", tmp_path, {}, root, lambda _n: None)
    assert found is not None and found.command == ("/opt/py/bin/python3.12",)


def test_gimp_python_flatpak(install, tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "root"
    assert install.find_gimp_python("flatpak", "linux", home, {}, root, lambda n: "/usr/bin/" + n) is None
    _mk(root / "var/lib/flatpak/app/org.gimp.GIMP")
    found = install.find_gimp_python("flatpak", "linux", home, {}, root, lambda n: "/usr/bin/" + n)
    assert found is not None
    assert found.command == ("/usr/bin/flatpak", "run", "--command=python3", "org.gimp.GIMP")
    assert install.find_gimp_python("flatpak", "linux", home, {}, root, lambda _n: None) is None  # no flatpak
    assert install.find_gimp_python("snap", "linux", home, {}, root, lambda n: "/usr/bin/" + n) is None


def test_gimp_python_windows(install, tmp_path: Path) -> None:
    pf, local = tmp_path / "Program Files", tmp_path / "Local"
    env = {"ProgramFiles": str(pf), "LOCALAPPDATA": str(local)}
    assert install.find_gimp_python("windows", "win32", tmp_path, env, tmp_path) is None
    py = _exe(local / "Programs/GIMP 3/bin/python.exe")                      # per-user install
    found = install.find_gimp_python("windows", "win32", tmp_path, env, tmp_path)
    assert found is not None and found.command == (str(py),)
    interp = pf / "GIMP 3/lib/gimp/3.0/interpreters/pygimp.interp"          # system install wins
    interp.parent.mkdir(parents=True)
    pyw = _exe(pf / "GIMP 3/bin/pythonw.exe")
    interp.write_text(f"python={pyw}\n")
    _exe(pf / "GIMP 3/bin/python.exe")
    found = install.find_gimp_python("windows", "win32", tmp_path, env, tmp_path)
    assert found is not None and found.command == (str(pf / "GIMP 3/bin/python.exe"),)  # console python for probing


def test_gimp_python_macos(install, tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    assert install.find_gimp_python("macos", "darwin", home, {}, root) is None
    py = _exe(home / "Applications/GIMP.app/Contents/MacOS/python3")
    found = install.find_gimp_python("macos", "darwin", home, {}, root)
    assert found is not None and found.command == (str(py),)
    py_sys = _exe(root / "Applications/GIMP-3.0.app/Contents/MacOS/python3")   # /Applications first
    found = install.find_gimp_python("macos", "darwin", home, {}, root)
    assert found is not None and found.command == (str(py_sys),)


def test_gimp_python_option(install, tmp_path: Path) -> None:
    py = _exe(tmp_path / "GIMP 3" / "bin" / "python.exe")
    assert install.gimp_python_command(str(py), "win32") == (str(py),)          # spaces kept, not split
    assert install.gimp_python_command("flatpak run --command=python3 org.gimp.GIMP", "linux") == (
        "flatpak", "run", "--command=python3", "org.gimp.GIMP")
    assert install.gimp_python_command("chroot '/opt/g 3' /usr/bin/python3", "linux") == (
        "chroot", "/opt/g 3", "/usr/bin/python3")


def test_conflicting_options(install, tmp_path: Path) -> None:
    lines: list[str] = []
    assert install.main(["--plugin-only", "--run", "--gimp-dir", str(tmp_path)], out=lines.append) == 1
    assert "--plugin-only installs no backend venv" in lines[-1]
    assert install.main(["--remote", "h", "--run"], out=lines.append) == 1
    assert "backend runs elsewhere" in lines[-1]
    assert not (tmp_path / "draggan").exists()
