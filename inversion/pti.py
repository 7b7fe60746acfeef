"""Pivotal tuning (PTI; Roich et al., 2021): fine-tune a COPY of the generator around a latent.

After projection the latent ("pivot") reproduces a photo only approximately; PTI then adjusts the
synthesis network's weights so that ``copy.synthesis(pivot)`` matches the photo (ST-LPIPS + MSE),
while an optional locality regulariser keeps the copy's output unchanged for latents some way
away from the pivot (so edits made by moving the latent still behave like the original model).
Drags then run on the tuned copy. The base generator is never modified: the copy is a deep copy,
and gradients are taken only for the copy's synthesis parameters.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, overload

import torch

from stylegan2.precision import autocast, resolve_precision

from ._common import (
    CancelCheck,
    ProgressCallback,
    check_cancel,
    generator_device,
    psnr_tensor,
    resize_for_lpips,
    shared_stlpips,
    synthesize,
)
from .settings import PerceptualObjective, ProjectionSettings

__all__ = ["pivotal_tuning"]


@overload
def pivotal_tuning(G: Any, ws: torch.Tensor, target: torch.Tensor, settings: ProjectionSettings | None = ...,
                   progress: ProgressCallback | None = ..., should_cancel: CancelCheck | None = ...,
                   return_steps: Literal[False] = ...) -> Any: ...


@overload
def pivotal_tuning(G: Any, ws: torch.Tensor, target: torch.Tensor, settings: ProjectionSettings | None = ...,
                   progress: ProgressCallback | None = ..., should_cancel: CancelCheck | None = ...,
                   *, return_steps: Literal[True]) -> tuple[Any, int]: ...


def pivotal_tuning(
    G: Any,
    ws: torch.Tensor,
    target: torch.Tensor,
    settings: ProjectionSettings | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    return_steps: bool = False,
) -> Any:
    """Return a tuned deep copy of ``G`` (eval mode, ``requires_grad=False``).

    ``ws``: the pivot [1, num_ws, w_dim]; ``target``: the photo [1, 3, H, W] in [-1, 1] on G's
    device (the generator's output size). Uses ``settings.pti_*`` (steps, lr, pixel weight,
    locality weight/alpha/interval, early-stop ST-LPIPS, perceptual net and side).
    ``progress(step, total, metrics)`` after every step (metrics: phase "pti", loss, stlpips,
    psnr); ``should_cancel()`` -> True raises :class:`inversion.InversionCancelled`.
    With ``return_steps=True`` returns (copy, steps run).
    """
    settings = settings or ProjectionSettings()
    if ws.ndim != 3 or ws.shape[0] != 1 or ws.shape[1] != G.num_ws or ws.shape[2] != G.w_dim:
        raise ValueError(f"ws must have shape [1, {G.num_ws}, {G.w_dim}], got {list(ws.shape)}")
    if not torch.isfinite(ws).all():
        raise ValueError("ws contains NaN or infinite values")
    if target.ndim != 4 or target.shape[:2] != (1, 3):
        raise ValueError(f"target must have shape [1, 3, H, W], got {list(target.shape)}")
    device = generator_device(G)
    pivot = ws.detach().to(device)
    target = target.detach().to(device)

    tuned = copy.deepcopy(G)
    tuned.requires_grad_(False)
    params = [p for p in tuned.synthesis.parameters()]
    for p in params:
        p.requires_grad_(True)
    net = settings.pti_lpips_net or settings.lpips_net
    max_side = settings.pti_lpips_max_side or settings.lpips_max_side
    objective = PerceptualObjective(target, net, max_side, settings.pti_pixel_weight)
    optimizer = torch.optim.Adam(params, lr=settings.pti_lr)
    gen = torch.Generator(device="cpu").manual_seed(settings.seed + 2)
    dtype = resolve_precision(settings.precision, device)
    steps_run = 0
    try:
        for step in range(settings.pti_steps):
            check_cancel(should_cancel, "pivotal tuning")
            with autocast(dtype, device):
                img = synthesize(tuned, pivot).float()
                loss, perceptual = objective(img)
                total = loss.float().sum()
                if settings.pti_locality_weight > 0 and step % settings.pti_locality_every == 0:
                    total = total + settings.pti_locality_weight * _locality_loss(G, tuned, pivot, settings, gen)
            grads = torch.autograd.grad(total, params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
            steps_run = step + 1
            stl = float(perceptual.detach().sum())
            if progress is not None:
                metrics = {"phase": "pti", "loss": float(total.detach()), "stlpips": stl,
                           "psnr": psnr_tensor(img, target)}
                progress(steps_run, settings.pti_steps, metrics)
            if stl < settings.pti_stop_stlpips:
                break
    finally:
        for p in params:
            p.grad = None
            p.requires_grad_(False)
    tuned.eval()
    return (tuned, steps_run) if return_steps else tuned


def _locality_loss(G: Any, tuned: Any, pivot: torch.Tensor, settings: ProjectionSettings,
                   gen: torch.Generator) -> torch.Tensor:
    """PTI's locality regulariser: at a latent part of the way from the pivot to a random sample,
    the tuned copy should still produce what the original produces.

    (PTI steps a fixed distance, 30, in FFHQ's W; a fraction of the way to a sample is the same
    idea without a scale that depends on the model.)"""
    z = torch.randn(1, G.z_dim, generator=gen).to(pivot.device)
    with torch.no_grad():
        w_random = G.mapping(z, None).float()  # [1, num_ws, w_dim]
        w_near = pivot + settings.pti_locality_fraction * (w_random - pivot)
        reference = synthesize(G, w_near)
    img = synthesize(tuned, w_near)
    metric = shared_stlpips(settings.lpips_net, pivot.device)
    max_side = settings.lpips_max_side
    perceptual = metric(resize_for_lpips(img, max_side), resize_for_lpips(reference, max_side))
    pixel = (img - reference).square().mean(dim=(1, 2, 3))
    return (perceptual + settings.pti_pixel_weight * pixel).sum()
