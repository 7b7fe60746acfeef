"""Every command the documentation tells a person to type is one the programs accept as written.

The commands are read out of README.md, the plug-in guide and docs/*.md (code blocks and inline code):
``install.py`` lines are parsed by install.py's own parser, ``draggan-backend`` lines (any prefix:
``.venv/bin/``, ``python -m backend.cli``) by the backend's CLI parser, and ``python benchmarks/X.py``
lines by that benchmark's ``build_parser()`` where it has one (the others parse inside ``main()``).
A parser error is what a person would get when they copy the line (an option after the wrong action,
an option that does not exist, a choice misspelt).
``draggan-backend status`` and ``keys`` run for real on a scratch keys folder.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "gimp_plugin" / "README.md", *sorted((REPO / "docs").glob("*.md")),
        REPO / "inversion" / "README.md", REPO / "training" / "README.md", REPO / "backend" / "data" / "faces-128.md"]

_BLOCK = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every line that starts one of our programs, continuation lines joined."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        candidates = []
        for block in _BLOCK.findall(text):
            candidates += block.replace("\\\n", " ").splitlines()
        candidates += _INLINE.findall(text.replace("\\\n", " "))
        for line in candidates:
            line = line.split(" #")[0].strip().removeprefix("$ ").strip()
            if re.match(r"(python3? install\.py|(\S*/)?draggan-backend |python3? -m backend\.cli |"
                        r"python3? benchmarks/\w+\.py)", line):
                found.append((path.relative_to(REPO).as_posix(), line))
    return sorted(set(found))


def _argv(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    if words[0].startswith("python"):
        if words[1] == "-m":
            return "backend", words[3:]
        return words[1], words[2:]
    return "backend", words[1:]


def _load(path: Path, name: str):
    """The script at ``path`` as a module (registered while it runs: dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # after the repository: benchmarks/inversion.py must not stand in for the inversion package
    sys.path.append(str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
        sys.modules.pop(name, None)
    return module


def _parser(program: str):
    if program == "backend":
        from backend import cli

        return cli.build_parser()
    module = _load(REPO / program, "doc_checked_" + Path(program).stem)
    return module.build_parser() if hasattr(module, "build_parser") else None


def _checkable(command: str) -> bool:
    """Our CLIs, and the benchmarks that expose their parser (the others build it inside main())."""
    program = _argv(command)[0]
    return program in ("backend", "install.py") or "def build_parser" in (REPO / program).read_text()


COMMANDS = [(f, c) for f, c in documented_commands() if _checkable(c)]


def test_the_docs_name_the_commands_a_person_needs() -> None:
    programs = {_argv(c)[0] for _f, c in COMMANDS}
    assert {"backend", "install.py"} <= programs
    texts = " ".join(c for _f, c in COMMANDS)
    for needed in ("install.py --run", "serve", "keys", "status", "--uninstall"):
        assert needed in texts, f"no documented command uses {needed!r}"


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{f}: {c}" for f, c in COMMANDS])
def test_a_documented_command_is_accepted_as_written(where: str, command: str) -> None:
    program, argv = _argv(command)
    parser = _parser(program)
    argv = [a for a in argv if a not in ("|", "&&")]
    try:
        parser.parse_args([a if not re.fullmatch(r"[A-Z_]+", a) else "X" for a in argv])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{command}` is refused by its parser (exit {exc.code})")


def test_keys_and_status_run_as_documented(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    run = [sys.executable, "-m", "backend.cli"]
    made = subprocess.run([*run, "keys", "init", "--keys-dir", str(keys)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert made.returncode == 0, made.stderr
    assert (keys / "server.key").is_file()
    shown = subprocess.run([*run, "keys", "list", "--keys-dir", str(keys)], capture_output=True, text=True,
                           cwd=REPO, timeout=60)
    assert shown.returncode == 0 and "server" in shown.stdout.lower(), shown.stdout + shown.stderr
    # status against an address where nothing listens: a clear answer and a non-zero exit, no traceback
    down = subprocess.run([*run, "status", "--address", "tcp://127.0.0.1:9", "--timeout", "1"], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert down.returncode != 0 and "Traceback" not in down.stderr
