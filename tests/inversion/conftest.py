"""Fixtures for the inversion tests."""

from __future__ import annotations

import pytest
import torch
from inversion_helpers import structured_image, tiny_generator

from inversion import ProjectionSettings


@pytest.fixture
def image48() -> torch.Tensor:
    return structured_image(48, 48, seed=1)


@pytest.fixture(scope="session")
def tiny_G():  # noqa: ANN201 - stylegan2.Generator
    return tiny_generator()


@pytest.fixture(scope="session")
def quick_settings() -> ProjectionSettings:
    """Few steps and the cheap AlexNet loss: enough to see the optimisation work on 32x32."""
    return ProjectionSettings(steps=40, lr=0.1, lpips_net="alex", search_samples=4, w_stats_samples=200,
                              pti_steps=12, pti_lr=3e-3, pti_locality_every=3, pti_stop_stlpips=0.0)
