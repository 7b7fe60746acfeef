"""Projection of an RGB photo into a StyleGAN2 generator's W+ space (with optional pivotal tuning).

The optimisation follows NVIDIA's StyleGAN2(-ADA) projector: start at the average latent
(``w_avg``) or the best of a few truncated samples, optimise with Adam under a learning rate that
ramps up then down (cosine), add Gaussian noise of decaying strength to the latent early on, and
use a perceptual loss (ST-LPIPS here, on at most 256-pixel images as the official projector's VGG)
plus a pixel loss (MSE on [-1, 1] images). Optionally the per-layer noise maps (``noise_const``)
are optimised too, with the projector's multi-scale autocorrelation penalty and re-normalisation.

Differences from the official projector, on purpose:

* W+ (one w per layer) instead of W, after an optional first phase in W (``w_phase``): W+ fits
  photos much better; starting in W keeps the latent near the generator's typical codes.
* Noise optimisation is off in both presets by default: a drag moves content but the noise maps
  stay fixed in image space, so detail baked into them tears when dragged. When it is on, the
  optimised noise is returned in a copy of the generator that shares ``G``'s weights.
* Gradients are taken with ``torch.autograd.grad`` for the optimised tensors only, so ``G`` is
  never written to (not even its ``.grad`` fields) and may be used concurrently.

Quality figures (PSNR in dB, ST-LPIPS on its VGG scale) are reported per step and in the result,
so a caller can warn when a photo is far from the model's domain.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stylegan2.precision import autocast, resolve_precision

from ._common import (
    CancelCheck,
    InversionCancelled,
    ProgressCallback,
    apply_delta,
    check_cancel,
    copy_sharing_parameters,
    generator_delta,
    generator_device,
    image_to_tensor,
    model_fingerprint,
    psnr_tensor,
    psnr_uint8,
    resize_for_lpips,
    shared_stlpips,
    synthesize,
    tensor_to_uint8,
)
from .cache import CacheEntry, LatentCache, cache_key
from .pti import pivotal_tuning
from .settings import ENCODER_PRESETS, PRESETS, PerceptualObjective, ProjectionSettings, settings_key

StepReport = Callable[[int, dict[str, Any]], None]  # (step within the whole run, metrics)

__all__ = ["PRESETS", "ProjectionResult", "ProjectionSettings", "project", "InversionCancelled"]


@dataclass
class ProjectionResult:
    """The outcome of :func:`project`.

    ``ws``: [1, num_ws, w_dim] float32 on the generator's device; ``generator``: ``G`` itself,
    or a tuned copy (pivotal tuning, or optimised noise) to run drags on; ``reconstruction``:
    uint8 [H, W, 3] = ``generator`` at ``ws``; ``psnr`` in dB against the photo; ``stlpips``:
    ST-LPIPS (VGG) distance to the photo (images area-downsampled to at most 256 pixels);
    ``from_cache``; ``seconds`` this call took; ``steps``: optimisation steps behind the result
    (projection + tuning, as stored when it came from the cache); ``model_id`` and ``settings``
    used for the cache key.
    """

    ws: torch.Tensor
    generator: Any
    reconstruction: np.ndarray
    psnr: float
    stlpips: float
    from_cache: bool
    seconds: float
    steps: int
    model_id: str = ""
    settings: ProjectionSettings | None = None
    pti: bool = False


# w_avg / w_std per generator, computed once (mapping many samples is cheap but not free).
_w_stats: weakref.WeakKeyDictionary[Any, tuple[int, torch.Tensor, float]] = weakref.WeakKeyDictionary()


def _w_statistics(G: Any, samples: int, seed: int) -> tuple[torch.Tensor, float]:
    """(w_avg [w_dim], w_std scalar) of the mapping network, as the official projector does.

    Uses the generator's tracked ``mapping.w_avg`` when it holds one (non-zero), else the mean
    of ``samples`` mapped z (a freshly initialised network has a zero w_avg buffer).
    """
    cached = _w_stats.get(G)
    if cached is not None and cached[0] == samples:
        return cached[1], cached[2]
    device = generator_device(G)
    gen = torch.Generator(device="cpu").manual_seed(seed + 12345)
    z = torch.randn(samples, G.z_dim, generator=gen).to(device)
    with torch.no_grad():
        w = G.mapping(z, None)[:, 0, :].float()  # [samples, w_dim]
    tracked = getattr(G.mapping, "w_avg", None)
    if isinstance(tracked, torch.Tensor) and tracked.abs().sum() > 0:
        w_avg = tracked.detach().float().clone()
    else:
        w_avg = w.mean(dim=0)
    w_std = float((w - w_avg).square().sum(dim=1).mean().sqrt())
    try:
        _w_stats[G] = (samples, w_avg, w_std)
    except TypeError:  # not weak-referenceable: just recompute next time
        pass
    return w_avg, w_std


def _noise_penalty(noise_maps: list[torch.Tensor]) -> torch.Tensor:
    """StyleGAN2's multi-scale noise regulariser: squared autocorrelation at 1-pixel shifts (x and
    y), summed over a pyramid down to 8 pixels, for every noise map."""
    total = torch.zeros((), device=noise_maps[0].device)
    for v in noise_maps:
        noise = v[None, None, :, :]
        while True:
            total = total + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            total = total + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if min(noise.shape[2], noise.shape[3]) <= 8:
                break
            noise = torch.nn.functional.avg_pool2d(noise, kernel_size=2)
    return total


def _lr_factor(t: float, settings: ProjectionSettings) -> float:
    ramp = min(1.0, (1.0 - t) / settings.lr_rampdown) if settings.lr_rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if settings.lr_rampup > 0:
        ramp *= min(1.0, t / settings.lr_rampup)
    return ramp


def _search_start(G: Any, objective: PerceptualObjective, w_avg: torch.Tensor, settings: ProjectionSettings,
                  should_cancel: CancelCheck | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Best starting w [w_dim]: w_avg or one of ``search_samples`` truncated samples."""
    candidates = [w_avg[None]]
    if settings.search_samples > 0:
        gen = torch.Generator(device="cpu").manual_seed(settings.seed)
        z = torch.randn(settings.search_samples, G.z_dim, generator=gen).to(w_avg.device)
        with torch.no_grad():
            w = G.mapping(z, None)[:, 0, :].float()
        candidates.append(w_avg + settings.search_psi * (w - w_avg))
    all_w = torch.cat(candidates)  # [K, w_dim]
    losses = []
    with torch.no_grad(), autocast(dtype, w_avg.device):
        for chunk in all_w.split(8):
            check_cancel(should_cancel, "projection")
            ws = chunk[:, None, :].repeat(1, G.num_ws, 1)
            losses.append(objective(synthesize(G, ws))[0].float())
    return all_w[int(torch.cat(losses).argmin())]


