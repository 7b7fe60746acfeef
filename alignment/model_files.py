"""The file layout of the small networks in alignment/data (keypoint detector, corner refiner):
``{"format": FORMAT, "config": {...}, "state_dict": {...}, "meta": {...}}``, read with
``torch.load(weights_only=True)`` (no pickled code runs). training/model_files.py writes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def read_model_file(path: Path, file_format: str, what: str, error: type[Exception]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(config, state_dict, meta) of a file written by training/model_files.py's ``save_model_file``;
    raises ``error`` naming the file and what is wrong (missing, unreadable, another format, missing
    parts). ``what`` names the kind of file in the messages, e.g. "keypoint detector"."""
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
