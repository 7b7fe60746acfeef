"""Fast op forms against their references, and the generator's shapes and modes."""

from __future__ import annotations

import pytest
import torch

import stylegan2
from stylegan2 import ops


@pytest.mark.parametrize("padding", [[2, 1, 2, 1], [1, 1, 1, 1], [0, 0, 0, 0], [3, 2, 1, 0], [-1, 2, 0, -1]])
@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], [1]])
def test_fast_upsampling_equals_reference(padding, taps):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g)
    f = ops.setup_filter(taps)
    ref = ops._upfirdn2d_ref(x, f, 2, 1, tuple(padding), 4.0)
    fast = ops._upfirdn2d_up_fast(x, f, 2, tuple(padding), 4.0)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-6)


def test_fast_and_reference_generators_agree_with_gradients():
    torch.manual_seed(0)
    G = stylegan2.Generator(z_dim=16, w_dim=16, img_resolution=32, img_channels=3, channel_base=256,
                            channel_max=32, mapping_kwargs={"num_layers": 2})
    ws = G.mapping(torch.randn(2, 16)).detach().requires_grad_(True)
    results = []
    for fast in (False, True):
        previous = ops.set_fast_ops(fast)
        try:
            img = G.synthesis(ws, noise_mode="const")
            (grad,) = torch.autograd.grad(img.square().sum(), ws)
        finally:
            ops.set_fast_ops(previous)
        results.append((img.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-4, rtol=1e-4)


def test_bias_act_matches_definition():
    x = torch.tensor([[-2.0, 0.5, 300.0]])
    b = torch.tensor([1.0, 0.0, 0.0])
    y = ops.bias_act(x.t().reshape(1, 3), b, act="lrelu", clamp=256, dim=1)
    expected = torch.tensor([[-1.0 * 0.2 * 2**0.5, 0.5 * 2**0.5, 256.0]])
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="unsupported activation"):
        ops.bias_act(x, act="swish")


@pytest.mark.parametrize("height,width", [(32, 32), (32, 16), (32, 24), (64, 32)])
def test_square_and_non_square_shapes(height, width):
    G = stylegan2.Generator(z_dim=8, w_dim=8, img_resolution=height, img_width=width, img_channels=3,
                            channel_base=128, channel_max=16, mapping_kwargs={"num_layers": 1})
    assert (G.img_height, G.img_width) == (height, width)
    ws = G.mapping(torch.randn(1, 8), truncation_psi=0.5)
    img, feats = G.synthesis(ws, noise_mode="const", return_features=True)
    assert img.shape == (1, 3, height, width)
    for i, f in enumerate(feats):
        assert tuple(f.shape[2:]) == G.synthesis.block_shape(i)
        assert f.shape[2] * width == f.shape[3] * height
    assert G.synthesis.block_shape(0) == (4, 4 * width // height)
    assert torch.equal(G.synthesis.features(ws, stop_block=2)[2], feats[2])


def test_invalid_shapes_and_modes_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        stylegan2.Generator(z_dim=8, w_dim=8, img_resolution=48)
    with pytest.raises(ValueError, match="integer width"):
        stylegan2.Generator(z_dim=8, w_dim=8, img_resolution=32, img_width=33)
    G = stylegan2.Generator(z_dim=8, w_dim=8, img_resolution=16, channel_base=64, channel_max=8,
                            mapping_kwargs={"num_layers": 1})
    ws = G.mapping(torch.randn(1, 8))
    with pytest.raises(ValueError, match="ws must have shape"):
        G.synthesis(ws[:, :3])
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="loud")
    with pytest.raises(ValueError, match="stop_block"):
        G.synthesis.features(ws, stop_block=7)
    with pytest.raises(ValueError, match="z must have shape"):
        G.mapping(torch.randn(1, 9))


def test_noise_modes_and_truncation():
    torch.manual_seed(1)
    G = stylegan2.Generator(z_dim=8, w_dim=8, img_resolution=16, channel_base=64, channel_max=8,
                            mapping_kwargs={"num_layers": 1})
    for name, buf in G.synthesis.named_buffers():
        if name.endswith("noise_const"):
            buf.normal_()
    for p in G.parameters():
        if p.ndim == 0:
            p.data.fill_(0.5)  # noise strengths: make noise visible
    G.mapping.w_avg.normal_()
    z = torch.randn(1, 8)
    ws = G.mapping(z)
    const1 = G.synthesis(ws, noise_mode="const")
    const2 = G.synthesis(ws, noise_mode="const")
    none = G.synthesis(ws, noise_mode="none")
    rand = G.synthesis(ws, noise_mode="random")
    assert torch.equal(const1, const2)
    assert not torch.allclose(const1, none) and not torch.allclose(const1, rand)
    truncated = G.mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(truncated[0, 0], G.mapping.w_avg)
    half = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(half[:, 2:], ws[:, 2:])
    torch.testing.assert_close(half[:, :2], G.mapping.w_avg.lerp(ws[:, :2], 0.5))
