"""Fixtures for the inversion tests."""

from __future__ import annotations

import pytest
import torch
from inversion_helpers import structured_image


@pytest.fixture
def image64() -> torch.Tensor:
    return structured_image(64, 64, seed=1)
