"""The shipped packages depend on each other one way.

Every ``.py`` file of the shipped packages is parsed with ``ast`` (nothing is imported), and its
imports are collected: ``import x``, ``from x import y``, relative imports resolved against the
file's package, and the string argument of ``importlib.import_module(...)`` / ``__import__(...)``.

Data flows plug-in -> draggan_wire -> backend -> alignment / inversion -> stylegan2 (draggan_util, a
few standard-library helpers, sits under the engine packages), so:

- nothing shipped imports ``training``, ``tests``, ``benchmarks``, ``scripts`` or the test-support
  package ``testkit`` (a user's install has none of them);
- the package-level graph among the shipped packages has no cycle, and each package imports only
  the packages listed for it in ALLOWED (stylegan2 and draggan_wire import none of ours; the
  plug-in imports only draggan_wire);
- the plug-in reaches the wire protocol through a plain ``draggan_wire`` import, which ruff and mypy
  see (not through importlib or a path trick).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package name -> its folder; the plug-in's folder holds draggan.py and draggan_core/, which it
# imports as top-level names (GIMP puts the folder on sys.path).
SHIPPED: dict[str, Path] = {
    "backend": REPO / "backend",
    "alignment": REPO / "alignment",
    "draggan_wire": REPO / "draggan_wire",
    "inversion": REPO / "inversion",
    "stylegan2": REPO / "stylegan2",
    "draggan_util": REPO / "draggan_util",
    "gimp_plugin": REPO / "gimp_plugin" / "draggan",
}
PLUGIN_OWN_NAMES = {"draggan", "draggan_core"}

NOT_SHIPPED = {"training", "tests", "benchmarks", "scripts", "testkit"}

ALLOWED: dict[str, set[str]] = {
    "gimp_plugin": {"draggan_wire"},
    "draggan_wire": set(),
    "backend": {"draggan_wire", "alignment", "inversion", "stylegan2", "draggan_util"},
    "alignment": {"stylegan2", "draggan_util"},
    "inversion": {"stylegan2", "draggan_util"},
    "stylegan2": set(),
    "draggan_util": set(),   # standard-library helpers (the file hash) under everything but the wire
}


def python_files(package: str) -> list[Path]:
    return sorted(p for p in SHIPPED[package].rglob("*.py") if "__pycache__" not in p.parts)


def module_parts(package: str, path: Path) -> list[str]:
    """The dotted name of ``path`` as its package imports it, split."""
    relative = path.relative_to(SHIPPED[package]).with_suffix("")
    parts = list(relative.parts)
    if package != "gimp_plugin":
        parts.insert(0, package)
    return parts


def imported_names(package: str, path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, dotted module name, how) for each import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parts = module_parts(package, path)
    # the package a relative import starts from: the module's own package (``pkg/__init__`` -> pkg)
    base = parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, "import"
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module or "", "from"
            else:
                anchor = base[: len(base) - (node.level - 1)]
                name = ".".join([*anchor, *([node.module] if node.module else [])])
                yield node.lineno, name, "relative"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = (
                func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            )
            first = node.args[0]
            if called in ("import_module", "__import__"):
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    yield node.lineno, first.value, called
                else:
                    yield node.lineno, "<dynamic>", called


def top_package(package: str, name: str) -> str:
    head = name.split(".")[0]
    if package == "gimp_plugin" and head in PLUGIN_OWN_NAMES:
        return "gimp_plugin"
    return head


def package_graph() -> dict[str, dict[str, list[str]]]:
    """package -> {imported top-level name -> ['file:line', ...]}."""
    graph: dict[str, dict[str, list[str]]] = {}
    for package in SHIPPED:
        edges: dict[str, list[str]] = {}
        for path in python_files(package):
            for line, name, _how in imported_names(package, path):
                edges.setdefault(top_package(package, name), []).append(f"{path.relative_to(REPO)}:{line}")
        graph[package] = edges
    return graph


def test_every_shipped_package_exists_and_has_python_files() -> None:
    missing = [name for name in SHIPPED if not python_files(name)]
    assert missing == [], f"shipped packages without .py files: {missing}"


def test_nothing_shipped_imports_training_tests_benchmarks_or_scripts() -> None:
    offenders = [
        f"{where} imports {name}"
        for package, edges in package_graph().items()
        for name, places in edges.items()
        if name in NOT_SHIPPED
        for where in places
    ]
    assert offenders == [], "\n".join(offenders)


def test_no_dynamic_import_hides_a_module_name() -> None:
    offenders = [
        f"{where}"
        for edges in package_graph().values()
        for where in edges.get("<dynamic>", [])
    ]
    assert offenders == [], "import_module/__import__ with a computed name:\n" + "\n".join(offenders)


def test_each_shipped_package_imports_only_the_packages_below_it() -> None:
    offenders = []
    for package, edges in package_graph().items():
        for name, places in edges.items():
            if name in SHIPPED and name != package and name not in ALLOWED[package]:
                offenders.extend(f"{where}: {package} imports {name}" for where in places)
    assert offenders == [], "\n".join(offenders)


def test_the_shipped_package_graph_has_no_cycle() -> None:
    graph = {
        package: {name for name in edges if name in SHIPPED and name != package}
        for package, edges in package_graph().items()
    }
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for package in sorted(graph):
        visit(package, [])


def test_the_plugin_imports_the_wire_protocol_by_its_real_name() -> None:
    link = SHIPPED["gimp_plugin"] / "draggan_core" / "link.py"
    static = [
        (name, how)
        for _line, name, how in imported_names("gimp_plugin", link)
        if name.split(".")[0] == "draggan_wire"
    ]
    assert static, "link.py does not import draggan_wire"
    assert all(how in ("import", "from") for _name, how in static), static
    # a real package in the repository, so ruff and mypy resolve it like any other
    assert (REPO / "draggan_wire" / "__init__.py").is_file()
    assert (REPO / "draggan_wire" / "protocol.py").is_file()
    mypy = re.search(r"^\[tool\.mypy\]$(.*?)^\[", (REPO / "pyproject.toml").read_text(), re.M | re.S)
    assert mypy and re.search(r"^packages = \[[^]]*\"draggan_wire\"", mypy.group(1), re.M)
    # the wire needs only the standard library and pyzmq
    for path in python_files("draggan_wire"):
        for line, name, _how in imported_names("draggan_wire", path):
            head = name.split(".")[0]
            assert head in ("draggan_wire", "zmq") or head in _stdlib(), f"{path.name}:{line} imports {name}"


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)


def test_the_collector_sees_every_kind_of_import(tmp_path: Path) -> None:
    folder = tmp_path / "backend"
    (folder / "sub").mkdir(parents=True)
    source = (
        "import importlib\n"
        "import training.faces\n"
        "from tests import canvas\n"
        "from ..alignment import x\n"
        "from . import y\n"
        "m = importlib.import_module('benchmarks.fidelity')\n"
        "n = __import__('scripts')\n"
    )
    (folder / "sub" / "mod.py").write_text(source)
    saved = SHIPPED["backend"]
    SHIPPED["backend"] = folder
    try:
        names = [name for _line, name, _how in imported_names("backend", folder / "sub" / "mod.py")]
    finally:
        SHIPPED["backend"] = saved
    assert names[:3] == ["importlib", "training.faces", "tests"]
    assert "backend.alignment" in names and "backend.sub" in names
    assert "benchmarks.fidelity" in names and "scripts" in names


def _top_level_imports(folder: Path) -> list[tuple[str, str]]:
    """(file:line, top-level name) of every absolute import under ``folder`` (relative ones stay inside)."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            out.extend((f"{path.relative_to(REPO)}:{node.lineno}", name.split(".")[0]) for name in names)
    return out


def test_benchmarks_and_tests_share_code_only_through_testkit() -> None:
    """Benchmarks import nothing from tests/, tests import nothing from benchmarks/, and testkit/ (what
    both use) imports neither."""
    offenders = [f"{where} imports tests" for where, name in _top_level_imports(REPO / "benchmarks") if name == "tests"]
    offenders += [f"{where} imports benchmarks" for where, name in _top_level_imports(REPO / "tests")
                  if name == "benchmarks"]
    offenders += [f"{where} imports {name}" for where, name in _top_level_imports(REPO / "testkit")
                  if name in ("tests", "benchmarks")]
    assert offenders == [], "\n".join(offenders)
