#!/usr/bin/env python3
"""One command from a fresh clone to "drag in GIMP" (standard library only, Python >= 3.10).

    python install.py                          # backend venv + torch + plug-in into every GIMP 3 profile
    python install.py --plugin-only --gimp-dir DIR   # only stage the plug-in into DIR/draggan/

Every decision (which GIMP folders, which pip command lines, whether pyzmq must be vendored) is a
pure function of its inputs (home folder, environment, platform, probe results) so the tests run
them on fake directory trees; only `main()` touches the real machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent
PLUGIN_NAME = "draggan"                      # GIMP loads PLUG-IN-DIR/draggan/draggan.py
WIRE_PACKAGE = "draggan_wire"                # the repository's draggan_wire/ package, staged as it is
WIRE_FILES = ("__init__.py", "protocol.py", "client.py", "relay_bridge.py")   # what a clone must have
VENDOR_DIR = "vendor"                        # pyzmq unpacked here when GIMP's Python lacks it
CONFIG_FILE = "draggan.json"                 # the plug-in's config: backend address and its CURVE keys
RELAY_FILE = "relay.json"                    # the backend venv's Python, for the pyzmq relay
STAGE_MANIFEST = ".draggan-install.json"     # marks a folder as ours (uninstall removes only those)
# Kept across a re-staging: they are not copied from the repo but made on this machine.
PRESERVED_ON_RESTAGE = (VENDOR_DIR, CONFIG_FILE, RELAY_FILE)
SKIPPED_NAMES = ("__pycache__", ".pytest_cache", ".mypy_cache")
SKIPPED_SUFFIXES = (".pyc", ".pyo")

class InstallError(Exception):
    """A step failed in a way the user can act on; the message says what to do."""


def say(message: str) -> None:
    print(f"install.py: {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Plug-in staging
# --------------------------------------------------------------------------------------------

@dataclass
class StageReport:
    """What `stage_plugin` did in one GIMP plug-ins folder."""

    target: Path                       # PLUG-IN-DIR/draggan
    mode: str                          # "copy" or "link"
    files: list[str] = field(default_factory=list)   # paths relative to target, sorted
    replaced_previous: bool = False
    preserved: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        verb = "linked" if self.mode == "link" else "copied"
        out = [f"staged the plug-in into {self.target} ({len(self.files)} files {verb})"]
        if self.replaced_previous:
            out.append("  replaced an earlier staging" +
                       (f", kept {', '.join(self.preserved)}" if self.preserved else ""))
        out.append(f"  {PLUGIN_NAME}/{PLUGIN_NAME}.py is executable; restart GIMP to load it")
        return out


def _skip(name: str) -> bool:
    return name in SKIPPED_NAMES or name.endswith(SKIPPED_SUFFIXES)


def _plugin_entries(plugin_source: Path) -> list[Path]:
    """Top-level entries of the plug-in folder to stage (sorted, caches skipped)."""
    return sorted(p for p in plugin_source.iterdir() if not _skip(p.name))


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=lambda _d, names: [n for n in names if _skip(n)])


def _relative_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _skip(d))
        for name in filenames:
            if not _skip(name):
                out.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(out)


def _make_executable(path: Path) -> None:
    mode = path.stat().st_mode
    path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def stage_plugin(plugins_dir: Path, repo: Path = REPO, link: bool = False) -> StageReport:
    """Stage the plug-in into `plugins_dir/draggan/` (GIMP's NAME/NAME.py layout).

    Layout made: draggan/draggan.py (executable), draggan/<everything else in gimp_plugin/draggan/>,
    draggan/draggan_wire/ (the repository's draggan_wire package as it is: protocol, client, relay bridge).
    `link=True` symlinks the sources instead of copying (for developers) — except the entry file
    draggan.py, which is always copied: plug-ins find their siblings through
    os.path.realpath(__file__), and a link would point that back into the repository.
    An earlier staging is replaced atomically (built beside it, then swapped); its vendor/ folder
    and config file are kept because they were made on this machine, not copied from the repo.
    """
    source = repo / "gimp_plugin" / PLUGIN_NAME
    entry = source / f"{PLUGIN_NAME}.py"
    if not entry.is_file():
        raise InstallError(f"the plug-in entry file {entry} is missing: is this a complete clone?")
    wire_source = repo / WIRE_PACKAGE
    for path in (wire_source / name for name in WIRE_FILES):
        if not path.is_file():
            raise InstallError(f"{path} is missing: the plug-in needs it (is this a complete clone?)")

    plugins_dir = Path(plugins_dir)
    plugins_dir.mkdir(parents=True, exist_ok=True)
    target = plugins_dir / PLUGIN_NAME
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise InstallError(f"{target} exists and is not a folder; remove it and run install.py again")
    if target.exists() and not (target / STAGE_MANIFEST).is_file() and any(target.iterdir()):
        # A folder we did not make (e.g. a hand copy): replace it only when it looks like our plug-in.
        if not (target / f"{PLUGIN_NAME}.py").is_file():
            raise InstallError(f"{target} exists and was not made by install.py; move it away first")

    build = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_NAME}.new-", dir=plugins_dir))
    try:
        for item in _plugin_entries(source):
            dst = build / item.name
            if item.name == entry.name or not link:
                if item.is_dir():
                    _copy_tree(item, dst)
                else:
                    shutil.copy2(item, dst)
            else:
                dst.symlink_to(item.resolve(), target_is_directory=item.is_dir())
        wire = build / WIRE_PACKAGE
        if link:
            wire.symlink_to(wire_source.resolve(), target_is_directory=True)
        else:
            _copy_tree(wire_source, wire)
        _make_executable(build / entry.name)

        preserved: list[str] = []
        replaced = target.exists()
        if replaced:
            for name in PRESERVED_ON_RESTAGE:
                if (target / name).exists() and not (build / name).exists():
                    shutil.move(str(target / name), str(build / name))
                    preserved.append(name)
        files = [f for f in _relative_files(build) if f.split("/")[0] not in PRESERVED_ON_RESTAGE]
        manifest = {"installed_by": "install.py", "mode": "link" if link else "copy",
                    "source": str(repo), "staged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "files": files}
        (build / STAGE_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        build.chmod(0o755)   # mkdtemp makes 0700; GIMP (same user) would cope, but keep it ordinary

        if replaced:
            old = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_NAME}.old-", dir=plugins_dir))
            os.rename(target, old / PLUGIN_NAME)
            os.rename(build, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return StageReport(target=target, mode="link" if link else "copy", files=files,
                       replaced_previous=replaced, preserved=preserved)


def unstage_plugin(plugins_dir: Path) -> str | None:
    """Remove `plugins_dir/draggan` if install.py made it; returns a line saying what happened."""
    target = Path(plugins_dir) / PLUGIN_NAME
    if not target.exists() and not target.is_symlink():
        return None
    if not (target / STAGE_MANIFEST).is_file():
        return f"left {target} alone: it was not made by install.py (no {STAGE_MANIFEST})"
    shutil.rmtree(target)
    return f"removed {target}"


# --------------------------------------------------------------------------------------------
# GIMP 3 profiles (user plug-in folders)
# --------------------------------------------------------------------------------------------

_GIMP3_PROFILE_RE = re.compile(r"^3\.(\d+)$")


@dataclass(frozen=True)
class GimpProfile:
    """One GIMP 3.x user profile. kind: native | flatpak | snap | windows | macos | given."""

    kind: str
    version: str          # "3.0", "3.2", ... ("" for a folder given with --gimp-dir)
    plugins_dir: Path


def _profiles_under(config_root: Path, kind: str) -> list[GimpProfile]:
    """GIMP/3.x profiles in `config_root` (the folder that holds GIMP/)."""
    gimp = config_root / "GIMP"
    if not gimp.is_dir():
        return []
    found = []
    for child in gimp.iterdir():
        m = _GIMP3_PROFILE_RE.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), GimpProfile(kind, child.name, child / "plug-ins")))
    return [p for _minor, p in sorted(found, key=lambda t: t[0])]


def find_gimp_profiles(platform: str, home: Path, env: Mapping[str, str]) -> list[GimpProfile]:
    """Every GIMP 3.x user profile on this machine (pure: reads only the given folders).

    Linux: $XDG_CONFIG_HOME (~/.config)/GIMP/3.x, Flatpak ~/.var/app/org.gimp.GIMP/config/GIMP/3.x,
    Snap ~/snap/gimp/current/.config/GIMP/3.x; Windows %APPDATA%\\GIMP\\3.x; macOS
    ~/Library/Application Support/GIMP/3.x. The plug-ins folder is <profile>/plug-ins (it may not
    exist yet: staging creates it). A profile exists once GIMP 3 has been started once.
    """
    if platform.startswith("win"):
        appdata = Path(env["APPDATA"]) if env.get("APPDATA") else home / "AppData" / "Roaming"
        return _profiles_under(appdata, "windows")
    if platform == "darwin":
        return _profiles_under(home / "Library" / "Application Support", "macos")
    xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return (_profiles_under(xdg, "native")
            + _profiles_under(home / ".var" / "app" / "org.gimp.GIMP" / "config", "flatpak")
            + _profiles_under(home / "snap" / "gimp" / "current" / ".config", "snap"))


def profile_kind_of(plugins_dir: Path, home: Path) -> str:
    """Which kind of GIMP a plug-ins folder given with --gimp-dir belongs to (for finding its Python)."""
    parts = Path(plugins_dir).expanduser().resolve().as_posix()
    if "/.var/app/org.gimp.GIMP/" in parts:
        return "flatpak"
    if "/snap/gimp/" in parts:
        return "snap"
    return "given"


# --------------------------------------------------------------------------------------------
# GIMP's Python and pyzmq
# --------------------------------------------------------------------------------------------

FLATPAK_GIMP = "org.gimp.GIMP"

# Runs inside GIMP's Python (any 3.x, standard library only): facts for choosing a wheel, and
# whether zmq imports (with argv[1], the vendor folder, appended to sys.path when given).
PROBE_CODE = r"""
import json, os, platform, sys, sysconfig
if len(sys.argv) > 1 and sys.argv[1]:
    sys.path.append(sys.argv[1])
out = {"version": list(sys.version_info[:2]), "implementation": sys.implementation.name,
       "platform": sysconfig.get_platform(), "machine": platform.machine(),
       "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
       "glibc": (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")[2] if hasattr(os, "confstr") else "",
       "mac": platform.mac_ver()[0], "executable": sys.executable, "zmq": None, "zmq_file": None,
       "zmq_error": None}
try:
    import zmq
    out["zmq"] = zmq.__version__
    out["zmq_file"] = zmq.__file__
except Exception as exc:
    out["zmq_error"] = "%s: %s" % (type(exc).__name__, exc)
print("DRAGGAN-PROBE " + json.dumps(out))
"""


@dataclass(frozen=True)
class GimpPython:
    """How to run GIMP's Python: an argv prefix, and how it was found."""

    command: tuple[str, ...]
    origin: str


def _interp_python(interp_file: Path) -> str | None:
    """The python3= (or python=) binary named in a GIMP pygimp.interp file."""
    try:
        lines = interp_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith(("#", ":")):
            values[key.strip()] = value.strip()
    return values.get("python3") or values.get("python")


def find_gimp_python(kind: str, platform: str, home: Path, env: Mapping[str, str], root: Path = Path("/"),
                     which: Callable[[str], str | None] = shutil.which) -> GimpPython | None:
    """Where the Python that GIMP runs plug-ins with lives, for a profile of `kind` (pure: reads only
    files under `root` and `home`, asks `which` for programs). None when it cannot be told.

    * native Linux: a pygimp.interp of an installed GIMP 3 names it; else plug-ins run through
      their `#!/usr/bin/env python3` line, i.e. /usr/bin/python3 for a desktop-launched GIMP.
    * Flatpak: the sandbox's python3 (`flatpak run --command=python3 org.gimp.GIMP`).
    * Windows: <GIMP 3 install>\\bin\\python.exe (Program Files or per-user Programs).
    * macOS: GIMP.app/Contents/MacOS/python3 (or the interp file in the bundle).
    * Snap: not determined (the snap's Python runs only inside its confinement): --gimp-python.
    """
    if kind == "flatpak":
        installed = [home / ".local/share/flatpak/app" / FLATPAK_GIMP, root / "var/lib/flatpak/app" / FLATPAK_GIMP]
        flatpak = which("flatpak")
        if flatpak and any(p.is_dir() for p in installed):
            return GimpPython((flatpak, "run", "--command=python3", FLATPAK_GIMP), "the Flatpak sandbox of GIMP")
        return None
    if kind == "snap":
        return None
    if platform.startswith("win"):
        bases = [Path(env[k]) / "GIMP 3" for k in ("ProgramW6432", "ProgramFiles", "ProgramFiles(x86)") if env.get(k)]
        if env.get("LOCALAPPDATA"):
            bases.append(Path(env["LOCALAPPDATA"]) / "Programs" / "GIMP 3")
        for base in bases:
            interp = _interp_python(base / "lib/gimp/3.0/interpreters/pygimp.interp")
            candidates = ([Path(interp).with_name("python.exe")] if interp else []) + [
                base / "bin" / "python.exe", base / "bin" / "python3.exe"]
            for c in candidates:
                if c.is_file():
                    return GimpPython((str(c),), f"the GIMP 3 install in {base}")
        return None
    if platform == "darwin":
        apps = sorted((root / "Applications").glob("GIMP*.app")) + sorted((home / "Applications").glob("GIMP*.app"))
        for app in apps:
            interp = _interp_python(app / "Contents/Resources/lib/gimp/3.0/interpreters/pygimp.interp")
            candidates = ([Path(interp)] if interp else []) + [app / "Contents/MacOS/python3",
                                                               app / "Contents/MacOS/python"]
            for c in candidates:
                if c.is_file():
                    return GimpPython((str(c),), f"the GIMP bundle {app}")
        return None
    # native Linux (and a folder given with --gimp-dir on Linux)
    lib_dirs = [root / "usr/lib", root / "usr/lib64", root / "usr/local/lib"]
    lib_dirs += [d for base in (root / "usr/lib",) if base.is_dir() for d in sorted(base.glob("*-linux-gnu*"))]
    gimp_installed = False
    for lib in lib_dirs:
        if (lib / "gimp/3.0").is_dir():
            gimp_installed = True
            interp = _interp_python(lib / "gimp/3.0/interpreters/pygimp.interp")
            if interp and (root / interp.lstrip("/")).is_file():
                return GimpPython((interp,), f"{lib / 'gimp/3.0/interpreters/pygimp.interp'}")
    gimp_installed = gimp_installed or any((root / "usr/bin" / n).exists() for n in ("gimp-3.0", "gimp-3"))
    if gimp_installed and (root / "usr/bin/python3").is_file():
        return GimpPython(("/usr/bin/python3",), "GIMP 3 runs Python plug-ins with the system python3")
    return None


def gimp_python_command(text: str, platform: str) -> tuple[str, ...]:
    """--gimp-python as an argv prefix: an existing file as it is (Windows paths keep their
    backslashes and spaces), else a command line split like a shell would."""
    path = Path(text).expanduser()
    if path.is_file():
        return (str(path),)
    return tuple(shlex.split(text, posix=not platform.startswith("win")))


def probe_python(command: Sequence[str], vendor_dir: Path | None = None,
                 run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> dict[str, Any]:
    """Run PROBE_CODE in GIMP's Python; returns its facts or {"error": why}."""
    try:
        r = run([*command, "-c", PROBE_CODE, str(vendor_dir) if vendor_dir else ""],
                capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"could not run {' '.join(command)}: {exc}"}
    for line in (r.stdout or "").splitlines():
        if line.startswith("DRAGGAN-PROBE "):
            try:
                data = json.loads(line.removeprefix("DRAGGAN-PROBE "))
            except ValueError:
                break
            return data if isinstance(data, dict) else {"error": "bad probe output"}
    return {"error": f"{' '.join(command)} did not run the probe (exit {r.returncode}): "
                     f"{(r.stderr or r.stdout or '').strip()[-400:]}"}


def wheel_platform_tags(probe: Mapping[str, Any]) -> list[str]:
    """pip `--platform` tags a wheel for this Python may have, most specific first ([] = none on PyPI).

    linux-<arch>: manylinux_2_<n>_<arch> for glibc 2.<n> down to 2.17, plus the legacy aliases;
    musl: musllinux_1_{2,1}; macosx-<v>-<arch>: macosx_<major>_0 .. 11_0 and 10_9..10_16 for the arch
    and universal2; win-amd64/win32/win-arm64: win_amd64/win32/win_arm64. MinGW (MSYS2) Pythons:
    none — PyPI's Windows wheels are built for the MSVC runtime and do not load there.
    """
    plat = str(probe.get("platform", ""))
    machine = str(probe.get("machine", ""))
    if plat.startswith("mingw"):
        return []
    if plat.startswith("win"):
        names = {"win-amd64": "win_amd64", "win32": "win32", "win-arm64": "win_arm64"}
        return [names.get(plat, plat.replace("-", "_"))]
    if plat.startswith("linux"):
        arch = plat.split("-", 1)[1] if "-" in plat else machine
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
        glibc = str(probe.get("glibc") or "")
        m = re.match(r"^2\.(\d+)", glibc)
        if not m:
            return [f"musllinux_1_2_{arch}", f"musllinux_1_1_{arch}"]
        minor = int(m.group(1))
        tags = [f"manylinux_2_{n}_{arch}" for n in range(minor, 16, -1)]
        tags.append(f"manylinux2014_{arch}")
        if arch in ("x86_64", "i686"):
            tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
        return tags
    if plat.startswith("macosx"):
        parts = plat.split("-")
        arch = parts[-1] if len(parts) >= 3 else machine
        if arch == "universal2":
            arch = machine or "arm64"
        mac = str(probe.get("mac") or (parts[1] if len(parts) >= 3 else "11.0"))
        major = int(mac.split(".")[0]) if mac.split(".")[0].isdigit() else 11
        archs = [arch, "universal2"] if arch in ("arm64", "x86_64") else [arch]
        tags = [f"macosx_{v}_0_{a}" for v in range(max(major, 11), 10, -1) for a in archs]
        if arch == "x86_64" or major < 11:
            tags += [f"macosx_10_{v}_{a}" for v in range(16, 8, -1) for a in archs]
        else:
            tags += [f"macosx_10_{v}_universal2" for v in range(16, 8, -1)]
        return tags
    return []


@dataclass(frozen=True)
class PyzmqDecision:
    """What to do about pyzmq for one GIMP Python.

    action: "present" (GIMP's Python imports zmq), "vendored" (our vendor/ copy already works),
    "vendor" (download `pip_args` and unpack into vendor/), "impossible" (no wheel can work; the
    message says what to do), "unknown" (GIMP's Python could not be run).
    """

    action: str
    message: str
    pip_args: tuple[str, ...] = ()


PYZMQ_REQUIREMENT = "pyzmq>=25"


def decide_pyzmq(probe: Mapping[str, Any], probe_with_vendor: Mapping[str, Any] | None = None) -> PyzmqDecision:
    """The pyzmq decision from the probe results (pure; see PyzmqDecision)."""
    if "error" in probe:
        return PyzmqDecision("unknown", f"could not ask GIMP's Python about pyzmq: {probe['error']}")
    where = f"GIMP's Python {'.'.join(map(str, probe.get('version', [])))} ({probe.get('executable')})"
    if probe.get("zmq"):
        return PyzmqDecision("present", f"{where} imports pyzmq {probe['zmq']}: nothing to vendor")
    if probe_with_vendor and probe_with_vendor.get("zmq"):
        return PyzmqDecision("vendored", f"{where} imports the vendored pyzmq {probe_with_vendor['zmq']}")
    if probe.get("implementation") != "cpython":
        return PyzmqDecision("impossible", f"{where} is {probe.get('implementation')}, not CPython: install "
                                           "pyzmq for it by hand")
    tags = wheel_platform_tags(probe)
    if not tags:
        return PyzmqDecision(
            "impossible",
            f"{where} is a {probe.get('platform')} build; PyPI has no pyzmq wheel for it (its Windows wheels are "
            "for the MSVC runtime). Install pyzmq with that Python's own package manager (for MSYS2: "
            "pacman -S the python-pyzmq package of its environment), or run GIMP where a wheel exists.")
    major, minor = (list(probe.get("version", [3, 0])) + [0])[:2]
    abi = f"cp{major}{minor}" + ("t" if probe.get("free_threaded") else "")
    args = ["download", "--only-binary=:all:", "--no-deps", "--python-version", f"{major}.{minor}",
            "--implementation", "cp", "--abi", abi]
    for tag in tags:
        args += ["--platform", tag]
    args.append(PYZMQ_REQUIREMENT)
    return PyzmqDecision("vendor", f"{where} lacks pyzmq ({probe.get('zmq_error')}); vendoring a "
                                   f"{abi} wheel for {tags[0]}", tuple(args))


def write_relay_record(plugin_target: Path, python: Path) -> str:
    """Record in the staged plug-in (relay.json) the Python that runs the relay bridge when GIMP's
    own Python has no pyzmq: the backend venv's, which has it. Returns that path."""
    path = str(Path(python).absolute())
    (plugin_target / RELAY_FILE).write_text(json.dumps({"python": path}, indent=1) + "\n", encoding="utf-8")
    return path


def unpack_wheel(wheel: Path, dest: Path) -> list[str]:
    """Unpack a wheel (a zip) into `dest`, refusing paths that leave it; returns top-level names."""
    dest.mkdir(parents=True, exist_ok=True)
    top: set[str] = set()
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise InstallError(f"{wheel.name} holds a path outside its folder: {info.filename}")
            top.add(info.filename.split("/")[0])
        zf.extractall(dest)
    return sorted(top)


def ensure_pyzmq(plugin_target: Path, gimp_python: GimpPython | None, pip_python: str,
                 run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> tuple[str, str]:
    """Make pyzmq importable for GIMP's Python in a staged plug-in folder; returns (action, message).

    Downloads with `pip_python -m pip download` (the decided tags) into a temporary folder, unpacks
    the wheel into <plugin>/vendor/ (replacing an older one) and checks the import by running
    GIMP's Python again.
    """
    if gimp_python is None:
        return ("unknown", "GIMP's Python was not found, so pyzmq could not be checked. If the plug-in "
                           "reports that pyzmq is missing, run install.py again with --gimp-python PATH")
    vendor = plugin_target / VENDOR_DIR
    probe = probe_python(gimp_python.command, None, run)
    with_vendor = probe_python(gimp_python.command, vendor, run) if vendor.is_dir() and not probe.get("zmq") \
        else None
    decision = decide_pyzmq(probe, with_vendor)
    if decision.action != "vendor":
        return decision.action, decision.message
    with tempfile.TemporaryDirectory(prefix="draggan-pyzmq-") as tmp:
        cmd = [pip_python, "-m", "pip", *decision.pip_args, "--dest", tmp]
        r = run(cmd, capture_output=True, text=True, timeout=600)
        wheels = sorted(Path(tmp).glob("pyzmq-*.whl"))
        if r.returncode != 0 or not wheels:
            tail = (r.stderr or r.stdout or "").strip()[-600:]
            return ("failed", f"{decision.message}, but `{' '.join(cmd)}` found no wheel (exit {r.returncode}): "
                              f"{tail}")
        if vendor.exists():
            shutil.rmtree(vendor)
        unpack_wheel(wheels[-1], vendor)
        wheel_name = wheels[-1].name
    after = probe_python(gimp_python.command, vendor, run)
    if after.get("zmq"):
        return ("vendored", f"{decision.message}: unpacked {wheel_name} into {vendor}; GIMP's Python now imports "
                            f"pyzmq {after['zmq']}")
    shutil.rmtree(vendor, ignore_errors=True)
    return ("failed", f"{decision.message}: unpacked {wheel_name}, but GIMP's Python still cannot import it "
                      f"({after.get('zmq_error') or after.get('error')}); removed it again")


# --------------------------------------------------------------------------------------------
# The backend's virtual environment: torch choice and pip command lines
# --------------------------------------------------------------------------------------------

TORCH_VERSION = "2.13.0"
TORCH_INDEX_ENV = "DRAGGAN_TORCH_INDEX"
VENV_STAMP = "draggan-install.json"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"   # PyTorch's own index of CPU-only wheels
INDEX_PROBE_TIMEOUT_S = 4.0
TORCH_NOTES = {
    "linux-cpu": ("PyPI's Linux torch wheel bundles the CUDA libraries (a few GB; it runs on CPU too). For the "
                  f"small CPU-only build pass --torch-index {TORCH_CPU_INDEX}"),
    "win32-cuda": ("PyPI has only the CPU build of torch for Windows: pass --torch-index with the CUDA index that "
                   "pytorch.org/get-started lists for your driver (https://download.pytorch.org/whl/cuXXX)"),
}


def probe_index(url: str, timeout_s: float = INDEX_PROBE_TIMEOUT_S) -> str | None:
    """None when the package index at `url` answers an HTTP request within `timeout_s` seconds,
    else why not. The whole probe (name lookup included) is bounded: it runs in a daemon thread.
    Proxies come from the environment, as for pip."""
    import threading
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout_s) as reply:
                reply.read(1)
            outcome.append(None)
        except urllib.error.HTTPError as exc:   # it answered: reachable (pip reports any real problem)
            outcome.append(None if exc.code < 500 else f"HTTP {exc.code}")
        except Exception as exc:                # URLError, OSError, timeouts, bad URLs
            outcome.append(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    if not outcome:
        return f"no answer within {timeout_s:.0f} s"
    return outcome[0]


def torch_index_for(torch: str, platform: str, explicit: str | None,
                    probe: Callable[[str], str | None] = probe_index) -> tuple[str | None, list[str]]:
    """The index torch is installed from, and lines for the user (pure but for `probe`).

    An explicit index (--torch-index, $DRAGGAN_TORCH_INDEX) always wins, unprobed. A CPU build on
    Linux comes from PyTorch's CPU index (PyPI's Linux wheel is the multi-GB CUDA build) when that
    index answers within seconds; otherwise from pip's configured index (PyPI), and the user is told.
    Elsewhere PyPI's wheel already is the right build: no index is given.
    """
    if explicit:
        return explicit, []
    if torch != "cpu" or platform.startswith(("win", "darwin")):
        return None, []
    why = probe(TORCH_CPU_INDEX)
    if why is None:
        return TORCH_CPU_INDEX, [f"torch (CPU build) comes from PyTorch's CPU index {TORCH_CPU_INDEX}"]
    return None, [f"PyTorch's CPU index {TORCH_CPU_INDEX} cannot be reached ({why}); falling back to pip's "
                  "configured index (PyPI), whose Linux torch wheel bundles the CUDA libraries (a few GB; it runs "
                  "on CPU too). Pass --torch-index URL to choose another index"]


def nvidia_gpu_present(which: Callable[[str], str | None] = shutil.which,
                       run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> bool:
    """True when `nvidia-smi -L` runs and lists a GPU."""
    exe = which("nvidia-smi")
    if not exe:
        return False
    try:
        r = run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and "GPU" in (r.stdout or "")


def choose_torch(requested: str, gpu_present: bool, platform: str) -> str:
    """'cpu' or 'cuda': `requested` unless 'auto', then CUDA exactly when an NVIDIA GPU answers."""
    if requested not in ("auto", "cpu", "cuda"):
        raise InstallError(f"--torch must be auto, cpu or cuda, not {requested!r}")
    if requested == "cuda" and platform == "darwin":
        raise InstallError("--torch cuda: there is no CUDA build of torch for macOS; use --torch cpu (the backend "
                           "runs on the CPU there)")
    if requested != "auto":
        return requested
    return "cuda" if gpu_present and platform != "darwin" else "cpu"


def pip_commands(python: str, torch: str, platform: str, repo: Path, torch_index: str | None = None,
                 editable: bool = True, extras: Sequence[str] = ()) -> tuple[list[list[str]], list[str]]:
    """The pip command lines that install the backend into a venv, and notes for the user.

    torch: "cpu" or "cuda" (the full backend), or "none" (a client-only venv for --remote: pyzmq and
    the project without its heavy dependencies, enough for `draggan-backend keys`).

    Decision (documented in README): torch is pinned to TORCH_VERSION and installed first, from
    `torch_index` when given (for torch only), else from pip's configured index (PyPI by default: the
    CUDA build on Linux, the CPU build on Windows and macOS; the backend uses CUDA or the CPU, never
    Apple's MPS). `torch_index_for`
    picks the index: the user's --torch-index / $DRAGGAN_TORCH_INDEX, else PyTorch's CPU index for a
    CPU build on Linux when it answers. The project comes second, so pip keeps that torch (it
    satisfies torch>=2.1).
    """
    target = f"{repo}[{','.join(extras)}]" if extras else str(repo)
    project = ["-e", target] if editable else [target]
    if torch == "none":
        return ([[python, "-m", "pip", "install", PYZMQ_REQUIREMENT],
                 [python, "-m", "pip", "install", "--no-deps", *project]], [])
    torch_cmd = [python, "-m", "pip", "install", f"torch=={TORCH_VERSION}"]
    if torch_index:
        torch_cmd += ["--index-url", torch_index]
    notes = []
    if not torch_index:
        os_name = "win32" if platform.startswith("win") else ("darwin" if platform == "darwin" else "linux")
        note = TORCH_NOTES.get(f"{os_name}-{torch}")
        if note:
            notes.append(note)
    return [torch_cmd, [python, "-m", "pip", "install", *project]], notes


def venv_python(venv: Path, platform: str = sys.platform) -> Path:
    return venv / ("Scripts/python.exe" if platform.startswith("win") else "bin/python")


def venv_script(venv: Path, name: str, platform: str = sys.platform) -> Path:
    return venv / ("Scripts" if platform.startswith("win") else "bin") / (name + (".exe" if platform.startswith("win")
                                                                                  else ""))


def install_stamp(repo: Path, torch: str, torch_index: str | None, editable: bool, extras: Sequence[str],
                  system_site_packages: bool) -> dict[str, Any]:
    """What a finished install depends on: a later run with the same stamp has nothing to do."""
    pyproject = (repo / "pyproject.toml").read_bytes() if (repo / "pyproject.toml").is_file() else b""
    return {"pyproject_sha256": hashlib.sha256(pyproject).hexdigest(), "torch": torch,
            "torch_version": TORCH_VERSION, "torch_index": torch_index or "", "editable": editable,
            "extras": sorted(extras), "system_site_packages": system_site_packages, "repo": str(repo)}


def read_stamp(venv: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((venv / VENV_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_stamp(venv: Path, stamp: Mapping[str, Any], staged: Sequence[Path] = ()) -> None:
    old = read_stamp(venv) or {}
    dirs = sorted({*map(str, old.get("staged_into", [])), *map(str, staged)})
    (venv / VENV_STAMP).write_text(json.dumps({**stamp, "staged_into": dirs}, indent=1) + "\n", encoding="utf-8")


def stamp_matches(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when an earlier install (`old`) already provides what `new` asks for. A full install
    (torch cpu/cuda) also provides the client-only one (torch "none")."""
    if old is None:
        return False
    if new.get("torch") == "none" and old.get("torch") in ("cpu", "cuda"):
        new = {**new, "torch": old["torch"], "torch_index": old.get("torch_index"),
               "system_site_packages": old.get("system_site_packages")}
    return all(old.get(k) == v for k, v in new.items())


def health_code(torch: str) -> str:
    """Python code that exits 1 (printing what is missing) unless the venv has the modules it needs."""
    modules = ("zmq", "backend") if torch == "none" else ("torch", "numpy", "PIL", "zmq", "backend")
    return (f"import importlib.util as u, sys; missing = [m for m in {modules!r} if u.find_spec(m) is None]; "
            "print('missing: ' + ' '.join(missing) if missing else 'ok'); sys.exit(1 if missing else 0)")


def ensure_backend_venv(venv: Path, repo: Path, torch: str, torch_index: str | None, editable: bool,
                        extras: Sequence[str], system_site_packages: bool, out: Callable[[str], None],
                        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
                        platform: str = sys.platform, base_python: str = sys.executable,
                        probe: Callable[[str], str | None] = probe_index) -> bool:
    """Create/update the venv; returns False when it was already installed (nothing run but a check).

    The stamp records the index the user asked for (`torch_index`, None = the default choice), so a
    later run with the same request does not probe the network again."""
    py = venv_python(venv, platform)
    stamp = install_stamp(repo, torch, torch_index, editable, extras, system_site_packages)
    what = "client tools (no torch)" if torch == "none" else f"torch {TORCH_VERSION} {torch}"
    # -I: the check must not find `backend` in the current folder instead of the venv.
    check = [str(py), "-I", "-c", health_code(torch)]
    if py.is_file() and stamp_matches(read_stamp(venv), stamp):
        health = run(check, capture_output=True, text=True, timeout=120)
        if health.returncode == 0:
            out(f"backend already installed in {venv} ({what}); nothing to do")
            return False
        out(f"backend venv {venv} is incomplete ({(health.stdout or health.stderr).strip()}); repairing it")
    if not py.is_file():
        cmd = [base_python, "-m", "venv"] + (["--system-site-packages"] if system_site_packages else []) + [str(venv)]
        out(f"creating the backend's virtual environment: {' '.join(cmd)}")
        r = run(cmd)
        if r.returncode != 0 or not py.is_file():
            raise InstallError(f"could not create the venv {venv} (exit {r.returncode}). On Debian/Ubuntu install "
                               "the venv module first: sudo apt install python3-venv")
    index, index_notes = torch_index_for(torch, platform, torch_index, probe) if torch != "none" else (None, [])
    for note in index_notes:
        out(f"note: {note}")
    commands, notes = pip_commands(str(py), torch, platform, repo, index, editable, extras)
    if index_notes:
        notes = []   # the index choice was explained above: the generic hint would repeat it
    for note in notes:
        out(f"note: {note}")
    for cmd in commands:
        out("running: " + " ".join(cmd))
        r = run(cmd)
        if r.returncode != 0:
            raise InstallError(f"`{' '.join(cmd)}` failed (exit {r.returncode}); see pip's message above. Behind a "
                               "proxy set HTTPS_PROXY; for another torch build use --torch-index URL")
    health = run(check, capture_output=True, text=True, timeout=120)
    if health.returncode != 0:
        raise InstallError(f"the venv {venv} still lacks modules after pip: {(health.stdout or health.stderr).strip()}")
    old = read_stamp(venv)
    write_stamp(venv, old if old is not None and stamp_matches(old, stamp) else stamp)
    out(f"backend installed in {venv} ({what})")
    return True


# --------------------------------------------------------------------------------------------
# Optional: face landmarks for face alignment (docs/alignment.md)
# --------------------------------------------------------------------------------------------

# The MTCNN weights alignment/landmarks.py loads ship inside facenet-pytorch's wheel (MIT). The package
# pins torch < 2.3 and would replace our torch, so it is installed without its dependencies; our
# code never imports it, it only reads its three weight files.
LANDMARKS_PACKAGE = "facenet-pytorch==2.6.0"
LANDMARKS_CHECK = ("import importlib.util as u, sys; "
                   "sys.exit(0 if u.find_spec('facenet_pytorch') is not None else 1)")


def ensure_face_landmarks(py: Path, out: Callable[[str], None],
                          run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> bool | None:
    """Install the MTCNN weights into the backend's venv unless they are there. Never fails the
    install: without them face models edit unaligned (the backend says so in its progress text).
    Returns None (already there), True (installed) or False (could not)."""
    if run([str(py), "-I", "-c", LANDMARKS_CHECK], capture_output=True, text=True, timeout=120).returncode == 0:
        return None
    cmd = [str(py), "-m", "pip", "install", "--no-deps", LANDMARKS_PACKAGE]
    out("face alignment (optional): running: " + " ".join(cmd))
    r = run(cmd)
    if r.returncode != 0:
        out(f"note: the optional face-landmark weights could not be installed (exit {r.returncode}); the "
            "install goes on. Without them face models such as ffhq-512 edit without face alignment (the "
            "progress text says 'face alignment unavailable'); other models are not affected. Retry later "
            "with: " + " ".join(cmd))
        return False
    out("face alignment: MTCNN landmark weights installed (facenet-pytorch, MIT licence, without its "
        "dependencies)")
    return True


# --------------------------------------------------------------------------------------------
# Plug-in menu location (for the next-steps text), read from the plug-in's options table
# --------------------------------------------------------------------------------------------

def plugin_menu_text(repo: Path = REPO) -> str:
    """'Filters > Generic > DragGAN (Drag Points)...' from draggan_core/options.py (no import)."""
    try:
        text = (repo / "gimp_plugin" / PLUGIN_NAME / "draggan_core" / "options.py").read_text(encoding="utf-8")
        path = re.search(r'^MENU_PATH\s*=\s*"([^"]+)"', text, re.M)
        label = re.search(r'^MENU_LABEL\s*=\s*"([^"]+)"', text, re.M)
    except OSError:
        path = label = None
    if not path or not label:
        return "the Filters menu (DragGAN)"
    parts = path.group(1).removeprefix("<Image>/").split("/") + [label.group(1).replace("_", "")]
    return " > ".join(parts)


# --------------------------------------------------------------------------------------------
# Remote backend: the client's CURVE keys (made by `draggan-backend keys`) and the plug-in config
# --------------------------------------------------------------------------------------------

DEFAULT_PORT = 5555


def backend_address(remote: str) -> str:
    """'host', 'host:port', '[v6]:port' or a full tcp:// endpoint -> 'tcp://host:port'."""
    remote = remote.strip()
    if not remote:
        raise InstallError("--remote needs a host name or address")
    if "://" in remote:
        return remote
    m = re.match(r"^\[([0-9a-fA-F:.]+)\](?::(\d+))?$", remote) or re.match(r"^([^:\s/]+)(?::(\d+))?$", remote)
    if not m:
        raise InstallError(f"--remote {remote!r}: expected HOST or HOST:PORT (IPv6 as [ADDR]:PORT)")
    host = f"[{m.group(1)}]" if ":" in m.group(1) else m.group(1)
    port = int(m.group(2) or DEFAULT_PORT)
    if not 0 < port < 65536:
        raise InstallError(f"--remote {remote!r}: port {port} is out of range")
    return f"tcp://{host}:{port}"


def read_cert_key(path: Path, field_name: str) -> str:
    """A Z85 key ("public-key" or "secret-key") from a ZeroMQ certificate file (stdlib parser)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InstallError(f"cannot read key file {path}: {exc.strerror}") from None
    m = re.search(rf'^\s*{field_name}\s*=\s*"([^"]{{40}})"\s*$', text, re.M)
    if not m:
        raise InstallError(f"{path} is not a ZeroMQ key file with a {field_name} (expected a file made by "
                           "`draggan-backend keys`)")
    return m.group(1)


def plugin_config(address: str, keys_dir: Path) -> dict[str, Any]:
    """The plug-in's draggan.json for a remote backend: the address and the CURVE keys inline (the
    server's public key, this machine's client pair), so GIMP's Python needs no key files (a
    Flatpak GIMP may not see ~/.config). The file is written with mode 0600: it holds a secret."""
    return {"address": address,
            "server_public_key": read_cert_key(keys_dir / "server.key", "public-key"),
            "client_public_key": read_cert_key(keys_dir / "client.key_secret", "public-key"),
            "client_secret_key": read_cert_key(keys_dir / "client.key_secret", "secret-key"),
            "keys_dir": str(keys_dir)}


def write_plugin_config(plugin_target: Path, config: Mapping[str, Any]) -> Path:
    path = plugin_target / CONFIG_FILE
    fd, tmp = tempfile.mkstemp(prefix=".draggan-", suffix=".json", dir=plugin_target)
    with os.fdopen(fd, "w", encoding="utf-8") as f:      # mkstemp makes it 0600
        json.dump(dict(config), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


LOCAL_ADDRESS = f"tcp://127.0.0.1:{DEFAULT_PORT}"


def venv_keys_dir(py: Path, ctx: Context) -> Path:
    """The per-user keys folder as the venv's backend sees it (backend.keys.default_keys_dir)."""
    r = ctx.run([str(py), "-I", "-c", "from backend.keys import default_keys_dir; print(default_keys_dir())"],
                capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not r.stdout.strip():
        raise InstallError(f"could not ask the venv for the keys folder: {(r.stderr or r.stdout).strip()[-400:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def configure_local(args: argparse.Namespace, ctx: Context, staged: Sequence[Path],
                    out: Callable[[str], None]) -> None:
    """This user's CURVE keys for the backend on this machine (`draggan-backend keys init`: a server
    pair and a client pair on its allow-list, secret files 0600; kept when they exist), and
    draggan.json with them in every staged plug-in whose draggan.json is not for another backend.
    The backend uses CURVE on loopback too, so only this OS user's processes get in; the plug-in
    also finds the keys in the keys folder, draggan.json is for a GIMP that cannot see it
    (Flatpak). A failure is a warning: `draggan-backend serve` makes the keys on first start."""
    py = venv_python(args.venv, ctx.platform)
    try:
        keys_dir = venv_keys_dir(py, ctx)
    except InstallError as exc:
        out(f"warning: no CURVE keys made ({exc}); `draggan-backend serve` makes them when it first starts")
        return
    r = ctx.run([str(py), "-I", "-m", "backend.cli", "keys", "--keys-dir", str(keys_dir), "init"],
                capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        out(f"warning: `draggan-backend keys init` failed ({(r.stderr or r.stdout).strip()[-300:]}); "
            "`draggan-backend serve` makes the keys when it first starts")
        return
    out(f"CURVE keys for this machine's backend in {keys_dir} (only this user can read the secret ones)")
    config = plugin_config(LOCAL_ADDRESS, keys_dir)
    for plugins_dir in staged:
        target = plugins_dir / PLUGIN_NAME
        try:
            existing = json.loads((target / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = {}
        other = existing.get("address") if isinstance(existing, dict) else None
        if isinstance(other, str) and other.strip().lower().replace("://localhost:", "://127.0.0.1:") != LOCAL_ADDRESS:
            out(f"kept {target / CONFIG_FILE} (it is for the backend at {other}; install.py --remote wrote it)")
            continue
        out(f"wrote {write_plugin_config(target, config)} (backend {LOCAL_ADDRESS}, CURVE keys; mode 0600)")


def configure_remote(args: argparse.Namespace, ctx: Context, staged: Sequence[Path],
                     out: Callable[[str], None]) -> None:
    """Make this machine's client keys with `draggan-backend keys init --client-only` (the one key
    generator, run through the venv), pin the server's public key, and write draggan.json into
    every staged plug-in."""
    address = backend_address(args.remote)
    py = venv_python(args.venv, ctx.platform)
    if not py.is_file():
        raise InstallError(f"--remote needs the venv {args.venv} for `draggan-backend keys`; run install.py "
                           "without --plugin-only")
    keys_dir = venv_keys_dir(py, ctx)
    cmd = [str(venv_script(args.venv, "draggan-backend", ctx.platform)), "keys", "--keys-dir", str(keys_dir),
           "init", "--client-only"]
    out("running: " + " ".join(cmd))
    if ctx.run(cmd).returncode != 0:
        raise InstallError("`draggan-backend keys init --client-only` failed (see above)")
    server_key = Path(args.server_key).expanduser() if args.server_key else keys_dir / "server.key"
    if not server_key.is_file():
        raise InstallError(
            f"the server's public key is needed: on the GPU machine run `draggan-backend keys init` (once), copy its "
            f"server.key here and run install.py again with --remote {args.remote} --server-key PATH. Meanwhile give "
            f"{keys_dir / 'client.key'} to the server's owner: `draggan-backend keys allow client.key --name NAME`")
    read_cert_key(server_key, "public-key")             # a clear error for a wrong file, before copying
    if server_key.resolve() != (keys_dir / "server.key").resolve():
        shutil.copyfile(server_key, keys_dir / "server.key")
        out(f"pinned the server's public key: {keys_dir / 'server.key'}")
    config = plugin_config(address, keys_dir)
    if not staged:
        out("warning: no plug-in was staged, so no draggan.json was written (pass --gimp-dir)")
    for plugins_dir in staged:
        out(f"wrote {write_plugin_config(plugins_dir / PLUGIN_NAME, config)} (backend {address}, CURVE keys; "
            "mode 0600)")
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", platform_node()) or "laptop"
    out(f"on the GPU machine, allow this client: copy {keys_dir / 'client.key'} there and run "
        f"`draggan-backend keys allow client.key --name {name}`, then serve the network with "
        f"`draggan-backend serve --bind tcp://0.0.0.0:{address.rsplit(':', 1)[-1]}`")


def platform_node() -> str:
    import platform

    return platform.node()


# --------------------------------------------------------------------------------------------
# Models (backend/models.py, run through the venv's Python: it is stdlib-only, so before the
# venv exists the installer's own Python runs it from the repository)
# --------------------------------------------------------------------------------------------

def models_command(python: str, *args: str) -> list[str]:
    return [python, "-m", "backend.models", *args]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="install.py",
        description="Install the DragGAN backend (a Python venv with torch) and the GIMP 3 plug-in. "
                    "Run it again at any time: finished steps are skipped.")
    g = p.add_argument_group("what to do")
    g.add_argument("--run", action="store_true",
                   help="after installing, start the backend on the embedded default model (Ctrl+C stops it)")
    g.add_argument("--plugin-only", action="store_true",
                   help="only stage the plug-in into the GIMP plug-ins folder(s): no venv, no network "
                        "(pyzmq is checked only with --gimp-python)")
    g.add_argument("--uninstall", action="store_true",
                   help="remove the staged plug-in(s) and the venv (downloaded models and keys are kept)")
    g.add_argument("--list-models", action="store_true", help="list the models and whether they are installed")
    g.add_argument("--model", action="append", metavar="NAME", default=[],
                   help="download a model (licence printed first; repeatable), e.g. --model ffhq-512")
    g.add_argument("--model-file", nargs=2, action="append", metavar=("PATH", "NAME"), default=[],
                   help="register a model file you downloaded yourself under NAME (e.g. human-512)")
    g.add_argument("--remote", metavar="HOST[:PORT]",
                   help="point the plug-in at a backend on another machine (CURVE keys; see README)")
    g.add_argument("--server-key", metavar="FILE",
                   help="with --remote: the server's public key file (server.key) copied from the GPU machine")
    b = p.add_argument_group("backend venv")
    b.add_argument("--venv", type=Path, default=REPO / ".venv", metavar="PATH",
                   help="where the backend's virtual environment goes (default: .venv in the repository)")
    b.add_argument("--torch", default="auto", choices=["auto", "cpu", "cuda"],
                   help="torch build: auto = CUDA when nvidia-smi finds a GPU, else CPU")
    b.add_argument("--torch-index", metavar="URL", default=os.environ.get(TORCH_INDEX_ENV) or None,
                   help=f"package index for torch only, e.g. https://download.pytorch.org/whl/cu124 (default: "
                        f"{TORCH_CPU_INDEX} for a CPU build on Linux when it answers within seconds, else "
                        f"pip's configured index; ${TORCH_INDEX_ENV} sets it too)")
    b.add_argument("--no-editable", action="store_true",
                   help="install a copy of the project instead of an editable install of this clone")
    b.add_argument("--system-site-packages", action="store_true",
                   help="let the venv see the system's packages (reuses an installed torch)")
    q = p.add_argument_group("GIMP")
    q.add_argument("--gimp-dir", type=Path, action="append", metavar="DIR",
                   help="GIMP plug-ins folder to stage into (repeatable); default: every GIMP 3 profile")
    q.add_argument("--gimp-python", metavar="COMMAND",
                   help="GIMP's Python (a path, or a command such as 'flatpak run --command=python3 "
                        "org.gimp.GIMP'), when install.py cannot find it")
    q.add_argument("--skip-pyzmq", action="store_true", help="do not check or vendor pyzmq for GIMP's Python")
    q.add_argument("--dev", action="store_true",
                   help="developer mode: link the plug-in sources instead of copying, and install the test tools")
    return p


@dataclass
class Context:
    """The machine install.py runs on; tests replace every part."""

    platform: str = sys.platform
    home: Path = field(default_factory=Path.home)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    root: Path = Path("/")
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
    which: Callable[[str], str | None] = shutil.which
    repo: Path = REPO
    base_python: str = sys.executable
    probe_index: Callable[[str], str | None] = probe_index


def target_plugin_dirs(args: argparse.Namespace, ctx: Context) -> list[GimpProfile]:
    if args.gimp_dir:
        return [GimpProfile(profile_kind_of(d, ctx.home), "", Path(d).expanduser()) for d in args.gimp_dir]
    return find_gimp_profiles(ctx.platform, ctx.home, ctx.env)


def _python_for_models(args: argparse.Namespace, ctx: Context) -> str:
    py = venv_python(args.venv, ctx.platform)
    return str(py) if py.is_file() else ctx.base_python


def do_uninstall(args: argparse.Namespace, ctx: Context, out: Callable[[str], None]) -> int:
    stamp = read_stamp(args.venv) or {}
    dirs = {Path(p.plugins_dir) for p in target_plugin_dirs(args, ctx)}
    if not args.gimp_dir:
        dirs |= {Path(d) for d in stamp.get("staged_into", [])}
    for d in sorted(dirs):
        line = unstage_plugin(d)
        if line:
            out(line)
    if venv_python(args.venv, ctx.platform).is_file() or args.venv.exists():
        if stamp:
            shutil.rmtree(args.venv)
            out(f"removed the backend venv {args.venv}")
        else:
            out(f"left {args.venv} alone: it was not made by install.py (no {VENV_STAMP})")
    models_hint = "python -m backend.models list" if not stamp else ""
    out("kept downloaded models (see `python install.py --list-models`; delete the models folder to free "
        "the space) and keys in the DragGAN config folder" + (f"; {models_hint}" if models_hint else ""))
    return 0


def main(argv: Iterable[str] | None = None, out: Callable[[str], None] = say, ctx: Context | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    ctx = ctx or Context()
    args.venv = Path(args.venv).expanduser().absolute()
    if sys.version_info < (3, 10):  # noqa: UP036 (users run this file with whatever python they have)
        out("error: Python 3.10 or newer is needed to install the backend")
        return 1
    try:
        if args.uninstall:
            return do_uninstall(args, ctx, out)
        if args.remote and args.run:
            raise InstallError("--run starts a backend on this machine; with --remote the backend runs elsewhere")
        if args.plugin_only and (args.run or args.remote):
            raise InstallError("--plugin-only installs no backend venv, which --run and --remote need")
        only_listing = args.list_models and not (args.model or args.model_file or args.run or args.remote
                                                 or args.plugin_only or args.gimp_dir)
        if only_listing:
            return ctx.run(models_command(_python_for_models(args, ctx), "list"), cwd=str(ctx.repo)).returncode

        # 1. The backend's venv (torch for this machine, then the project).
        if not args.plugin_only:
            if args.remote and args.torch == "auto":
                torch = "none"      # a laptop that uses a remote GPU needs no torch: keys only
            else:
                torch = choose_torch(args.torch, args.torch == "auto" and nvidia_gpu_present(ctx.which, ctx.run),
                                     ctx.platform)
            extras = ("test",) if args.dev else ()
            ensure_backend_venv(args.venv, ctx.repo, torch, args.torch_index, not args.no_editable, extras,
                                args.system_site_packages, out, ctx.run, ctx.platform, ctx.base_python,
                                ctx.probe_index)
            if torch != "none":   # face alignment runs where the models run (a client-only venv has none)
                ensure_face_landmarks(venv_python(args.venv, ctx.platform), out, ctx.run)

        # 2. The plug-in, into every GIMP 3 profile (or the folders given).
        profiles = target_plugin_dirs(args, ctx)
        if not profiles:
            message = ("no GIMP 3 profile found: start GIMP 3 once (it creates its profile), then run install.py "
                       "again, or pass --gimp-dir with the folder from GIMP's Preferences > Folders > Plug-ins")
            if args.plugin_only:
                raise InstallError(message)
            out("warning: " + message)
        staged: list[Path] = []
        for profile in profiles:
            report = stage_plugin(profile.plugins_dir, ctx.repo, link=args.dev)
            lines = report.lines()
            if profile.version:
                lines[0] += f"  [GIMP {profile.version}, {profile.kind}]"
            for line in lines:
                out(line)
            staged.append(profile.plugins_dir)
            relay_python = None
            if not args.plugin_only:
                relay_python = write_relay_record(report.target, venv_python(args.venv, ctx.platform))

            # 3. pyzmq for the Python this GIMP runs plug-ins with.
            if args.skip_pyzmq or (args.plugin_only and not args.gimp_python):
                continue
            gimp_python = (GimpPython(gimp_python_command(args.gimp_python, ctx.platform), "--gimp-python")
                           if args.gimp_python
                           else find_gimp_python(profile.kind, ctx.platform, ctx.home, ctx.env, ctx.root, ctx.which))
            action, message = ensure_pyzmq(report.target, gimp_python, _python_for_models(args, ctx), ctx.run)
            out(f"pyzmq: {message}")
            if action in ("failed", "impossible") and relay_python:
                out(f"pyzmq: the plug-in will relay through the backend venv's Python instead ({relay_python} "
                    f"runs a small bridge; recorded in {report.target / RELAY_FILE})")
            elif action in ("failed", "impossible"):
                out("warning: the plug-in will say that pyzmq is missing until this is fixed (see README, "
                    "Troubleshooting)")
        if staged and read_stamp(args.venv) is not None:
            write_stamp(args.venv, read_stamp(args.venv) or {}, staged)

        # 4. Keys and the plug-in's config: for a remote backend, or for this machine's.
        if args.remote:
            configure_remote(args, ctx, staged, out)
        elif not args.plugin_only:
            configure_local(args, ctx, staged, out)

        # 5. Models.
        py = _python_for_models(args, ctx)
        for path, name in args.model_file:
            if ctx.run(models_command(py, "add", str(Path(path).expanduser().absolute()), name),
                       cwd=str(ctx.repo)).returncode != 0:
                raise InstallError(f"registering {path} as {name} failed (see above)")
        for name in args.model:
            if ctx.run(models_command(py, "download", name), cwd=str(ctx.repo)).returncode != 0:
                raise InstallError(f"downloading model {name} failed: see the message above (an interrupted "
                                   "download resumes when you run the same command again)")
        if args.list_models:
            ctx.run(models_command(py, "list"), cwd=str(ctx.repo))

        # 6. What next.
        if args.plugin_only:
            return 0
        serve = venv_script(args.venv, "draggan-backend", ctx.platform)
        if args.run:
            cmd = [str(serve), "serve"]
            out(f"starting the backend on the default model: {' '.join(cmd)}  (Ctrl+C stops it)")
            out(f"in GIMP: {plugin_menu_text(ctx.repo)}")
            try:
                return ctx.run(cmd).returncode
            except KeyboardInterrupt:
                return 0
        out("done. Next:")
        out(f"  start the backend:  {serve} serve      (or: python install.py --run)")
        out(f"  in GIMP (restart it first): {plugin_menu_text(ctx.repo)}")
        return 0
    except InstallError as exc:
        out(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
