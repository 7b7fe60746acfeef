"""Pieces shared by projection and pivotal tuning: input checks, loss helpers, shared ST-LPIPS nets."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .lpips import STLPIPS

ProgressCallback = Callable[[int, int, dict[str, Any]], None]
CancelCheck = Callable[[], bool]


class InversionCancelled(Exception):
    """Raised by :func:`inversion.project` / :func:`inversion.pivotal_tuning` when ``should_cancel()``
    returns True; nothing is cached and the base generator is untouched."""


_lpips_lock = threading.Lock()
_lpips_nets: dict[tuple[str, str], STLPIPS] = {}


def shared_stlpips(net: str, device: torch.device) -> STLPIPS:
    """One frozen :class:`STLPIPS` per (net, device) for the whole process (weights load once)."""
    key = (net, str(device))
    with _lpips_lock:
        model = _lpips_nets.get(key)
        if model is None:
            model = STLPIPS(net=net).eval().to(device)  # type: ignore[arg-type]
            _lpips_nets[key] = model
        return model


def register_stlpips(net: str, device: torch.device | str, model: STLPIPS) -> None:
    """Use ``model`` as the shared ST-LPIPS ``net`` on ``device`` from now on (e.g. a
    ``STLPIPS(weights="random")`` where the weights wheel is missing and only timing matters)."""
    with _lpips_lock:
        _lpips_nets[(net, str(torch.device(device)))] = model


def generator_device(G: Any) -> torch.device:
    for p in G.parameters():
        return p.device
    return torch.device("cpu")


def generator_size(G: Any) -> tuple[int, int]:
    """(height, width) in pixels of the generator's output."""
    height = int(getattr(G, "img_height", G.img_resolution))
    width = int(getattr(G, "img_width", G.img_resolution))
    return height, width


def image_to_tensor(image: Any, G: Any, name: str = "image") -> tuple[np.ndarray, torch.Tensor]:
    """Validate an RGB image for ``G`` and convert it.

    ``image``: numpy uint8 [H, W, 3] (H, W = the generator's output size). Float arrays with
    values in [0, 255] are accepted too (rounded to uint8). Returns (uint8 copy [H, W, 3],
    tensor [1, 3, H, W] in [-1, 1] on the generator's device). Raises ValueError naming what is
    wrong: not an array, grayscale, RGBA/other channel counts, wrong size, NaN/inf, out of range.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array uint8 [H, W, 3], got {type(image).__name__}")
    if image.ndim == 2:
        raise ValueError(f"{name} is grayscale ({image.shape[1]}x{image.shape[0]}, no channel axis); "
                         "convert it to RGB [H, W, 3] first")
    if image.ndim != 3:
        raise ValueError(f"{name} must have shape [H, W, 3], got {list(image.shape)}")
    channels = image.shape[2]
    if channels != 3:
        what = {1: "grayscale", 2: "grayscale+alpha", 4: "RGBA"}.get(channels, f"{channels}-channel")
        raise ValueError(f"{name} is {what} ({channels} channels); convert it to RGB (3 channels) first")
    height, width = generator_size(G)
    if image.shape[0] != height or image.shape[1] != width:
        raise ValueError(f"{name} is {image.shape[1]}x{image.shape[0]} pixels but the model outputs "
                         f"{width}x{height}; crop/scale it to the model's size first")
    if image.dtype != np.uint8:
        if image.dtype.kind not in "fiub":
            raise ValueError(f"{name} has dtype {image.dtype}; expected uint8")
        values = image.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if values.min() < 0 or values.max() > 255:
            raise ValueError(f"{name} values must be in [0, 255], got [{values.min():g}, {values.max():g}]")
        image = np.rint(values).astype(np.uint8)
    pixels = np.array(image, dtype=np.uint8, order="C", copy=True)  # ours: the caller may reuse theirs
    tensor = torch.from_numpy(pixels).to(generator_device(G)).permute(2, 0, 1).unsqueeze(0)
    return pixels, tensor.float() / 127.5 - 1.0


def tensor_to_uint8(img: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] nominal [-1, 1] -> uint8 [H, W, 3] with the project's conversion."""
    out = (img.detach()[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return out.permute(1, 2, 0).cpu().numpy()


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (peak 255); inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def psnr_tensor(img: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of [N, 3, H, W] [-1, 1] images (peak-to-peak 2, clamped like the uint8 output)."""
    mse = float((img.detach().clamp(-1, 1) - target).square().mean())
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


def resize_for_lpips(img: torch.Tensor, max_side: int) -> torch.Tensor:
    """Area-downsample [N, 3, H, W] so its longer side is at most ``max_side`` (as the official
    projector does at 256); smaller images pass unchanged."""
    height, width = img.shape[2], img.shape[3]
    if max(height, width) <= max_side:
        return img
    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(img, size=size, mode="area")


def synthesize(G: Any, ws: torch.Tensor) -> torch.Tensor:
    """G's image for ``ws`` [N, num_ws, w_dim] with its stored (const) noise: [N, 3, H, W].

    Modulated convolutions unfused: the gradient with respect to ``ws`` then costs a per-channel
    reduction instead of a per-sample weight gradient (backward about 1.4x faster at 128² on
    2 CPU cores), and a batch shares one convolution. Same image up to float rounding.
    """
    return G.synthesis(ws, noise_mode="const", fused_modconv=False)


def copy_sharing_parameters(G: Any) -> Any:
    """A copy of ``G`` whose parameters ARE ``G``'s (no memory) but whose buffers are its own.

    Used to give a projection its own noise buffers without touching ``G``.
    """
    memo: dict[int, Any] = {id(p): p for p in G.parameters()}
    return copy.deepcopy(G, memo)


def generator_delta(base: Any, changed: Any) -> dict[str, torch.Tensor]:
    """State-dict entries of ``changed`` that differ from ``base`` (CPU copies)."""
    base_state = base.state_dict()
    delta = {}
    for name, value in changed.state_dict().items():
        ref = base_state.get(name)
        if ref is None or ref.shape != value.shape or not torch.equal(ref, value):
            delta[name] = value.detach().cpu().clone()
    return delta


def apply_delta(G: Any, delta: dict[str, torch.Tensor]) -> Any:
    """A copy of ``G`` with ``delta``'s tensors in place (shares the untouched parameters only
    when the delta holds buffers alone). Raises ValueError when the delta does not fit ``G``."""
    state = G.state_dict()
    for name, value in delta.items():
        if name not in state or state[name].shape != value.shape:
            raise ValueError(f"generator delta entry {name!r} does not fit this generator")
    param_names = {name for name, _ in G.named_parameters()}
    tuned = copy_sharing_parameters(G) if not (param_names & set(delta)) else copy.deepcopy(G)
    device = generator_device(G)
    with torch.no_grad():
        tuned_state = tuned.state_dict()
        for name, value in delta.items():
            tuned_state[name].copy_(value.to(device))
    return tuned


def model_fingerprint(G: Any) -> str:
    """A short id for a generator when the caller gives none: its config plus a cheap sample of
    its weights (config alone would confuse two trainings of one architecture)."""
    digest = hashlib.sha256()
    config = getattr(G, "config", None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in G.state_dict().items():
            flat = tensor.detach().reshape(-1)
            digest.update(name.encode())
            digest.update(flat[:64].float().cpu().numpy().tobytes())
            digest.update(np.float64(flat.double().sum().item()).tobytes())
    return "auto-" + digest.hexdigest()[:24]


def check_cancel(should_cancel: CancelCheck | None, what: str) -> None:
    if should_cancel is not None and should_cancel():
        raise InversionCancelled(f"{what} cancelled")
