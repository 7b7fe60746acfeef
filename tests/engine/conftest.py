"""Generators for the engine tests: a tiny random one (fast) and the official 128² fixture one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import stylegan2

# The official fixture generator (fixture_G) for any engine test: the fixtures' lookup lives with
# the fixture tests, which skip or fail when CI has not provided them.
from .test_official_fixtures import fixture_G, fixtures_dir  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_tiny_generator(seed: int = 0, resolution: int = 32) -> stylegan2.Generator:
    """32² random generator: blocks 4, 8, 16, 32 (feature blocks 0..3), num_ws 8, w_dim 32."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = stylegan2.Generator(z_dim=32, w_dim=32, img_resolution=resolution, img_channels=3,
                                channel_base=512, channel_max=32, mapping_kwargs={"num_layers": 2})
        # Random biases and noise strengths so that every part of the network matters.
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.data.normal_(0, 0.1)
    return G.eval().requires_grad_(False)


def tiny_latent(G: stylegan2.Generator, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn([1, G.z_dim], generator=generator)
    with torch.no_grad():
        return G.mapping(z, None, truncation_psi=0.7)


@pytest.fixture(autouse=True)
def one_thread():
    """Engine tests work on small tensors: one intra-op thread is faster, and on the shared, oversubscribed
    2-core machine two OpenMP threads were measured 20-30x slower (barrier waits for a descheduled
    thread). Restored afterwards so that other test packages keep their setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_G() -> stylegan2.Generator:
    return make_tiny_generator()