def _project_latent(
    G: Any, target: torch.Tensor, settings: ProjectionSettings, report: StepReport,
    should_cancel: CancelCheck | None, start_ws: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any]:
    """Optimise W+ (and optionally noise). ``start_ws`` [1, num_ws, w_dim]: start there in W+
    (an encoder's prediction) instead of searching a w. Returns (ws [1, num_ws, w_dim], generator
    to use: ``G`` or a weight-sharing copy holding the optimised noise)."""
    device = target.device
    dtype = resolve_precision(settings.precision, device)
    early_steps = int(round(settings.early_fraction * settings.steps))
    early_side = settings.early_max_side or settings.lpips_max_side
    # Only build the networks that will run: the main one is skipped when every step is "early".
    objective = early = None
    if early_steps < settings.steps or (early_steps == 0 and start_ws is None):
        objective = PerceptualObjective(target, settings.lpips_net, settings.lpips_max_side, settings.pixel_weight)
    if early_steps > 0:
        early = PerceptualObjective(target, settings.early_net, early_side, settings.pixel_weight)
    w_avg, w_std = _w_statistics(G, settings.w_stats_samples, settings.seed)
    w_avg = w_avg.to(device)
    if start_ws is None:
        search_objective = early if early is not None else objective
        assert search_objective is not None
        w_start = _search_start(G, search_objective, w_avg, settings, should_cancel, dtype)
        w_opt = w_start[None, None, :].clone().requires_grad_(True)  # single w, broadcast
    else:
        if tuple(start_ws.shape) != (1, G.num_ws, G.w_dim):
            raise ValueError(f"start_ws must be [1, {G.num_ws}, {G.w_dim}], got {tuple(start_ws.shape)}")
        w_opt = start_ws.detach().to(device).float().clone().requires_grad_(True)

    work = G
    noise_maps: list[torch.Tensor] = []
    if settings.optimize_noise:
        work = copy_sharing_parameters(G)
        for module in work.synthesis.modules():
            if isinstance(getattr(module, "noise_const", None), torch.Tensor):
                fresh = torch.randn_like(module.noise_const).requires_grad_(True)
                module.noise_const = fresh
                noise_maps.append(fresh)
        if not noise_maps:
            work = G

    gen = torch.Generator(device="cpu").manual_seed(settings.seed + 1)
    w_phase_steps = int(round(settings.w_phase * settings.steps))
    optimizer = torch.optim.Adam([w_opt, *noise_maps], betas=(0.9, 0.999), lr=settings.lr)
    for step in range(settings.steps):
        check_cancel(should_cancel, "projection")
        if step == w_phase_steps and w_opt.shape[1] == 1:
            # switch to W+: one w per layer, fresh Adam state for the new shape
            w_opt = w_opt.detach().repeat(1, G.num_ws, 1).requires_grad_(True)
            optimizer = torch.optim.Adam([w_opt, *noise_maps], betas=(0.9, 0.999), lr=settings.lr)
        t = step / settings.steps
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _lr_factor(t, settings)
        ramp = max(0.0, 1.0 - t / settings.noise_ramp) if settings.noise_ramp > 0 else 0.0
        noise_scale = w_std * settings.w_noise_factor * ramp**2
        w_noise = torch.randn(w_opt.shape, generator=gen).to(device) * noise_scale
        ws = (w_opt + w_noise).expand(1, G.num_ws, G.w_dim)
        with autocast(dtype, device):
            img = synthesize(work, ws).float()
            step_objective = early if step < early_steps else objective
            assert step_objective is not None
            loss, perceptual = step_objective(img)
        total = loss.float().sum()
        if noise_maps:
            total = total + settings.noise_regularization * _noise_penalty(noise_maps)
        grads = torch.autograd.grad(total, [w_opt, *noise_maps])
        for tensor, grad in zip([w_opt, *noise_maps], grads):
            tensor.grad = grad
        optimizer.step()
        if noise_maps:
            with torch.no_grad():  # keep the maps zero-mean, unit-variance (official)
                for v in noise_maps:
                    v -= v.mean()
                    v *= v.square().mean().rsqrt()
        report(step + 1, {"phase": "project", "loss": float(total.detach()),
                          "stlpips": float(perceptual.detach().sum()), "psnr": psnr_tensor(img, target)})

    ws_final = w_opt.detach().expand(1, G.num_ws, G.w_dim).clone()
    if noise_maps:
        for module in work.synthesis.modules():
            value = getattr(module, "noise_const", None)
            if isinstance(value, torch.Tensor) and value.requires_grad:
                module.noise_const = value.detach()
    return ws_final, work


