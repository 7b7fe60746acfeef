"""Our generator reproduces what the official code computed from the official-tiny pickle (the
official-format fixtures: found, or skipped, as tests/engine/test_official_fixtures.py says)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import stylegan2
from stylegan2 import ops
from tests.engine import test_official_fixtures as official

fixtures_dir = official.fixtures_dir  # the fixtures' lookup (a pytest fixture)


@pytest.fixture(scope="module")
def G(fixtures_dir):
    return stylegan2.load_generator(fixtures_dir / "G-128.pkl")


@pytest.fixture(params=[False, True], ids=["reference-ops", "fast-ops"])
def op_mode(request):
    previous = ops.set_fast_ops(request.param)
    yield request.param
    ops.set_fast_ops(previous)


def test_loads_with_official_config(G):
    assert G.num_ws == 12 and G.z_dim == 128 and G.w_dim == 128 and G.img_resolution == 128
    assert sum(p.numel() for p in G.parameters()) == 1_538_685
    assert not any(p.requires_grad for p in G.parameters())
    assert not G.training


@pytest.mark.parametrize("seed", [0, 1])
def test_mapping_matches_official(G, fixtures_dir, seed):
    d = np.load(fixtures_dir / f"render-seed{seed}.npz")
    params = json.loads(str(d["params"]))
    ws = G.mapping(torch.from_numpy(d["z"]), None, truncation_psi=params.get("trunc", 0.7))
    np.testing.assert_allclose(ws.numpy(), d["w"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_synthesis_and_block5_match_official(G, fixtures_dir, seed, op_mode):
    d = np.load(fixtures_dir / f"render-seed{seed}.npz")
    img, feats = G.synthesis(torch.from_numpy(d["w"]), noise_mode="const", return_features=True)
    np.testing.assert_allclose(img.numpy(), d["img"], atol=1e-4, rtol=0)
    assert [list(f.shape) for f in feats] == d["feat_shapes"].tolist()
    if seed == 0:
        np.testing.assert_allclose(feats[5].numpy(), d["feat5"], atol=1e-4, rtol=0)
    else:
        idx = d["feat5_sub_index"]
        np.testing.assert_allclose(feats[5][:, :, idx][:, :, :, idx].numpy(), d["feat5_sub"], atol=1e-4, rtol=0)


def test_uint8_render_matches_official_png(G, fixtures_dir):
    from PIL import Image

    d = np.load(fixtures_dir / "render-seed0.npz")
    img = G.synthesis(torch.from_numpy(d["w"]), noise_mode="const")
    ours = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    theirs = np.asarray(Image.open(fixtures_dir / "render-seed0.png").convert("RGB"))
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_stop_after_block_equals_full_forward(G, fixtures_dir):
    d = np.load(fixtures_dir / "render-seed0.npz")
    ws = torch.from_numpy(d["w"])
    _, full = G.synthesis(ws, noise_mode="const", return_features=True)
    for k in (0, 3, 5):
        partial = G.synthesis.features(ws, stop_block=k, noise_mode="const")
        assert len(partial) == k + 1
        assert torch.equal(partial[k], full[k])


def test_official_call_style(G, fixtures_dir):
    d = np.load(fixtures_dir / "render-seed0.npz")
    ws = torch.from_numpy(d["w"])
    img1 = G(ws, None, input_is_w=True, noise_mode="const")
    img2, feats = G(ws[:, 0], None, input_is_w=True, noise_mode="const", return_feature=True)
    assert torch.equal(img1, img2) and len(feats) == 6
