"""The file layout shared by the small networks in training/models (keypoint detector, corner refiner):
``{"format": FORMAT, "config": {...}, "state_dict": {...}, "meta": {...}}``, written atomically and
read with ``torch.load(weights_only=True)`` (no pickled code runs)."""

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


def read_model_file(path: Path, file_format: str, what: str, error: type[Exception]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(config, state_dict, meta) of a file written by :func:`save_model_file`; raises ``error`` naming
    the file and what is wrong (missing, unreadable, another format, missing parts). ``what`` names
    the kind of file in the messages, e.g. "keypoint detector"."""
    if not path.is_file():
        raise error(f"{what} file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise error(f"cannot read {what} file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != file_format:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise error(f"{path} is not a {what} file (format {got!r}, expected {file_format!r})")
    cfg, state = blob.get("config"), blob.get("state_dict")
    if not isinstance(cfg, dict) or not isinstance(state, dict):
        raise error(f"{path}: missing 'config' or 'state_dict'")
    meta = blob.get("meta", {})
    return cfg, state, meta if isinstance(meta, dict) else {}
