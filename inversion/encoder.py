"""A feed-forward encoder: image -> W+ start for the projection (e4e / ReStyle style, much smaller).

The projection spends most of its time walking from ``w_avg`` (or the best of a few samples) to
the picture's latent.  An encoder trained for one generator predicts that latent in one pass, so a
few refinement steps with a light perceptual loss are enough (``ENCODER_PRESETS``).  It belongs to
the generator it was trained for: its file records the generator file's SHA-256, and
:func:`load_encoder` refuses a file made for other weights.

Network: the picture area-resized to ``input_size`` (at most 128), then stride-2 residual-free conv
blocks down to 4x4, a small MLP, and ``num_ws * w_dim`` outputs read as W+ =
``w_avg + w_scale * output`` (the last layer starts at zero, so an untrained encoder gives
``w_avg``: the same start as the projection without one).

File format (``torch.save`` of plain tensors and numbers, loaded with ``weights_only=True``, so no
pickled code runs)::

    {"format": "draggan-encoder", "version": 1, "config": {...}, "state_dict": {...},
     "generator_sha256": "<hex>", "training": {...free-form figures...}}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from draggan_util.hashing import sha256_file

__all__ = ["ENCODER_FORMAT", "LatentEncoder", "load_encoder", "save_encoder"]

ENCODER_FORMAT = "draggan-encoder"
_VERSION = 1
_MAX_INPUT = 128


class LatentEncoder(nn.Module):
    """Image ``[N, 3, H, W]`` in [-1, 1] (any square size) -> W+ ``[N, num_ws, w_dim]``.

    ``w_avg`` [w_dim] and ``w_scale`` (the generator's w standard deviation per dimension, a
    scalar) are buffers set from the generator at creation, so predictions start at ``w_avg``.
    """

    w_avg: torch.Tensor
    w_scale: torch.Tensor

    def __init__(self, num_ws: int, w_dim: int, input_size: int = 64,
                 channels: tuple[int, ...] = (32, 48, 64, 96, 128), hidden: int = 256) -> None:
        super().__init__()
        if input_size < 8 or input_size > _MAX_INPUT or input_size & (input_size - 1):
            raise ValueError(f"input_size must be a power of two in [8, {_MAX_INPUT}], got {input_size}")
        levels = int(math.log2(input_size // 4))
        if len(channels) < levels:
            raise ValueError(f"need {levels} channel counts for input {input_size}, got {len(channels)}")
        self.config: dict[str, Any] = dict(num_ws=num_ws, w_dim=w_dim, input_size=input_size,
                                           channels=list(channels), hidden=hidden)
        self.num_ws, self.w_dim, self.input_size = num_ws, w_dim, input_size
        # the latent cache's id for this encoder: the file's SHA-256 once loaded from one
        self.fingerprint = ""
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, padding=1), nn.LeakyReLU(0.2)]
        c_in = channels[0]
        for c_out in channels[:levels]:
            # stride-2 3x3 then 3x3: halves the side, 4x4 after ``levels`` blocks
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 16, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, num_ws * w_dim))
        last = self.head[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.register_buffer("w_scale", torch.ones(()))

    def set_latent_statistics(self, w_avg: torch.Tensor, w_scale: float) -> None:
        """Centre and scale of the generator's W (``w_avg`` [w_dim]; ``w_scale``: per-dimension std)."""
        with torch.no_grad():
            self.w_avg.copy_(w_avg.reshape(self.w_dim))
            self.w_scale.fill_(float(w_scale))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != 3 or img.shape[2] != img.shape[3]:
            raise ValueError(f"expected a square RGB batch [N, 3, S, S], got {tuple(img.shape)}")
        if img.shape[-1] != self.input_size:
            # area averaging when shrinking (no aliasing), bilinear when a small model is enlarged
            mode = "area" if img.shape[-1] > self.input_size else "bilinear"
            img = F.interpolate(img, size=(self.input_size, self.input_size), mode=mode,
                                **({} if mode == "area" else {"align_corners": False}))
        out = self.head(self.features(img)).view(-1, self.num_ws, self.w_dim)
        return self.w_avg + self.w_scale * out


def save_encoder(encoder: LatentEncoder, path: str | Path, generator_sha256: str,
                 training: dict[str, Any] | None = None) -> None:
    """Write ``encoder`` for the generator file of SHA-256 ``generator_sha256`` (weights in fp32)."""
    payload = {"format": ENCODER_FORMAT, "version": _VERSION, "config": dict(encoder.config),
               "state_dict": {k: v.detach().cpu().float().clone() for k, v in encoder.state_dict().items()},
               "generator_sha256": str(generator_sha256), "training": dict(training or {})}
    tmp = Path(str(path) + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_encoder(path: str | Path, generator_sha256: str | None = None,
                 device: torch.device | str = "cpu") -> LatentEncoder:
    """Load an encoder file (no pickled code runs).  ``generator_sha256``: when given, the file
    must have been trained for exactly that generator file.  Raises ValueError with the reason for
    a file that is not an encoder, is corrupt, or belongs to other weights."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a valid file"
        raise ValueError(f"{path}: not a readable encoder file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path}: not a {ENCODER_FORMAT} file")
    if payload.get("version") != _VERSION:
        raise ValueError(f"{path}: encoder format version {payload.get('version')!r} is not supported")
    if generator_sha256 is not None and payload.get("generator_sha256") != generator_sha256:
        raise ValueError(f"{path}: trained for another generator file (sha256 "
                         f"{str(payload.get('generator_sha256'))[:16]}…, this one {generator_sha256[:16]}…)")
    config = payload.get("config")
    state = payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(f"{path}: encoder file without config or weights")
    try:
        encoder = LatentEncoder(int(config["num_ws"]), int(config["w_dim"]), int(config["input_size"]),
                                tuple(int(c) for c in config["channels"]), int(config["hidden"]))
        encoder.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: encoder weights do not match their config ({exc})") from exc
    if not all(torch.isfinite(v).all() for v in encoder.state_dict().values()):
        raise ValueError(f"{path}: encoder weights are not finite")
    encoder.fingerprint = "encoder-" + sha256_file(path)[:24]
    return encoder.eval().requires_grad_(False).to(device)