def _final_figures(generator: Any, ws: torch.Tensor, pixels: np.ndarray, target: torch.Tensor,
                   max_side: int) -> tuple[np.ndarray, float, float]:
    """(reconstruction uint8 [H, W, 3], PSNR dB, ST-LPIPS VGG) of ``generator`` at ``ws``."""
    with torch.no_grad():
        recon = tensor_to_uint8(synthesize(generator, ws))
        recon_t = torch.from_numpy(recon).to(target.device).permute(2, 0, 1)[None].float() / 127.5 - 1
        vgg = shared_stlpips("vgg", target.device)
        stl = float(vgg(resize_for_lpips(recon_t, max_side), resize_for_lpips(target, max_side))[0])
    return recon, psnr_uint8(recon, pixels), stl


def project(
    G: Any,
    image: np.ndarray,
    preset: str = "fast",
    pti: bool = False,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    cache: LatentCache | None = None,
    model_id: str | None = None,
    settings: ProjectionSettings | None = None,
    encoder: torch.nn.Module | None = None,
) -> ProjectionResult:
    """Project ``image`` (numpy uint8 [H, W, 3] RGB, exactly the generator's output size) into W+.

    ``preset``: "fast" (default) or "quality" (see :data:`PRESETS`); ``settings`` overrides the
    preset entirely. ``pti``: also fine-tune a copy of the generator around the latent (the
    result's ``generator``). ``progress(step, total, metrics)`` is called after every step;
    metrics: ``phase`` ("project" or "pti"), ``loss``, ``stlpips`` (ST-LPIPS of that step's
    image, loss net and size), ``psnr`` (dB). ``should_cancel()`` is polled every step; True
    raises :class:`InversionCancelled`. ``cache``: a :class:`LatentCache`; the key is (pixels,
    ``model_id``, settings, pti); ``model_id`` defaults to a fingerprint of ``G``.

    ``encoder``: a :class:`inversion.encoder.LatentEncoder` trained for ``G``; its prediction is
    the start (no search, no W phase) and a named preset means its :data:`ENCODER_PRESETS` entry
    (far fewer steps). It joins the cache key (``encoder.fingerprint`` when set, else its weights).

    ``G`` is never modified. Raises ValueError for a bad image (wrong size, NaN, not RGB).
    """
    started = time.perf_counter()
    pixels, target = image_to_tensor(image, G)
    if getattr(G, "c_dim", 0):
        raise ValueError("conditional generators (c_dim > 0) are not supported by the projection")
    if settings is None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        settings = (ENCODER_PRESETS if encoder is not None else PRESETS)[preset]
    if model_id is None:
        model_id = model_fingerprint(G)

    key = None
    if cache is not None:
        key_fields: dict[str, Any] = {"settings": settings_key(settings), "pti": bool(pti)}
        if encoder is not None:  # absent otherwise, so entries made before encoders existed still hit
            key_fields["encoder"] = getattr(encoder, "fingerprint", None) or model_fingerprint(encoder)
        key = cache_key(pixels, model_id, key_fields)
        entry = cache.get(key)
        if (entry is not None and tuple(entry.ws.shape) == (1, G.num_ws, G.w_dim)
                and entry.reconstruction.shape == pixels.shape):
            try:
                generator = apply_delta(G, entry.generator_delta) if entry.generator_delta else G
            except ValueError:
                generator = None  # does not fit this model: recompute (and overwrite)
            if generator is not None:
                return ProjectionResult(
                    ws=entry.ws.to(target.device), generator=generator, reconstruction=entry.reconstruction,
                    psnr=entry.psnr, stlpips=entry.stlpips, from_cache=True,
                    seconds=time.perf_counter() - started, steps=entry.steps, model_id=model_id,
                    settings=settings, pti=pti,
                )

    total_steps = settings.steps + (settings.pti_steps if pti else 0)

    def report(step: int, metrics: dict[str, Any]) -> None:
        if progress is not None:
            progress(step, total_steps, metrics)

    start_ws = None
    if encoder is not None:
        check_cancel(should_cancel, "projection")
        with torch.no_grad():
            start_ws = encoder(target).float()
    ws, generator = _project_latent(G, target, settings, report, should_cancel, start_ws)
    steps_done = settings.steps
    figures = None  # (reconstruction, PSNR, ST-LPIPS) of the current latent, when known
    if settings.refine_steps > 0 and not pti:
        figures = _final_figures(generator, ws, pixels, target, settings.lpips_max_side)
        if figures[2] > settings.refine_above:
            figures = None
            # the quick path did not reach this picture: continue with the main net from here
            total_steps += settings.refine_steps
            first = steps_done

            def report_refine(step: int, metrics: dict[str, Any]) -> None:
                report(first + step, {**metrics, "phase": "refine"})

            refine = settings.replace(steps=settings.refine_steps, early_fraction=0.0, w_phase=0.0,
                                      search_samples=0, w_noise_factor=0.0, lr_rampup=0.0)
            ws, generator = _project_latent(generator, target, refine, report_refine, should_cancel, ws)
            steps_done += settings.refine_steps
    if pti:
        pti_first = steps_done

        def report_pti(step: int, total: int, metrics: dict[str, Any]) -> None:
            report(pti_first + step, metrics)

        generator, pti_steps = pivotal_tuning(
            generator, ws, target, settings=settings, progress=report_pti, should_cancel=should_cancel,
            return_steps=True,
        )
        steps_done += pti_steps
        figures = None

    recon, psnr, stl = figures or _final_figures(generator, ws, pixels, target, settings.lpips_max_side)
    if cache is not None and key is not None:
        delta = generator_delta(G, generator) if generator is not G else {}
        cache.put(key, CacheEntry(ws=ws, reconstruction=recon, psnr=psnr, stlpips=stl, steps=steps_done,
                                  generator_delta=delta))
    return ProjectionResult(
        ws=ws, generator=generator, reconstruction=recon, psnr=psnr, stlpips=stl, from_cache=False,
        seconds=time.perf_counter() - started, steps=steps_done, model_id=model_id, settings=settings,
        pti=pti,
    )
