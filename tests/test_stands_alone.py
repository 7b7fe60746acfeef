"""A clone of this repository alone must run every test, script and documented step.

So no tracked file may name a folder beside the clone (the ``shared`` folder that development
machines and CI keep next to it). The one exception: the official-fixture tests
(``tests/**/test_*fixture*``) look up the official-format fixtures there, because those are made
with the official DragGAN code, which the repository does not carry; they skip without them (and
fail under CI=true, where CI provides them).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The name is split so that this file does not match its own search.
OUTSIDE = re.compile(r"\.\./" + "shared" + r"\b|\bparents?(\[\d+\])?\s*/\s*[\"']" + "shared" + "[\"']")
ALLOWED = re.compile(r"^tests/(.+/)?test_[^/]*fixture[^/]*$")


def tracked_files() -> list[str]:
    """Tracked paths; skipped outside a git checkout (an unpacked archive), failed under CI=true."""
    try:
        r = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, timeout=60)
        if r.returncode == 0:
            return [name for name in r.stdout.decode().split("\0") if name]
        reason = "not a git checkout: " + r.stderr.decode(errors="replace").strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        reason = f"git ls-files failed: {error}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def test_no_tracked_file_outside_the_fixture_tests_names_a_folder_beside_the_clone() -> None:
    offenders = []
    for name in tracked_files():
        path = REPO / name
        if ALLOWED.match(name) or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:        # binary: images, pickles
            continue
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == [], "files that name a path outside the repository:\n" + "\n".join(offenders)


def test_the_search_catches_what_it_must() -> None:
    name = "shared"   # spelled apart from the paths below, for the same reason as OUTSIDE
    assert OUTSIDE.search(f"bash ../{name}/gimp3/setup.sh")
    assert OUTSIDE.search(f'KIT = REPO.parent / "{name}" / "gimp3"')
    assert OUTSIDE.search(f"x = Path(__file__).parents[2] / '{name}'")
    assert not OUTSIDE.search("a shared latent; shared_stlpips(net); the shared queue")
    assert ALLOWED.match("tests/engine/test_official_fixtures.py")
    assert ALLOWED.match("tests/stylegan2/test_fixture_equivalence.py")
    assert not ALLOWED.match("tests/conftest.py") and not ALLOWED.match("README.md")
