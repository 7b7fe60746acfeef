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
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent
PLUGIN_NAME = "draggan"                      # GIMP loads PLUG-IN-DIR/draggan/draggan.py
PLUGIN_SOURCE = REPO / "gimp_plugin" / PLUGIN_NAME
WIRE_PACKAGE = "draggan_wire"                # backend/protocol.py + backend/client.py, staged
WIRE_FILES = ("protocol.py", "client.py")
VENDOR_DIR = "vendor"                        # pyzmq unpacked here when GIMP's Python lacks it
CONFIG_FILE = "draggan.json"                 # the plug-in's config (written by --remote)
STAGE_MANIFEST = ".draggan-install.json"     # marks a folder as ours (uninstall removes only those)
# Kept across a re-staging: they are not copied from the repo but made on this machine.
PRESERVED_ON_RESTAGE = (VENDOR_DIR, CONFIG_FILE)
SKIPPED_NAMES = ("__pycache__", ".pytest_cache", ".mypy_cache")
SKIPPED_SUFFIXES = (".pyc", ".pyo")

WIRE_INIT_TEXT = '''"""The DragGAN wire protocol and client, staged here by install.py from the backend.

protocol.py and client.py are copies (or, after `install.py --dev`, links) of backend/protocol.py
and backend/client.py. Do not edit them here: re-run install.py instead.
"""

import os as _os
import sys as _sys

# When GIMP's own Python has no pyzmq, install.py unpacks a matching wheel into ../vendor/.
# Appended (not prepended) so that a pyzmq that GIMP's Python already has always wins.
_VENDOR = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "vendor")
if _os.path.isdir(_VENDOR) and _VENDOR not in _sys.path:
    _sys.path.append(_VENDOR)

__all__ = ["protocol", "client"]
'''


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
    draggan/draggan_wire/{__init__.py (generated), protocol.py, client.py}.
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
    wire_sources = [repo / "backend" / name for name in WIRE_FILES]
    for path in wire_sources:
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
        wire.mkdir()
        (wire / "__init__.py").write_text(WIRE_INIT_TEXT, encoding="utf-8")
        for src in wire_sources:
            if link:
                (wire / src.name).symlink_to(src.resolve())
            else:
                shutil.copy2(src, wire / src.name)
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
# Command line
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="install.py",
        description="Install the DragGAN backend (a Python venv with torch) and the GIMP 3 plug-in.")
    p.add_argument("--plugin-only", action="store_true",
                   help="only stage the plug-in into the GIMP plug-ins folder(s); no venv, no network")
    p.add_argument("--gimp-dir", type=Path, action="append", metavar="DIR",
                   help="GIMP plug-ins folder to stage into (repeatable); default: every GIMP 3 profile")
    p.add_argument("--dev", action="store_true",
                   help="developer mode: link the plug-in sources instead of copying them")
    p.add_argument("--uninstall", action="store_true", help="remove what install.py installed")
    return p


def main(argv: Iterable[str] | None = None,
         out: Callable[[str], None] = say) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        dirs: list[Path] = list(args.gimp_dir or [])
        if not dirs:
            raise InstallError("no GIMP plug-ins folder given: pass --gimp-dir DIR")
        if args.uninstall:
            for d in dirs:
                out(unstage_plugin(d) or f"nothing to remove in {d}")
            return 0
        for d in dirs:
            for line in stage_plugin(d, REPO, link=args.dev).lines():
                out(line)
        return 0
    except InstallError as exc:
        out(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
