"""The one file hash of the project: model files, encoders and benchmark records name files by it.

Standard library only (backend.models runs before torch is installed)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

__all__ = ["CHUNK_BYTES", "sha256_file"]

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path, progress: Callable[[int, int], None] | None = None) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks; progress(done_bytes, total_bytes) after each."""
    path = Path(path)
    digest = hashlib.sha256()
    total = path.stat().st_size if progress else 0
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()
