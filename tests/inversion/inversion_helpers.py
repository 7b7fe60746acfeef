"""Helpers for the inversion tests (a uniquely named module: ``conftest`` names clash across test folders)."""

from __future__ import annotations

import math

import numpy as np
import torch


def structured_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A deterministic image with edges, gradients and texture: [1, 3, H, W] in [-1, 1].

    Used instead of noise because perceptual metrics behave like they should on images with
    structure (noise vs noise is "perceptually" nearly identical).
    """
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1.0, 1.0, height).view(height, 1).expand(height, width)
    xs = torch.linspace(-1.0, 1.0, width).view(1, width).expand(height, width)
    channels = []
    for c in range(3):
        phase = float(torch.rand(1, generator=gen)) * 2 * math.pi
        base = 0.5 * torch.sin(3.0 * xs + 2.0 * ys * (c + 1) + phase)
        channels.append(base)
    img = torch.stack(channels)
    for _ in range(4):  # a few discs of flat colour (sharp edges)
        cx, cy = (torch.rand(2, generator=gen) * 1.6 - 0.8).tolist()
        radius = float(torch.rand(1, generator=gen)) * 0.3 + 0.15
        colour = torch.rand(3, 1, 1, generator=gen) * 2 - 1
        inside = ((xs - cx) ** 2 + (ys - cy) ** 2 < radius**2).float()
        img = img * (1 - inside) + colour * inside
    stripes = 0.2 * torch.sign(torch.sin(12.0 * xs - 7.0 * ys))
    img = img + stripes * (ys > 0.3).float()
    return img.clamp(-1, 1).unsqueeze(0)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [-1, 1] -> uint8 [H, W, 3] (the project's conversion)."""
    return (img[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def tiny_generator(seed: int = 0):  # -> stylegan2.Generator
    """A 32x32 random-weight generator (8 ws of 32 dims), frozen, for quick tests."""
    import stylegan2

    torch.manual_seed(seed)
    G = stylegan2.Generator(z_dim=32, w_dim=32, img_resolution=32, img_channels=3, channel_base=256,
                            channel_max=32, mapping_kwargs={"num_layers": 2})
    return G.eval().requires_grad_(False)


def planted_image(G, seed: int = 5) -> tuple[torch.Tensor, np.ndarray]:
    """(ws [1, num_ws, w_dim], uint8 [H, W, 3] image G makes from it) for a seeded z."""
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ws = G.mapping(z, None)
        return ws, to_uint8(G.synthesis(ws, noise_mode="const"))


def state_snapshot(G) -> dict[str, torch.Tensor]:
    """Bitwise copy of every parameter and buffer (to prove a generator was not modified)."""
    return {name: t.detach().clone() for name, t in G.state_dict().items()}


def assert_unchanged(G, snapshot: dict[str, torch.Tensor]) -> None:
    state = G.state_dict()
    assert set(state) == set(snapshot)
    changed = [name for name, t in state.items() if not torch.equal(t, snapshot[name])]
    assert not changed, f"generator modified: {changed[:5]}"
    assert all(not p.requires_grad and p.grad is None for p in G.parameters())
