"""Shift-tolerant LPIPS (ST-LPIPS; Ghildyal & Liu, ECCV 2022) defined in our own code.

The PyPI wheel ``stlpips-pytorch`` ships the trained networks as plain state dicts
(``stlpips_pytorch/weights/vST0.0/{vgg,alex}_shift_tolerant.pth``), but its Python modules import
torchvision at import time. We only read those files (``importlib.resources``,
``torch.load(weights_only=True)``) and run them through the network defined here:

* a fixed input scaling ``(x - shift) / scale`` (buffers from the file);
* an anti-aliased trunk (VGG16 or AlexNet) in which every stride-2 step is replaced by a
  stride-1 max-pool (or a stride-1 conv) followed by a depthwise 3x3 binomial blur evaluated
  with stride 2 on a reflect-padded input (pad 2 on each side: the "pad more" BlurPool that
  makes the metric tolerant to small shifts); the blur kernels are buffers in the file;
* five taps (after the last ReLU of each stage), each unit-normalised along channels;
* the squared difference of the two images' taps, averaged over space, weighted per channel
  by a learned non-negative vector (the "linear heads"), and summed over the five taps.

Values are on the ST-LPIPS scale (0 for identical images; roughly 0.1-0.7 for unrelated
natural images); quote them as "ST-LPIPS" wherever they are reported, not as LPIPS.

Cost per 128x128 image (CPU time of one thread on our shared machine, torch 2.13, float32;
``python benchmarks/inversion.py --part lpips-cost``): VGG 0.27 s forward, 0.57 s
forward+backward; AlexNet 0.06 s and 0.17 s. A distance needs the features of both images;
for a fixed target compute them once with :meth:`STLPIPS.features` and use
:meth:`STLPIPS.distance_to`. Cost scales with the pixel count.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["STLPIPS", "load_shipped_state_dict", "SHIPPED_WEIGHT_FILES"]

NetName = Literal["vgg", "alex"]

#: Files inside the ``stlpips_pytorch`` package holding the shift-tolerant networks.
SHIPPED_WEIGHT_FILES: dict[str, str] = {
    "vgg": "weights/vST0.0/vgg_shift_tolerant.pth",
    "alex": "weights/vST0.0/alex_shift_tolerant.pth",
}

# A trunk is described as a flat sequence of operations. Its order is the order of the
# original ``features`` sequential, so the index in a shipped key ("net.sliceS.<index>.weight")
# is the position of that operation here (checked when loading). "tap" is not an operation:
# it marks where a feature map is taken for the distance.
#   ("conv", in_channels, out_channels, kernel, padding)   stride 1
#   ("relu",)
#   ("maxpool", kernel)                                     stride 1
#   ("blur", channels)                                      3x3 binomial, stride 2, reflect pad 2
#   ("tap",)
_Op = tuple


def _vgg16_spec() -> list[_Op]:
    spec: list[_Op] = []
    in_ch = 3
    stages = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
    for stage_index, widths in enumerate(stages):
        if stage_index > 0:
            # VGG's 2x2/2 max-pool becomes a 2x2/1 max-pool then a stride-2 blur.
            spec += [("maxpool", 2), ("blur", in_ch)]
        for width in widths:
            spec += [("conv", in_ch, width, 3, 1), ("relu",)]
            in_ch = width
        spec.append(("tap",))
    return spec


def _alexnet_spec() -> list[_Op]:
    # The first conv runs at stride 1 and the blur (before the ReLU) does its stride-4 share.
    return [
        ("conv", 3, 64, 11, 2), ("blur", 64), ("relu",), ("tap",),
        ("maxpool", 3), ("blur", 64), ("conv", 64, 192, 5, 2), ("relu",), ("tap",),
        ("maxpool", 3), ("blur", 192), ("conv", 192, 384, 3, 1), ("relu",), ("tap",),
        ("conv", 384, 256, 3, 1), ("relu",), ("tap",),
        ("conv", 256, 256, 3, 1), ("relu",), ("tap",),
    ]


_SPECS = {"vgg": _vgg16_spec, "alex": _alexnet_spec}

_BLUR_PAD = 2  # reflect padding on each side of a blur ("pad more": kernel size - 1)


class _BlurDownsample(nn.Module):
    """Depthwise low-pass filter evaluated at stride 2 on a reflect-padded input.

    [N, C, H, W] -> [N, C, (H + 1) // 2 + 1, (W + 1) // 2 + 1]. The kernel is a buffer
    ([C, 1, 3, 3]) filled from the shipped state dict.
    """

    kernel: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.zeros(channels, 1, 3, 3))
        self.same_kernel_everywhere = False  # set by STLPIPS after loading the kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (_BLUR_PAD,) * 4, mode="reflect")
        kernel = self.kernel
        if self.same_kernel_everywhere:
            # Same kernel for every channel (true of the shipped nets): filter all channels as
            # one batch of 1-channel images; PyTorch's CPU grouped conv takes a slow path here.
            n, c, h, w = x.shape
            out = F.conv2d(x.reshape(n * c, 1, h, w), kernel[:1], stride=2)
            return out.reshape(n, c, out.shape[2], out.shape[3])
        return F.conv2d(x, kernel, stride=2, groups=x.shape[1])


class _Trunk(nn.Module):
    """The anti-aliased feature network; returns the tapped feature maps, shallow to deep."""

    def __init__(self, spec: Sequence[_Op]) -> None:
        super().__init__()
        self.spec = [op for op in spec if op[0] != "tap"]
        layers: list[nn.Module] = []
        self.tap_after: list[int] = []  # index of the operation after which a tap is taken
        self.tap_channels: list[int] = []
        channels = 3
        for op in spec:
            kind = op[0]
            if kind == "tap":
                self.tap_after.append(len(layers) - 1)
                self.tap_channels.append(channels)
            elif kind == "conv":
                _, cin, cout, k, pad = op
                layers.append(nn.Conv2d(cin, cout, kernel_size=k, stride=1, padding=pad))
                channels = cout
            elif kind == "relu":
                layers.append(nn.ReLU())
            elif kind == "maxpool":
                layers.append(nn.MaxPool2d(kernel_size=op[1], stride=1))
            elif kind == "blur":
                layers.append(_BlurDownsample(op[1]))
            else:  # pragma: no cover - specs are fixed above
                raise AssertionError(f"unknown trunk operation {op!r}")
        self.layers = nn.ModuleList(layers)

    def min_side(self) -> int:
        """Smallest image side (pixels) for which every layer has a valid input."""
        side = 1
        while self._output_side(side) is None:
            side += 1
        return side

    def _output_side(self, side: int) -> int | None:
        for op in self.spec:
            kind = op[0]
            if kind == "conv":
                k, pad = op[3], op[4]
                if side + 2 * pad < k:
                    return None
                side = side + 2 * pad - k + 1
            elif kind == "maxpool":
                if side < op[1]:
                    return None
                side = side - op[1] + 1
            elif kind == "blur":
                if side <= _BLUR_PAD:  # reflect padding needs pad < size
                    return None
                side = (side + 2 * _BLUR_PAD - 3) // 2 + 1
        return side

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps: list[torch.Tensor] = []
        wanted = set(self.tap_after)
        last = self.tap_after[-1]
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in wanted:
                taps.append(x)
            if index == last:
                break  # later layers (none in the shipped nets) would not contribute
        return taps


def _unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """Divide every spatial position's feature vector by its L2 norm (over channels).

    Matches the reference ``x / (||x|| + 1e-10)`` to within 1e-10 relative, but puts the epsilon
    inside the square root so the gradient stays finite where a ReLU map is all zero.
    """
    norm = torch.sqrt(features.square().sum(dim=1, keepdim=True) + 1e-20)
    return features / (norm + 1e-10)


def load_shipped_state_dict(net: NetName) -> dict[str, torch.Tensor]:
    """The state dict shipped by the ``stlpips-pytorch`` wheel for ``net`` ("vgg" or "alex").

    Read with ``importlib.resources`` and ``torch.load(weights_only=True)``; the wheel's Python
    modules are not imported (only its empty top-level ``__init__``).
    """
    if net not in SHIPPED_WEIGHT_FILES:
        raise ValueError(f"net must be one of {sorted(SHIPPED_WEIGHT_FILES)}, got {net!r}")
    try:
        root = importlib.resources.files("stlpips_pytorch")
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "ST-LPIPS weights not found: the 'stlpips-pytorch' package is not installed "
            "(pip install stlpips-pytorch; it is a dependency of this project)"
        ) from exc
    resource = root.joinpath(SHIPPED_WEIGHT_FILES[net])
    if not resource.is_file():
        raise RuntimeError(f"ST-LPIPS weights file missing from the stlpips-pytorch package: {resource}")
    with resource.open("rb") as handle:
        state = torch.load(handle, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise RuntimeError(f"unexpected content in {resource}: {type(state).__name__}")
    return state


_TRUNK_KEY = re.compile(r"^net\.slice\d+\.(\d+)\.(weight|bias|filt)$")
_HEAD_KEY = re.compile(r"^lin(\d+)\.model\.1\.weight$")


class STLPIPS(nn.Module):
    """Shift-tolerant LPIPS distance with the shipped VGG16 or AlexNet weights.

    ``STLPIPS(net="vgg")(img0, img1)`` -> [N] distances for images [N, 3, H, W] with nominal
    range [-1, 1] (either batch may be 1 and is then broadcast). Differentiable with respect to
    the images; the network's parameters are frozen (``requires_grad=False``). There is no
    dropout or batch norm, so train/eval mode give identical values.

    ``shipped_keys`` lists every key of the shipped state dict; all of them are loaded (strict).

    ``weights="random"`` builds the same shapes without the wheel (seeded random convolutions,
    binomial blur kernels, positive head weights): its values mean nothing, its cost is the real
    one, which is what timing on a machine without ``stlpips-pytorch`` needs (``shipped_keys`` is
    empty then).
    """

    input_shift: torch.Tensor
    input_scale: torch.Tensor

    def __init__(self, net: NetName = "vgg", weights: Literal["shipped", "random"] = "shipped") -> None:
        super().__init__()
        if weights not in ("shipped", "random"):
            raise ValueError(f"weights must be 'shipped' or 'random', got {weights!r}")
        if net not in _SPECS:
            raise ValueError(f"net must be 'vgg' or 'alex', got {net!r}")
        self.net_name = net
        self.register_buffer("input_shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("input_scale", torch.ones(1, 3, 1, 1))
        self.trunk = _Trunk(_SPECS[net]())
        # One non-negative weight per channel of each tap (the shipped 1x1 "linear" convs).
        self.head_weights = nn.ParameterList(
            [nn.Parameter(torch.zeros(c)) for c in self.trunk.tap_channels]
        )
        self._min_side = self.trunk.min_side()
        self.shipped_keys: tuple[str, ...] = ()
        if weights == "shipped":
            shipped = load_shipped_state_dict(net)
            self.shipped_keys = tuple(shipped)
            self.load_state_dict(self._translate(shipped), strict=True)
        else:
            self._randomise()
        self.requires_grad_(False)
        for layer in self.trunk.layers:
            if isinstance(layer, _BlurDownsample):
                layer.same_kernel_everywhere = bool((layer.kernel == layer.kernel[:1]).all())

    def _randomise(self) -> None:
        """Seeded random weights of the shipped shapes (timing only; see the class docstring)."""
        gen = torch.Generator().manual_seed(0)
        binomial = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(binomial, binomial) / 16
        with torch.no_grad():
            for layer in self.trunk.layers:
                if isinstance(layer, nn.Conv2d):
                    fan_in = layer.weight[0].numel()
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                    assert layer.bias is not None
                    layer.bias.zero_()
                elif isinstance(layer, _BlurDownsample):
                    layer.kernel.copy_(kernel.expand_as(layer.kernel))
            for head in self.head_weights:
                head.copy_(torch.rand(head.shape, generator=gen) / head.numel())

    def _translate(self, shipped: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename the shipped keys to ours; every shipped key must find a place."""
        ours: dict[str, torch.Tensor] = {}
        unused: list[str] = []
        for key, value in shipped.items():
            trunk = _TRUNK_KEY.match(key)
            head = _HEAD_KEY.match(key)
            if key == "scaling_layer.shift":
                ours["input_shift"] = value
            elif key == "scaling_layer.scale":
                ours["input_scale"] = value
            elif trunk is not None:
                index, field = int(trunk.group(1)), trunk.group(2)
                if index >= len(self.trunk.layers):
                    unused.append(key)
                    continue
                layer = self.trunk.layers[index]
                expected = _BlurDownsample if field == "filt" else nn.Conv2d
                if not isinstance(layer, expected):
                    raise RuntimeError(
                        f"shipped key {key!r} is for a {expected.__name__} but operation {index} "
                        f"of our {self.net_name} trunk is {type(layer).__name__}"
                    )
                ours[f"trunk.layers.{index}.{'kernel' if field == 'filt' else field}"] = value
            elif head is not None:
                ours[f"head_weights.{int(head.group(1))}"] = value.reshape(-1)
            else:
                unused.append(key)
        if unused:
            raise RuntimeError(
                f"shipped ST-LPIPS {self.net_name} keys with no place in our network: {unused}"
            )
        return ours

    def _check(self, img: torch.Tensor, name: str) -> None:
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(img).__name__}")
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f"{name} must have shape [N, 3, H, W], got {list(img.shape)}")
        if min(img.shape[2], img.shape[3]) < self._min_side:
            raise ValueError(
                f"{name} is {img.shape[3]}x{img.shape[2]} pixels; ST-LPIPS ({self.net_name}) needs "
                f"at least {self._min_side}x{self._min_side}"
            )

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised tapped features of ``img`` [N, 3, H, W] in [-1, 1] (five maps).

        Compute these once for a fixed target and pass them to :meth:`distance_to`.
        """
        self._check(img, "img")
        x = (img.to(self.input_shift.dtype) - self.input_shift) / self.input_scale
        return [_unit_normalise(t) for t in self.trunk(x)]

    def distance_to(self, img: torch.Tensor, target_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N] distances from ``img`` [N, 3, H, W] to features returned by :meth:`features`."""
        feats = self.features(img)
        if len(target_features) != len(feats) or any(
            a.shape[1:] != b.shape[1:] for a, b in zip(feats, target_features)
        ):
            raise ValueError("target_features do not match img (different image size or network)")
        total: torch.Tensor | None = None
        for weights, mine, theirs in zip(self.head_weights, feats, target_features):
            # mean over space of sum_c w_c d_c == sum_c w_c mean(d_c): average first (cheaper).
            per_channel = (mine - theirs).square().mean(dim=(2, 3))  # [N, C]
            term = per_channel @ weights
            total = term if total is None else total + term
        assert total is not None
        return total

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        """[N] ST-LPIPS distances between ``img0`` and ``img1`` ([N or 1, 3, H, W], [-1, 1])."""
        self._check(img0, "img0")
        self._check(img1, "img1")
        if img0.shape[2:] != img1.shape[2:]:
            raise ValueError(f"images differ in size: {list(img0.shape)} vs {list(img1.shape)}")
        if img0.shape[0] != img1.shape[0] and 1 not in (img0.shape[0], img1.shape[0]):
            raise ValueError(f"batch sizes differ and neither is 1: {img0.shape[0]} vs {img1.shape[0]}")
        return self.distance_to(img0, self.features(img1))
