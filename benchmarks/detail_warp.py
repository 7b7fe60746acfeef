"""Seconds to carry a drag's motion onto the picture's own pixels (``motion.transfer_detail``) by crop size.

The flow, region and model pictures are those of a real drag's shape on a 128² model (a smooth
rotation of the lower half, the region a disk); the native crop is random detail at each size. What it
times is the part of an edit that grows with the layer: warping the crop, the model's residual, the
pins that take the handles the rest of the way. Medians over ``--rounds`` after one warm-up.

Usage::

    python benchmarks/detail_warp.py --sizes 512 1024 2048 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.engine import motion  # noqa: E402

MODEL = 128


def inputs(size: int) -> dict[str, object]:
    """A 128² model's drag (flow, soft region, pictures) and a ``size``² native crop."""
    rng = np.random.default_rng(size)
    ys, xs = torch.meshgrid(torch.arange(MODEL, dtype=torch.float32), torch.arange(MODEL, dtype=torch.float32),
                            indexing="ij")
    angle = 0.05
    cx, cy = 64.0, 80.0
    u = (np.cos(angle) - 1) * (xs - cx) - np.sin(angle) * (ys - cy)
    v = np.sin(angle) * (xs - cx) + (np.cos(angle) - 1) * (ys - cy)
    disk = (((xs - cx) ** 2 + (ys - cy) ** 2) < 30 ** 2).float()
    flow = torch.stack([u * disk, v * disk])[None]
    region = disk[None, None]
    before = torch.rand(1, 3, MODEL, MODEL) * 2 - 1
    after = motion.warp(before, flow)
    native = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    crop_to_model = np.array([[MODEL / size, 0, 0.5 * MODEL / size - 0.5], [0, MODEL / size, 0.5 * MODEL / size - 0.5]])
    pins = (np.array([[50.0, 90.0], [78.0, 90.0]]), np.array([[49.0, 92.0], [79.0, 92.0]]))
    return dict(native=native, crop_to_model=crop_to_model, model_size=(MODEL, MODEL), flow=flow, region=region,
                before=before, after=after, pins=pins)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="crop sides, pixels")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        kw = inputs(size)
        times = []
        for round_ in range(args.rounds + 1):
            started = time.perf_counter()
            motion.transfer_detail(**kw)  # type: ignore[arg-type]
            if round_:
                times.append(time.perf_counter() - started)
        rows.append({"size": size, "seconds_median": statistics.median(times), "seconds_max": max(times)})
        print(f"{size}² crop: {statistics.median(times):.3f} s (max {max(times):.3f}) on {args.threads} threads",
              flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=1)
                             + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
