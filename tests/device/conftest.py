"""Tests that exercise a device (marker ``device``): CUDA when present, else skipped.

``DRAGGAN_TEST_DEVICE`` picks the device (default ``cuda``); the GPU suite's dry run sets it to
``cpu`` so that these tests are known to work before a GPU is lent. Sizes are small: they check
behaviour on the device, not speed (benchmarks/gpu_suite.sh times).
"""

from __future__ import annotations

import os

import pytest
import torch

import stylegan2


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).replace(os.sep, "/").endswith("tests/device/test_device.py"):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get("DRAGGAN_TEST_DEVICE", "cuda")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (set DRAGGAN_TEST_DEVICE=cpu to run these on the CPU)")
    return dev


def small_generator(resolution: int = 64, seed: int = 0) -> stylegan2.Generator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = stylegan2.Generator(z_dim=64, w_dim=64, img_resolution=resolution, img_channels=3,
                                channel_base=resolution * 32, channel_max=64, mapping_kwargs={"num_layers": 2})
    return G.eval().requires_grad_(False)


def latent(G: stylegan2.Generator, seed: int = 1) -> torch.Tensor:
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G.mapping(z, None, truncation_psi=0.7)
