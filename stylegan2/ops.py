"""Low-level StyleGAN2 operations in plain PyTorch.

Each op has a *reference* form that follows NVIDIA's reference implementation step by step
(zero-insertion upsampling, explicit padding, depthwise FIR convolution) and, where it pays, a
*fast* form with the same interface that computes the same function with fewer or cheaper
kernels.  ``tests/stylegan2/test_ops.py`` checks every fast form against its reference.

Conventions follow NVIDIA's code so that official checkpoints give the same numbers:
padding lists are ``[x0, x1, y0, y1]``, filters are prepared by :func:`setup_filter`, and
``flip_weight=True`` means correlation (what ``torch.nn.functional.conv2d`` computes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Ops default to the fast forms; tests and the reference drag mode can switch them off.
_USE_FAST_OPS = True


def set_fast_ops(enabled: bool) -> bool:
    """Select fast (True) or reference (False) op implementations; returns the previous setting."""
    global _USE_FAST_OPS
    previous = _USE_FAST_OPS
    _USE_FAST_OPS = bool(enabled)
    return previous


# ----------------------------------------------------------------------------------------------
# Activation with bias, gain and clamp.

ACTIVATION_GAINS = {"linear": 1.0, "relu": math.sqrt(2.0), "lrelu": math.sqrt(2.0)}


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    act: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
    alpha: float = 0.2,
    dim: int = 1,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain)``: NVIDIA's ``bias_act`` for the activations StyleGAN2 uses.

    ``gain=None`` means the activation's default gain (sqrt(2) for (l)relu, 1 for linear).
    The bias is broadcast along ``dim``.
    """
    if act not in ACTIVATION_GAINS:
        raise ValueError(f"unsupported activation {act!r}; expected one of {sorted(ACTIVATION_GAINS)}")
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    elif act == "relu":
        x = F.relu(x)
    g = ACTIVATION_GAINS[act] if gain is None else float(gain)
    if g != 1:
        x = x * g
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ----------------------------------------------------------------------------------------------
# FIR filtering with up/downsampling.


def setup_filter(f: Sequence[float] | torch.Tensor | None, normalize: bool = True, gain: float = 1.0) -> torch.Tensor:
    """Prepare a FIR filter: a 1-D list of taps becomes the 2-D outer product (as NVIDIA's code
    does for filters of fewer than 8 taps), normalised to unit DC gain."""
    t = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if t.ndim == 0:
        t = t[None]
    if t.ndim == 1:
        t = torch.outer(t, t)
    if t.ndim != 2:
        raise ValueError(f"filter must be 1-D or 2-D, got shape {tuple(t.shape)}")
    if normalize:
        t = t / t.sum()
    return t * gain


def _parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    px0, px1, py0, py1 = padding
    return px0, px1, py0, py1


def _pad_or_crop(x: torch.Tensor, px0: int, px1: int, py0: int, py1: int) -> torch.Tensor:
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    return x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with the 2-D FIR filter ``f``, downsample.

    ``x`` is ``[N, C, H, W]``; ``f`` is ``[fh, fw]`` from :func:`setup_filter` (or None for
    identity).  The fast form replaces zero insertion + convolution by a strided transposed
    convolution when ``up > 1``; both compute the same values.
    """
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if _USE_FAST_OPS and up > 1 and down == 1:
        return _upfirdn2d_up_fast(x, f, up, _parse_padding(padding), gain)
    return _upfirdn2d_ref(x, f, up, down, _parse_padding(padding), gain)


def _upfirdn2d_ref(
    x: torch.Tensor, f: torch.Tensor, up: int, down: int, padding: tuple[int, int, int, int], gain: float
) -> torch.Tensor:
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = _pad_or_crop(x, px0, px1, py0, py1)
    # NVIDIA's ops compute a true convolution: flip the filter for conv2d's correlation.
    kernel = (f * (gain ** (f.ndim / 2))).to(x.dtype).flip([0, 1])
    kernel = kernel[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, kernel, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def _upfirdn2d_up_fast(
    x: torch.Tensor, f: torch.Tensor, up: int, padding: tuple[int, int, int, int], gain: float
) -> torch.Tensor:
    # Zero insertion followed by a convolution is a strided transposed convolution; this skips
    # materialising the (mostly zero) upsampled tensor.  The transposed conv produces the
    # "full" output; the requested padding is then a crop (or an extra zero pad) of it.
    n, c, h, w = x.shape
    fh, fw = f.shape
    px0, px1, py0, py1 = padding
    kernel = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    kernel = kernel[None, None].repeat(c, 1, 1, 1)
    y = F.conv_transpose2d(x, kernel, stride=up, groups=c)
    # Full transposed output covers upsampled positions [-(fh-1), (h-1)*up + 1 + ...); the
    # reference output with pad p0 starts at position -p0 + (fh - 1) of the padded input.
    full_h = (h - 1) * up + fh
    full_w = (w - 1) * up + fw
    out_h = h * up + py0 + py1 - fh + 1
    out_w = w * up + px0 + px1 - fw + 1
    y0 = (fh - 1) - py0
    x0 = (fw - 1) - px0
    pad_top, pad_left = max(-y0, 0), max(-x0, 0)
    pad_bottom = max(y0 + out_h - full_h, 0)
    pad_right = max(x0 + out_w - full_w, 0)
    if pad_top or pad_left or pad_bottom or pad_right:
        y = F.pad(y, [pad_left, pad_right, pad_top, pad_bottom])
    ys, xs = y0 + pad_top, x0 + pad_left
    return y[:, :, ys : ys + out_h, xs : xs + out_w]


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x (or ``up``x) FIR upsampling that keeps the image aligned, as NVIDIA's ``upsample2d``."""
    fh, fw = f.shape
    p = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, gain=up * up)


