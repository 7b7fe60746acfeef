"""What a projection is asked to do: its settings (presets) and its objective.

Shared by ``project`` (W+ projection) and ``pti`` (pivotal tuning), which is why it is a module of
its own: ``pti`` needs the settings and the objective, ``project`` calls ``pivotal_tuning``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from stylegan2.precision import PRECISIONS

from ._common import resize_for_lpips, shared_stlpips

__all__ = ["ENCODER_PRESETS", "PRESETS", "PerceptualObjective", "ProjectionSettings", "settings_key"]


@dataclass(frozen=True)
class ProjectionSettings:
    """Every knob of a projection (a preset is one of these). Steps are optimiser steps.

    Projection: ``steps`` Adam steps at peak learning rate ``lr`` with the official schedule
    (linear rampup over the first ``lr_rampup`` fraction, cosine rampdown over the last
    ``lr_rampdown`` fraction); latent noise of std ``w_noise_factor * w_std`` decaying
    quadratically to 0 at ``noise_ramp`` of the run; the first ``w_phase`` fraction optimises a
    single w shared by all layers, the rest W+. ``search_samples`` > 0: start from the best of
    that many samples (truncated towards w_avg by ``search_psi``) and w_avg itself.
    Loss = ST-LPIPS(``lpips_net``, images area-downsampled to ``lpips_max_side``)
    + ``pixel_weight`` * MSE([-1, 1] images) [+ ``noise_regularization`` * noise penalty].

    Pivotal tuning (only with ``pti=True``): ``pti_steps`` Adam steps at ``pti_lr`` on a copy of
    the generator, loss = ST-LPIPS + ``pti_pixel_weight`` * MSE, plus every ``pti_locality_every``
    steps ``pti_locality_weight`` * (same loss between tuned and original generator at a latent
    ``pti_locality_fraction`` of the way from the pivot to a random sample); stops early when the
    ST-LPIPS to the photo falls below ``pti_stop_stlpips``. ``pti_lpips_net`` / ``pti_lpips_max_side``:
    the perceptual net PTI uses and the side it sees ("" / 0 = the projection's). With ``pti=True`` the
    refinement below is skipped: PTI closes the same gap, and far more of it.

    Refinement (off by default): when ``refine_steps`` > 0 and the projection's reconstruction has a
    VGG ST-LPIPS above ``refine_above`` (a picture the quick path could not reach, e.g. a drawing
    outside what the encoder learned), ``refine_steps`` more steps follow from there with the main
    net (``lpips_net`` at ``lpips_max_side``), before any PTI.

    Speed levers (off by default): the first ``early_fraction`` of the projection steps (and the
    start search) use the lighter ``early_net`` on images area-downsampled to ``early_max_side``
    (0 = ``lpips_max_side``); ``precision`` ("fp32", "bf16", "auto": see
    :mod:`stylegan2.precision`) runs the generator and the perceptual network under autocast
    (the final figures are always float32).
    """

    steps: int = 150
    lr: float = 0.05
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    w_noise_factor: float = 0.05
    noise_ramp: float = 0.75
    w_phase: float = 0.2
    search_samples: int = 8
    search_psi: float = 0.7
    pixel_weight: float = 1.0
    lpips_net: str = "vgg"
    lpips_max_side: int = 256
    optimize_noise: bool = False
    noise_regularization: float = 1e5
    w_stats_samples: int = 1000
    seed: int = 0
    pti_steps: int = 80
    pti_lr: float = 3e-4
    pti_pixel_weight: float = 1.0
    pti_locality_weight: float = 0.1
    pti_locality_fraction: float = 0.5
    pti_locality_every: int = 4
    pti_stop_stlpips: float = 0.02
    pti_lpips_net: str = ""
    pti_lpips_max_side: int = 0
    precision: str = "fp32"
    early_fraction: float = 0.0
    early_net: str = "alex"
    early_max_side: int = 0
    refine_steps: int = 0
    refine_above: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 0 or self.pti_steps < 0 or self.search_samples < 0:
            raise ValueError("steps, pti_steps and search_samples must be >= 0")
        if self.lpips_net not in ("vgg", "alex"):
            raise ValueError(f"lpips_net must be 'vgg' or 'alex', got {self.lpips_net!r}")
        if not 0.0 <= self.w_phase <= 1.0:
            raise ValueError(f"w_phase must be in [0, 1], got {self.w_phase}")
        if self.pti_locality_every < 1:
            raise ValueError("pti_locality_every must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.early_fraction <= 1.0:
            raise ValueError(f"early_fraction must be in [0, 1], got {self.early_fraction}")
        if self.early_net not in ("vgg", "alex"):
            raise ValueError(f"early_net must be 'vgg' or 'alex', got {self.early_net!r}")
        if self.early_max_side < 0:
            raise ValueError("early_max_side must be >= 0")
        if self.pti_lpips_net not in ("", "vgg", "alex"):
            raise ValueError(f"pti_lpips_net must be '', 'vgg' or 'alex', got {self.pti_lpips_net!r}")
        if self.pti_lpips_max_side < 0:
            raise ValueError("pti_lpips_max_side must be >= 0")
        if self.refine_steps < 0 or not self.refine_above >= 0:
            raise ValueError("refine_steps and refine_above must be >= 0")

    def replace(self, **changes: Any) -> ProjectionSettings:
        return dataclasses.replace(self, **changes)


# Fields added after the latent cache's first format: left out of the cache key at their defaults,
# so that entries written before they existed still hit.
_LATER_FIELDS = {"precision": "fp32", "early_fraction": 0.0, "early_net": "alex", "early_max_side": 0,
                 "refine_steps": 0, "refine_above": 0.1, "pti_lpips_net": "", "pti_lpips_max_side": 0}

# Pivotal tuning that reproduces the picture: on faces-128's procedural renders the former settings
# (80 VGG steps at 3e-4, stopping at ST-LPIPS 0.02) ended at 28.7 dB with the wrong eye colour, and
# the drags made from such an inversion landed 3.3 px (global changes) to 3.7 px (local ones) from
# the exact answer's keypoints. 150 steps at 3e-3 with AlexNet at 128 px, the pixel term weighted 4
# and no locality term reach 34.4-34.9 dB in 21 s on 2 cores and drags land 0.9 / 1.5 px away (8
# paired cases, docs/paired-faces-128.md); the locality term cost 2.5x the time for a worse fit.
_FAITHFUL_PTI: dict[str, Any] = dict(pti_steps=150, pti_lr=3e-3, pti_pixel_weight=4.0, pti_locality_weight=0.0,
                     pti_stop_stlpips=0.0, pti_lpips_net="alex", pti_lpips_max_side=128)


def settings_key(settings: ProjectionSettings) -> dict[str, Any]:
    """The settings as they enter the latent cache key."""
    values = dataclasses.asdict(settings)
    for name, default in _LATER_FIELDS.items():
        if values.get(name) == default:
            values.pop(name)
    return values


PRESETS: dict[str, ProjectionSettings] = {
    # Interactive on a GPU: a short search, 150 steps (W then W+), a short PTI when asked.
    "fast": ProjectionSettings(**_FAITHFUL_PTI),
    # Slower and closer: more samples and steps, longer PTI without early stop.
    "quality": ProjectionSettings(steps=600, lr=0.05, search_samples=32, w_phase=0.25,
                                  **{**_FAITHFUL_PTI, "pti_steps": 300}),
}

# The same presets when the model has an encoder (``inversion.encoder``): the encoder's W+ is the
# start, so there is no start search and no W phase, little latent noise, and far fewer steps;
# "fast" refines with the light AlexNet ST-LPIPS at 64² (the final figures stay VGG at <= 256).
ENCODER_PRESETS: dict[str, ProjectionSettings] = {
    # In-domain pictures end after the 12 light steps (VGG ST-LPIPS 0.02, at most 0.03 on the default
    # model's samples, as with 20 steps; 0.9 s less on 2 CPU cores); a picture still above 0.08 gets
    # 100 VGG steps more (faces-128's procedural renders: 0.26 after the quick path; inversion/README.md).
    "fast": ProjectionSettings(steps=12, lr=0.01, lr_rampup=0.0, w_noise_factor=0.0, w_phase=0.0,
                               search_samples=0, early_fraction=1.0, early_net="alex", early_max_side=64,
                               refine_steps=100, refine_above=0.08, **_FAITHFUL_PTI),
    "quality": ProjectionSettings(steps=300, lr=0.02, w_noise_factor=0.01, w_phase=0.0, search_samples=0,
                                  **{**_FAITHFUL_PTI, "pti_steps": 300}),
}


class PerceptualObjective:
    """ST-LPIPS (target features cached) + weighted MSE against one target image."""

    def __init__(self, target: torch.Tensor, net: str, max_side: int, pixel_weight: float) -> None:
        self.target = target
        self.max_side = max_side
        self.pixel_weight = pixel_weight
        self.metric = shared_stlpips(net, target.device)
        with torch.no_grad():
            self.target_features = self.metric.features(resize_for_lpips(target, self.max_side))

    def __call__(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] total loss and [N] ST-LPIPS term for images [N, 3, H, W]."""
        perceptual = self.metric.distance_to(resize_for_lpips(img, self.max_side), self.target_features)
        pixel = (img - self.target).square().mean(dim=(1, 2, 3))
        return perceptual + self.pixel_weight * pixel, perceptual
