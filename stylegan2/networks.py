"""StyleGAN2 generator (Karras et al. 2020, configs E/F) in plain PyTorch.

Module, parameter and buffer names mirror NVIDIA's ``training/networks_stylegan2.py`` so that an
official ``G_ema`` state dict loads with ``strict=True``; constructor keywords mirror its
``init_kwargs``.  Unlike the official networks this one also

* supports non-square outputs (``img_width``; StyleGAN-Human is 512x256, i.e. blocks of
  4x2 ... 512x256),
* returns the per-block feature maps DragGAN reads, and can stop after a chosen block, and
* runs fp32 everywhere, with fp16 blocks only on CUDA when asked (``num_fp16_res``).

Images are ``[N, C, H, W]`` float with nominal range [-1, 1] (not clamped).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import ops

NOISE_MODES = ("const", "random", "none")

Region = tuple[int, int, int, int]
"""A rectangle of one block's feature map: ``(top, bottom, left, right)`` in that map's pixels, half-open."""

# How far (in input pixels, each side) an upsampling layer's output on a region reads beyond the
# region's half-size footprint: the 3x3 transposed convolution and the 4-tap FIR filter together
# reach 1 input pixel past it; 2 keeps a margin (tests/stylegan2/test_regions.py checks that 1 is
# already exact, so 2 is not load-bearing).
UP_MARGIN = 2
WHOLE_BLOCK_COVER = 0.5  # features_in_regions computes a block whole where the regions cover this much of it


def _clamp_region(top: int, bottom: int, left: int, right: int, height: int, width: int) -> Region:
    return max(top, 0), min(bottom, height), max(left, 0), min(right, width)


def _crop(x: torch.Tensor, have: Region, want: Region) -> torch.Tensor:
    """``x`` covers ``have``; returns its part covering ``want`` (which must lie inside ``have``)."""
    return x[:, :, want[0] - have[0]: want[1] - have[0], want[2] - have[2]: want[3] - have[2]]


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalised learning rate: weights stored at ``1/lr_multiplier`` scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b: torch.Tensor | None = None
        if self.bias is not None:
            b = self.bias.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return ops.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(nn.Module):
    """z (and optional label c) -> w, broadcast to ``num_ws`` copies; keeps ``w_avg``."""

    w_avg: torch.Tensor
    embed: FullyConnectedLayer

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.998) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """``z [N, z_dim]`` -> ``ws [N, num_ws, w_dim]`` (or ``[N, w_dim]`` when num_ws is None)."""
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must have shape [N, {self.z_dim}], got "
                                 f"{None if z is None else tuple(z.shape)}")
            x = ops.normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"this generator is conditional: c must have shape [N, {self.c_dim}]")
            y = ops.normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        assert x is not None
        for idx in range(self.num_layers):
            layer: FullyConnectedLayer = getattr(self, f"fc{idx}")
            x = layer(x)
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling) + noise + bias + activation."""

    resample_filter: torch.Tensor
    noise_const: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 kernel_size: int = 3, up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: list[int] | None = None, conv_clamp: float | None = None,
                 channels_last: bool = False, width: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.width = resolution if width is None else width  # output width of this layer
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter or [1, 3, 3, 1]))
        self.padding = kernel_size // 2
        self.act_gain = ops.ACTIVATION_GAINS[activation]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, self.width]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0, region: Region | None = None) -> torch.Tensor:
        """``region``: the output pixels ``x`` produces when it is a crop of the layer's input (see
        :meth:`SynthesisNetwork.features_in_regions`); the noise is cut to it. None = the whole map."""
        styles = self.affine(w)
        top, bottom, left, right = region if region is not None else (0, self.resolution, 0, self.width)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, bottom - top, right - left], device=x.device) * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const[top:bottom, left:right] * self.noise_strength
        x = ops.modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                                 resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                                 fused_modconv=fused_modconv)
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain,
                            clamp=act_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels (no demodulation)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = ops.modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return ops.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """Plain equalised-lr convolution; used as the resnet skip connection (``architecture='resnet'``)."""

    resample_filter: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, resample_filter: list[int] | None = None,
                 conv_clamp: float | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.activation = activation
        self.up = up
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter or [1, 3, 3, 1]))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = ops.ACTIVATION_GAINS[activation]
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = ops.conv2d_resample(x, w, f=self.resample_filter, up=self.up, padding=self.padding,
                                flip_weight=(self.up == 1))
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (upsampling conv0), conv1, ToRGB (skip architecture)."""

    resample_filter: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: list[int] | None = None,
                 conv_clamp: float | None = 256, use_fp16: bool = False, fp16_channels_last: bool = False,
                 fused_modconv_default: Any = True, width: int | None = None, **layer_kwargs: Any) -> None:
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown synthesis architecture {architecture!r}")
        super().__init__()
        resample_filter = resample_filter or [1, 3, 3, 1]
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.width = resolution if width is None else width
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, self.width]))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, width=self.width, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, width=self.width,
                                    **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def _run_settings(self, ws: torch.Tensor, force_fp32: bool, fused_modconv: Any
                      ) -> tuple[torch.dtype, torch.memory_format, bool]:
        """(dtype, memory format, fused modulated convolution) for one call: fp16 and channels-last
        only on CUDA blocks built for them; ``fused_modconv`` None/"inference_only" resolved."""
        if ws.device.type != "cuda":
            force_fp32 = True
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == "inference_only":
            fused_modconv = not self.training
        return dtype, memory_format, bool(fused_modconv)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "random", force_fp32: bool = False, fused_modconv: Any = None,
                with_rgb: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``ws [N, num_conv + num_torgb, w_dim]`` -> (features x, image so far).

        ``with_rgb=False`` skips the ToRGB branch (the caller only wants features).
        """
        w_iter = iter(ws.unbind(dim=1))
        dtype, memory_format, fused_modconv = self._run_settings(ws, force_fp32, fused_modconv)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            assert x is not None
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv,
                           gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)

        if not with_rgb:
            return x, None
        if img is not None:
            img = ops.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y
        return x, img

    def forward_region(self, x: torch.Tensor, in_region: Region, out_region: Region, ws: torch.Tensor,
                       noise_mode: str = "random", force_fp32: bool = False, fused_modconv: Any = None
                       ) -> torch.Tensor:
        """Features on ``out_region`` of this block from the previous block's output on ``in_region``.

        ``x [N, C_in, h, w]`` covers ``in_region`` of the previous block's map, which must hold every
        pixel ``out_region`` depends on (:meth:`SynthesisNetwork.region_plan`). Each layer runs on its
        crop with its usual zero padding; the pixels next to a crop edge that is not the map's edge
        see that padding instead of their neighbours and are cut away before the next layer.
        Returns ``[N, C_out, bottom - top, right - left]``; ToRGB is skipped. Not for the first block.
        """
        if self.in_channels == 0:
            raise ValueError("forward_region needs a previous block's output; the first block has none")
        w_iter = iter(ws.unbind(dim=1))
        dtype, memory_format, fused_modconv = self._run_settings(ws, force_fp32, fused_modconv)
        x = x.to(dtype=dtype, memory_format=memory_format)
        up_region = (2 * in_region[0], 2 * in_region[1], 2 * in_region[2], 2 * in_region[3])
        mid_region = _clamp_region(out_region[0] - 1, out_region[1] + 1, out_region[2] - 1, out_region[3] + 1,
                                   self.resolution, self.width)  # what the 3x3 conv1 reads
        gain = math.sqrt(0.5) if self.architecture == "resnet" else 1.0
        h = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv, region=up_region)
        h = _crop(h, up_region, mid_region)
        h = self.conv1(h, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv, gain=gain,
                       region=mid_region)
        h = _crop(h, mid_region, out_region)
        if self.architecture == "resnet":
            h = _crop(self.skip(x, gain=math.sqrt(0.5)), up_region, out_region) + h
        return h


