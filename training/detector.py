"""Saving the procedural faces' keypoint detector (alignment/detector.py holds the network, loading and
prediction; ``python -m training.train_detector`` trains it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignment.detector import FORMAT, KeypointDetector
from training.model_files import save_model_file


def save_detector(det: KeypointDetector, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write ``det`` (float32 weights) to ``path`` atomically in the ``FORMAT`` layout."""
    save_model_file(det, det.config, path, FORMAT, meta)
