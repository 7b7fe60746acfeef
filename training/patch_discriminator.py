"""A small patch discriminator: the adversarial term that sharpens the supervised generator.

Why: an L1/ST-LPIPS regression of z -> render draws, wherever a feature's position is still
uncertain by a few pixels, the *median* image there: thin features (brows, the nose's shading, the
lip line) fade to skin and eyes become blobs (training/docs/faces-128-history.md, session 7).  A
discriminator that judges local patches of renders against local patches of G(z) rewards drawing the
feature crisply; the L1 term keeps it where the render has it.  pix2pix's PatchGAN (Isola et al. 2017)
pairs an L1 loss with such a discriminator for the same reason.

It is unconditional (real = procedural renders, fake = generated images) and small: three stride-2
4x4 convolutions (32, 64, 128 channels) and a 3x3 head give one logit per 8x8-pixel cell, each seeing
a 38-pixel window (an eye and its brow at 128²).  About 0.15 GFLOP per 128² image, a tenth of the
generator's forward pass.  The full StyleGAN2 discriminator costs 3-16 s per G+D iteration on our two cores.

Losses: StyleGAN2's non-saturating logistic loss; optionally the R1 penalty on real images
(Mescheder et al. 2018), applied lazily every few steps (off by default: it kept this critic from
seeing the blur, the same history, session 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """Logits ``[N, 1, H/8, W/8]`` for images ``[N, img_channels, H, W]`` in [-1, 1]: > 0 reads as a
    procedural render, < 0 as a generated image, per 8x8-pixel cell."""

    def __init__(self, img_channels: int = 3, channels: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = img_channels
        for cout in channels:
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img)


def generator_adversarial_loss(D: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(-D(fake)) over every patch (scalar)."""
    return F.softplus(-D(fake)).mean()


def discriminator_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, r1_gamma: float = 0.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, R1 penalty) for one discriminator step; ``fake`` must be detached from G.

    logistic: softplus(D(fake)) + softplus(-D(real)), averaged over patches; plus
    ``r1_gamma / 2 * E ||d sum(D(real)) / d real||²`` when ``r1_gamma > 0`` (a lazy schedule
    passes gamma times the interval on the steps that pay it)."""
    real = real.detach().requires_grad_(r1_gamma > 0)
    logits_real = D(real)
    loss = F.softplus(D(fake)).mean() + F.softplus(-logits_real).mean()
    r1 = torch.zeros((), device=real.device)
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
        r1 = grad.square().sum(dim=[1, 2, 3]).mean()
        loss = loss + r1_gamma / 2 * r1
    return loss, r1.detach()
