"""Writing the file layout of the small networks in alignment/data (keypoint detector, corner refiner):
``{"format": FORMAT, "config": {...}, "state_dict": {...}, "meta": {...}}``, written atomically;
alignment/model_files.py reads it with ``torch.load(weights_only=True)`` (no pickled code runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def save_model_file(net: nn.Module, config: dict[str, Any], path: str | Path, file_format: str,
                    meta: dict[str, Any] | None = None) -> None:
    """Write ``net``'s weights (on the CPU) with ``config`` and ``meta`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": file_format, "config": dict(config),
            "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "meta": dict(meta or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
