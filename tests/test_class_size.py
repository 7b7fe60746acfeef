"""No shipped class is over 400 lines: a class that big holds several jobs (the server's connections,
queue, worker and status were split out of one; the panel's result layer and window out of the panel)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("backend", "alignment", "draggan_wire", "draggan_util", "inversion", "stylegan2", "gimp_plugin/draggan")
LIMIT = 400


def test_no_class_exceeds_the_limit() -> None:
    big = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                    size = node.end_lineno - node.lineno + 1
                    if size > LIMIT:
                        big.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {size} lines")
    assert big == [], "\n".join(big)