# ----------------------------------------------------------------------------------------------
# Convolution with optional upsampling.


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """2-D convolution with optional FIR up/downsampling, padding applied once at the start.

    Same semantics as NVIDIA's ``conv2d_resample``: ``padding`` is relative to the upsampled
    image and ``flip_weight=False`` means a true convolution.
    """
    out_channels, in_per_group, kh, kw = w.shape
    fh, fw = (1, 1) if f is None else f.shape
    px0, px1, py0, py1 = padding, padding, padding, padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    def conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, pad: Sequence[int] = (0, 0),
             transpose: bool = False, flip: bool = True) -> torch.Tensor:
        if not flip and (kw > 1 or kh > 1):
            w = w.flip([2, 3])
        if transpose:
            return F.conv_transpose2d(x, w, stride=stride, padding=list(pad), groups=groups)
        return F.conv2d(x, w, stride=stride, padding=list(pad), groups=groups)

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return conv(x, w, flip=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = conv(x, w, flip=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return conv(x, w, stride=down, flip=flip_weight)
    if up > 1:
        # Transposed convolution does the upsampling; the FIR filter then smooths.
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
            w = w.transpose(1, 2).reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = conv(x, w, stride=up, pad=(pyt, pxt), transpose=True, flip=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return conv(x, w, pad=(py0, px0), flip=flip_weight)
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up * up)
    x = conv(x, w, flip=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down)
    return x


# ----------------------------------------------------------------------------------------------
# Modulated convolution.


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2's modulated (and demodulated) convolution.

    Args:
        x: ``[N, I, H, W]`` activations.
        weight: ``[O, I, kh, kw]`` base weights.
        styles: ``[N, I]`` per-sample modulation.
        noise: broadcastable to ``[N, O, H', W']`` (already scaled by its strength), or None.
    Returns ``[N, O, H', W']``.

    ``fused_modconv=True`` folds modulation and demodulation into per-sample weights and runs
    one grouped convolution (NVIDIA's default for inference); ``False`` scales activations
    before and after a shared convolution (cheaper for large batches).
    """
    n = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        # Pre-normalise to keep fp16 from overflowing (as NVIDIA's code).
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate and fused_modconv:
        assert w is not None
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    elif demodulate:
        # sum_{i,k} (W[o,i,k] s[i])^2 = sum_i s[i]^2 sum_k W[o,i,k]^2: a [N, I] x [I, O] product instead of
        # a per-sample weight tensor, which autograd would also keep for the backward pass (one
        # weight-sized tensor per layer; the largest cost of a drag step that synthesises small regions).
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]
    if demodulate and fused_modconv:
        assert w is not None and dcoefs is not None
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding,
                            flip_weight=flip_weight)
        if demodulate and noise is not None:
            assert dcoefs is not None
            x = torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))
        elif demodulate:
            assert dcoefs is not None
            x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        elif noise is not None:
            x = x + noise.to(x.dtype)
        return x

    assert w is not None
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, padding=padding, groups=n,
                        flip_weight=flip_weight)
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
