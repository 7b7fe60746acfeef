"""Synthesis up to the feature block, with the modulated convolutions *not* fused.

``G.synthesis.features(ws, stop_block)`` runs blocks ``0..stop_block`` with the blocks' default fused
modulated convolution (per-sample weights, one grouped convolution). In a drag step the gradient
only has to reach ``ws``; with fused weights, autograd computes a full weight gradient
(``O x I x 3 x 3`` over every pixel, as expensive as the convolution itself) for every layer just
to get the style gradient. Unfused (``x * styles``, shared convolution, ``* dcoefs``), the style
gradient is a cheap per-channel reduction and the shared weights need no gradient: the backward
pass costs about one forward instead of two. Values differ from the fused form only by float
rounding (about 1e-6 relative).

``stylegan2``'s ``features()`` does not take ``fused_modconv``, so this walks the public blocks
list and splits ``ws`` the way the synthesis network does (block ``i`` reads ``num_conv + num_torgb``
vectors starting after the previous blocks' convolutions).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .regions import Region


def block_features(synthesis: Any, ws: torch.Tensor, stop_block: int, fused_modconv: bool = False,
                   regions: list[Region] | None = None) -> torch.Tensor:
    """Output ``x`` of block ``stop_block`` (``[N, C, h, w]``) from ``ws [N, num_ws, w_dim]``, const noise.

    ``regions`` (disjoint ``(top, bottom, left, right)`` boxes of the ``h x w`` map): only those are
    synthesised (see :mod:`backend.engine.regions`); the returned map holds them in place and zeros
    elsewhere, so every read inside a box is the same as on the whole map.
    """
    if regions:
        parts = synthesis.features_in_regions(ws.to(torch.float32), stop_block, regions, noise_mode="const",
                                              fused_modconv=fused_modconv)
        height, width = synthesis.block_shape(stop_block)
        whole = None
        for (top, bottom, left, right), part in zip(regions, parts):
            placed = F.pad(part, [left, width - right, top, height - bottom])
            whole = placed if whole is None else whole + placed
        assert whole is not None
        return whole
    x = None
    first = 0
    ws = ws.to(torch.float32)
    for index, block in enumerate(synthesis.blocks()):
        block_ws = ws.narrow(1, first, block.num_conv + block.num_torgb)
        first += block.num_conv
        x, _ = block(x, None, block_ws, noise_mode="const", fused_modconv=fused_modconv, with_rgb=False)
        if index == stop_block:
            return x
    raise ValueError(f"stop_block {stop_block} is out of range ({synthesis.num_blocks} blocks)")
