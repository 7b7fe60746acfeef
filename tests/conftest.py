"""Shared test helpers: paths to the repo and ../shared, tiny generators."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DRAGGAN_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official-tiny"

# Two cores, shared with other processes in CI: keep torch from oversubscribing.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def require_fixtures() -> Path:
    if not (FIXTURES / "G-128.pkl").is_file():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"official fixtures not found at {FIXTURES}", pytrace=False)
        pytest.skip(f"official fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require_fixtures()
