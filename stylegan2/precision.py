"""The precision setting shared by the drag engine's fast mode and the inversion.

``"fp32"`` (default) runs everything in float32. ``"bf16"`` runs the generator's (and the
perceptual network's) convolutions and matrix products in bfloat16 under ``torch.autocast``;
tracking, losses, the optimiser state and the latent stay float32. ``"auto"`` picks bf16 only
where it is fast:

* CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and later);
* CPU: bf16 only when torch reports AMX tiles or AVX512-BF16
  (``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``, guarded: older torch
  lacks them, which counts as "no"). Without them oneDNN falls back to a reference kernel: on an
  AVX2-only AMD EPYC (Zen 3) a bf16 ``conv2d`` measured 100x slower than float32.
* anything else: fp32.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["PRECISIONS", "autocast", "cpu_has_fast_bf16", "resolve_precision"]

PRECISIONS = ("fp32", "bf16", "auto")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has AMX tiles or AVX512-BF16, as torch reports it (False on older torch)."""
    cpu = getattr(torch, "cpu", None)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(cpu, name, None)
        if probe is None:
            continue
        try:
            if bool(probe()):
                return True
        except Exception:  # noqa: BLE001 - a probe that fails means "unknown", i.e. no
            continue
    return False


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """``"fp32"``/``"bf16"``/``"auto"`` -> ``torch.float32`` or ``torch.bfloat16`` for ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        except Exception:  # noqa: BLE001
            return torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32


def autocast(dtype: torch.dtype, device: torch.device | str) -> Any:
    """A context running convolutions/matmuls in ``dtype`` (nothing for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
