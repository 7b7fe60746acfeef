"""Block features computed only on a region (``SynthesisNetwork.features_in_regions``) equal the whole
map's crop: every architecture, square and non-square maps, regions inside, on edges and corners,
and the gradient with respect to ``ws``. The margin test shows the check can fail."""

from __future__ import annotations

import pytest
import torch

import stylegan2
from stylegan2 import networks

REGIONS_64 = [  # (top, bottom, left, right) on a 64-pixel-high feature map
    (20, 31, 33, 44),   # inside, even/odd edges
    (21, 30, 32, 41),   # inside, odd/even edges
    (0, 9, 0, 13),      # top-left corner
    (55, 64, 50, 64),   # bottom-right corner
    (0, 64, 30, 37),    # a full-height strip
    (31, 32, 7, 8),     # a single pixel
    (0, 64, 0, 64),     # the whole map
]


def make_generator(architecture: str = "skip", img_width: int | None = None, seed: int = 0) -> stylegan2.Generator:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = stylegan2.Generator(z_dim=16, w_dim=16, img_resolution=64, img_channels=3,
                                mapping_kwargs={"num_layers": 2}, img_width=img_width,
                                synthesis_kwargs={"architecture": architecture, "channel_base": 512,
                                                  "channel_max": 16})
        for name, param in G.named_parameters():  # biases and noise matter everywhere
            if name.endswith("noise_strength") or name.endswith("bias"):
                param.data.normal_(0, 0.3)
    return G.eval().requires_grad_(False)


def latent(G: stylegan2.Generator, seed: int = 1) -> torch.Tensor:
    z = torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G.mapping(z, None)


def max_error(G: stylegan2.Generator, ws: torch.Tensor, stop_block: int, regions: list) -> float:
    whole = G.synthesis.features(ws, stop_block)[stop_block]
    parts = G.synthesis.features_in_regions(ws, stop_block, regions, fused_modconv=False)
    errors = []
    for (top, bottom, left, right), part in zip(regions, parts):
        expected = whole[:, :, top:bottom, left:right]
        assert part.shape == expected.shape
        errors.append(float((part - expected).abs().max()))
    return max(errors)


@pytest.mark.parametrize("architecture", ["skip", "resnet", "orig"])
def test_regions_equal_the_whole_map(architecture):
    G = make_generator(architecture)
    ws = latent(G)
    assert max_error(G, ws, 4, REGIONS_64) < 1e-5
    # one level lower (32x32 map), where the whole-map blocks and the region blocks meet earlier
    assert max_error(G, ws, 3, [(3, 10, 17, 30), (0, 32, 0, 5)]) < 1e-5


def test_non_square_maps():
    G = make_generator(img_width=32)  # 64x32 image: blocks 4x2 ... 64x32
    ws = latent(G)
    assert max_error(G, ws, 4, [(20, 31, 3, 14), (50, 64, 20, 32), (0, 5, 0, 32)]) < 1e-5


def test_margin_of_one_is_already_exact_and_none_is_not(monkeypatch):
    G = make_generator()
    ws = latent(G)
    regions = REGIONS_64[:2]
    monkeypatch.setattr(networks, "UP_MARGIN", 1)
    assert max_error(G, ws, 4, regions) < 1e-5
    monkeypatch.setattr(networks, "UP_MARGIN", 0)
    assert max_error(G, ws, 4, regions) > 1e-3


def test_gradient_with_respect_to_ws_matches():
    G = make_generator()
    ws = latent(G).requires_grad_(True)
    top, bottom, left, right = 20, 31, 33, 44
    whole = G.synthesis.features(ws, 4)[4][:, :, top:bottom, left:right]
    weights = torch.randn(whole.shape, generator=torch.Generator().manual_seed(3))
    (grad_whole,) = torch.autograd.grad((whole * weights).sum(), [ws])
    (part,) = G.synthesis.features_in_regions(ws, 4, [(top, bottom, left, right)], fused_modconv=False)
    (grad_part,) = torch.autograd.grad((part * weights).sum(), [ws])
    assert float((grad_part - grad_whole).abs().max()) < 1e-4 * float(grad_whole.abs().max())


def test_plan_shrinks_towards_low_resolutions_and_shares_whole_blocks():
    G = make_generator()
    plan = G.synthesis.region_plan(4, (20, 31, 33, 44))
    assert plan[-1] == (20, 31, 33, 44)
    assert plan[0] == (0, 4, 0, 4)  # the 4x4 block is needed whole
    areas = [(b - t) * (r - l) for t, b, l, r in plan]
    sizes = [h * w for h, w in (G.synthesis.block_shape(i) for i in range(5))]
    assert areas[4] / sizes[4] < 0.05 and areas[3] / sizes[3] < 0.3  # most of the big maps is skipped


@pytest.mark.parametrize("region", [(0, 0, 0, 4), (5, 3, 0, 4), (0, 65, 0, 4), (-1, 3, 0, 4), (0, 3, 60, 70)])
def test_bad_regions_are_refused(region):
    G = make_generator()
    with pytest.raises(ValueError, match="region"):
        G.synthesis.features_in_regions(latent(G), 4, [region])
