"""How many procedural faces a second the renderer makes: per core, then with N processes.

A GPU trainer is fed by ``train_generator --workers N`` renderer processes; this says how many
images a second they can supply (the cap on a GPU run), measured before the run:

    python -m training.renderer_rate --seconds 10 --workers 15
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np

from training import faces
from training.train_generator import params_for_z


def _render_for(seconds: float, size: int, batch: int, seed: int) -> int:
    """Render batches of ``batch`` faces for ``seconds``; returns how many images were made."""
    rng = np.random.default_rng(seed)
    made, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        faces.render_batch(params_for_z(rng.standard_normal((batch, faces.NUM_PARAMS)).astype(np.float32)), size=size)
        made += batch
    return made


def _worker(args: tuple[float, int, int, int]) -> int:
    os.environ["OMP_NUM_THREADS"] = "1"
    return _render_for(*args)


def measure(seconds: float, workers: int, size: int = 128, batch: int = 16) -> dict[str, float]:
    """Images a second with one process and with ``workers`` processes at once."""
    one = _render_for(seconds, size, batch, 0) / seconds
    with mp.get_context("fork").Pool(workers) as pool:
        started = time.perf_counter()
        made = sum(pool.map(_worker, [(seconds, size, batch, k + 1) for k in range(workers)]))
        elapsed = time.perf_counter() - started
    return {"per_process": one, "workers": workers, "all_workers": made / elapsed, "cpu_count": os.cpu_count() or 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args(argv)
    figures = measure(args.seconds, args.workers, args.size)
    print(f"renderer at {args.size}²: {figures['per_process']:.0f} images/s in one process; "
          f"{figures['all_workers']:.0f} images/s with {args.workers} processes "
          f"({figures['cpu_count']:.0f} CPUs)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
