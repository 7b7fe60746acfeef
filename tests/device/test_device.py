"""Generator, drag engine and inversion on the device (see conftest: CUDA, or the CPU in the suite's dry run)."""

from __future__ import annotations

import numpy as np
import torch

import stylegan2
from backend.engine import DragParams, DragSession
from inversion import ProjectionSettings, project
from inversion import _common as common
from inversion.lpips import STLPIPS, load_shipped_state_dict

from .conftest import latent, small_generator

HANDLES = [(20.0, 24.0), (40.0, 30.0)]
TARGETS = [(26.0, 24.0), (36.0, 36.0)]


def drag_params(**overrides) -> DragParams:
    return DragParams(**{**dict(max_steps=8, r1=16.0, r2=48.0, feature_block=3, preview_every=4), **overrides})


def test_generator_on_the_device_matches_the_cpu(device):
    G = small_generator()
    ws = latent(G)
    with torch.no_grad():
        cpu_image = G.synthesis(ws, noise_mode="const")
        G_dev = small_generator().to(device)
        dev_image = G_dev.synthesis(ws.to(device), noise_mode="const").cpu()
        previous = stylegan2.ops.set_fast_ops(False)
        try:
            reference_ops = G_dev.synthesis(ws.to(device), noise_mode="const").cpu()
        finally:
            stylegan2.ops.set_fast_ops(previous)
    assert dev_image.shape == (1, 3, 64, 64)
    torch.testing.assert_close(dev_image, cpu_image, atol=2e-3, rtol=0)
    torch.testing.assert_close(reference_ops, dev_image, atol=2e-3, rtol=0)


def test_fast_drag_on_the_device_tracks_like_the_cpu_and_queued_steps_match(device):
    G = small_generator()
    ws = latent(G)
    runs = {}
    for name, dev, sync_every in (("cpu", torch.device("cpu"), 1), ("device", device, 1), ("queued", device, 3)):
        session = DragSession(small_generator().to(dev), ws, HANDLES, TARGETS,
                              params=drag_params(sync_every=sync_every))
        steps = list(session.run())
        runs[name] = (steps, session)
    cpu_steps, device_steps, queued_steps = runs["cpu"][0], runs["device"][0], runs["queued"][0]
    assert [s.points for s in device_steps] == [s.points for s in queued_steps]
    assert [s.preview is not None for s in queued_steps] == [s.preview is not None for s in device_steps]
    np.testing.assert_allclose([s.loss for s in device_steps], [s.loss for s in queued_steps], rtol=1e-5)
    torch.testing.assert_close(runs["device"][1].ws, runs["queued"][1].ws)
    # device vs CPU: float order differs; tracked points within 1 px, latents close
    diff = np.abs(np.array([s.points for s in cpu_steps]) - np.array([s.points for s in device_steps]))
    assert diff.max() <= 1
    torch.testing.assert_close(runs["device"][1].ws.cpu(), runs["cpu"][1].ws, atol=1e-3, rtol=0)


def test_reference_mode_runs_on_the_device(device):
    G = small_generator().to(device)
    session = DragSession(G, latent(small_generator()).to(device),
                          HANDLES, TARGETS, params=drag_params(mode="reference", max_steps=3))
    steps = list(session.run())
    assert len(steps) == 3 and session.image().shape == (64, 64, 3)


def test_bf16_fast_drag_on_the_device(device):
    G = small_generator().to(device)
    ws = latent(small_generator()).to(device)
    fp32 = list(DragSession(G, ws, HANDLES, TARGETS, params=drag_params(max_steps=4)).run())
    session = DragSession(G, ws, HANDLES, TARGETS, params=drag_params(max_steps=4, precision="bf16"))
    bf16 = list(session.run())
    assert session.precision == torch.bfloat16
    assert np.abs(np.array([s.points for s in fp32]) - np.array([s.points for s in bf16])).max() <= 2
    assert all(np.isfinite(s.loss) for s in bf16) and session.ws.dtype == torch.float32


def test_projection_on_the_device(device):
    try:
        load_shipped_state_dict("alex")
    except RuntimeError:  # the GPU machine has no stlpips wheel: same shapes, random weights
        common.register_stlpips("alex", device, STLPIPS("alex", weights="random").eval().to(device))
        common.register_stlpips("vgg", device, STLPIPS("vgg", weights="random").eval().to(device))
    G = small_generator(32).to(device)
    ws_true = latent(small_generator(32)).to(device)
    with torch.no_grad():
        picture = common.tensor_to_uint8(G.synthesis(ws_true, noise_mode="const"))
    settings = ProjectionSettings(steps=12, lr=0.1, lpips_net="alex", search_samples=2, w_stats_samples=100,
                                  early_fraction=0.5)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    result = project(G, picture, settings=settings)
    assert result.ws.device.type == device.type and torch.isfinite(result.ws).all()
    assert result.reconstruction.shape == picture.shape and np.isfinite(result.psnr)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