class SynthesisNetwork(nn.Module):
    """ws -> image, through one :class:`SynthesisBlock` per resolution 4, 8, ..., img_resolution."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 4, img_width: int | None = None,
                 **block_kwargs: Any) -> None:
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        img_width = img_resolution if img_width is None else int(img_width)
        # Every block keeps the output's aspect ratio, so the 4-pixel-high first block must have
        # an integer width: 512x256 -> 4x2, 512x384 -> 4x3.
        if (4 * img_width) % img_resolution or img_width <= 0:
            raise ValueError(f"img_width {img_width} does not give an integer width at the 4-pixel block "
                             f"for height {img_resolution}")
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_width = img_width
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(in_channels, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=res >= fp16_resolution,
                                   width=res * img_width // img_resolution, **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    @property
    def num_blocks(self) -> int:
        return len(self.block_resolutions)

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def _split_ws(self, ws: torch.Tensor) -> list[torch.Tensor]:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        block_ws = []
        w_idx = 0
        for block in self.blocks():
            block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv
        return block_ws

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", return_features: bool = False,
                force_fp32: bool = False, fused_modconv: Any = None, **unused: Any
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``ws [N, num_ws, w_dim]`` -> image ``[N, C, H, W]`` (and the list of block outputs).

        ``return_feature`` (NVIDIA/DragGAN spelling) is accepted as a synonym of
        ``return_features``; ``update_emas`` is ignored.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        return_features = return_features or bool(unused.get("return_feature", False))
        features: list[torch.Tensor] = []
        x = img = None
        for block, cur_ws in zip(self.blocks(), self._split_ws(ws)):
            x, img = block(x, img, cur_ws, noise_mode=noise_mode, force_fp32=force_fp32,
                           fused_modconv=fused_modconv)
            features.append(x)
        assert img is not None
        if return_features:
            return img, features
        return img

    def features(self, ws: torch.Tensor, stop_block: int, noise_mode: str = "const",
                 force_fp32: bool = False) -> list[torch.Tensor]:
        """Block outputs 0..``stop_block`` only, skipping every ToRGB and every later block.

        ``features(ws, k)[k]`` equals ``forward(ws, return_features=True)[1][k]`` bit for bit:
        ToRGB never feeds back into the feature path.
        """
        if not 0 <= stop_block < self.num_blocks:
            raise ValueError(f"stop_block must be in [0, {self.num_blocks - 1}], got {stop_block}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        features: list[torch.Tensor] = []
        x = None
        for idx, (block, cur_ws) in enumerate(zip(self.blocks(), self._split_ws(ws))):
            x, _ = block(x, None, cur_ws, noise_mode=noise_mode, force_fp32=force_fp32, with_rgb=False)
            features.append(x)
            if idx == stop_block:
                break
        return features

    def region_plan(self, stop_block: int, region: Region) -> list[Region]:
        """The region of every block ``0..stop_block`` that block ``stop_block``'s output on ``region``
        depends on (conv1: 1 pixel each side; the upsampling conv0: half size plus ``UP_MARGIN``),
        clamped to each map. Entry ``i`` is block ``i``'s region."""
        if not 0 <= stop_block < self.num_blocks:
            raise ValueError(f"stop_block must be in [0, {self.num_blocks - 1}], got {stop_block}")
        height, width = self.block_shape(stop_block)
        top, bottom, left, right = (int(v) for v in region)
        if not (0 <= top < bottom <= height and 0 <= left < right <= width):
            raise ValueError(f"region {region} is not a non-empty (top, bottom, left, right) inside the "
                             f"{height}x{width} map of block {stop_block}")
        plan = [(top, bottom, left, right)]
        for index in range(stop_block, 0, -1):
            height, width = self.block_shape(index)
            top, bottom, left, right = _clamp_region(plan[0][0] - 1, plan[0][1] + 1, plan[0][2] - 1,
                                                     plan[0][3] + 1, height, width)
            height, width = self.block_shape(index - 1)
            plan.insert(0, _clamp_region(top // 2 - UP_MARGIN, -(-bottom // 2) + UP_MARGIN,
                                         left // 2 - UP_MARGIN, -(-right // 2) + UP_MARGIN, height, width))
        return plan

    def features_in_regions(self, ws: torch.Tensor, stop_block: int, regions: list[Region],
                            noise_mode: str = "const", force_fp32: bool = False, fused_modconv: Any = None
                            ) -> list[torch.Tensor]:
        """Block ``stop_block``'s output on each region, computing every block only where it matters.

        Entry ``i`` is ``[N, C, bottom - top, right - left]`` and equals
        ``features(ws, stop_block)[stop_block][:, :, top:bottom, left:right]`` up to float rounding
        (convolutions of a different size may sum in a different order). The blocks that the regions
        together cover at least half of (``WHOLE_BLOCK_COVER``) are computed whole, once, and shared;
        from there on each region follows its own :meth:`region_plan`. For work that reads the
        features only near a few points (a drag step without a mask), this skips most of the
        high-resolution blocks.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        plans = [self.region_plan(stop_block, region) for region in regions]
        whole = [(0, h, 0, w) for h, w in (self.block_shape(i) for i in range(stop_block + 1))]
        # A block is computed whole, once, where the regions together cover at least half of it: one
        # big convolution beats several overlapping crops there.
        def covered(index: int) -> float:
            height, width = whole[index][1], whole[index][3]
            return sum((p[index][1] - p[index][0]) * (p[index][3] - p[index][2]) for p in plans) / (height * width)

        shared = max((i for i in range(stop_block + 1) if covered(i) >= WHOLE_BLOCK_COVER), default=0)
        blocks = self.blocks()
        block_ws = self._split_ws(ws)
        x = None
        for index in range(shared + 1):
            x, _ = blocks[index](x, None, block_ws[index], noise_mode=noise_mode, force_fp32=force_fp32,
                                 fused_modconv=fused_modconv, with_rgb=False)
        assert x is not None
        crops = []
        for plan in plans:
            part = _crop(x, whole[shared], plan[shared])
            for index in range(shared + 1, stop_block + 1):
                part = blocks[index].forward_region(part, plan[index - 1], plan[index], block_ws[index],
                                                    noise_mode=noise_mode, force_fp32=force_fp32,
                                                    fused_modconv=fused_modconv)
            crops.append(part)
        return crops

    def block_shape(self, index: int) -> tuple[int, int]:
        """(height, width) in pixels of block ``index``'s feature map."""
        res = self.block_resolutions[index]
        return res, res * self.img_width // self.img_resolution


class Generator(nn.Module):
    """Mapping + synthesis, with NVIDIA's constructor keywords (plus ``img_width``)."""

    def __init__(self, z_dim: int, w_dim: int, img_resolution: int, img_channels: int = 3, c_dim: int = 0,
                 mapping_kwargs: dict[str, Any] | None = None, synthesis_kwargs: dict[str, Any] | None = None,
                 img_width: int | None = None, **synthesis_kwargs2: Any) -> None:
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {}) or dict(synthesis_kwargs2)
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          img_width=img_width, **synthesis_kwargs)
        self.img_height = img_resolution
        self.img_width = self.synthesis.img_width
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)
        # The keywords that rebuild this network (our checkpoint format stores them).
        self.config: dict[str, Any] = dict(z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution,
                                           img_channels=img_channels, c_dim=c_dim, mapping_kwargs=mapping_kwargs,
                                           synthesis_kwargs=synthesis_kwargs, img_width=self.img_width)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const", input_is_w: bool = False,
                return_features: bool = False, **synthesis_kwargs: Any
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Official call style: ``G(z, c)`` or ``G(ws, None, input_is_w=True)``."""
        if input_is_w:
            ws = z if z.ndim == 3 else z.unsqueeze(1).repeat([1, self.num_ws, 1])
        else:
            ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, return_features=return_features, **synthesis_kwargs)
