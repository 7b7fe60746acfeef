"""Forward-pass timings of our StyleGAN2 generator (random weights, official shapes).

For the official 256² (channel_base 16384) and 512² (channel_base 32768, FFHQ-512) configurations:
time of the mapping network, the full synthesis, and the synthesis stopped after block 5 (what the
drag engine runs while optimising), with reference and fast ops, on CPU and on CUDA when present.
Prints a table; medians over ``--repeats`` runs after one warm-up.

    python benchmarks/forward.py                 # CPU, 2 threads
    python benchmarks/forward.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import stylegan2
from stylegan2 import ops

CONFIGS = {
    "256": dict(z_dim=512, w_dim=512, img_resolution=256, img_channels=3, channel_base=16384, channel_max=512,
                mapping_kwargs=dict(num_layers=8), num_fp16_res=0, conv_clamp=256),
    "512": dict(z_dim=512, w_dim=512, img_resolution=512, img_channels=3, channel_base=32768, channel_max=512,
                mapping_kwargs=dict(num_layers=8), num_fp16_res=0, conv_clamp=256),
}


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", default="256,512")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(f"device {device} ({where}), torch {torch.__version__}, batch 1, fp32, noise_mode const")
    print(f"{'config':>6} {'ops':>9} {'mapping ms':>11} {'synthesis ms':>13} {'to block 5 ms':>14} {'block5/full':>12}")
    for name in args.configs.split(","):
        torch.manual_seed(0)
        G = stylegan2.Generator(**CONFIGS[name]).eval().requires_grad_(False).to(device)
        z = torch.randn(1, G.z_dim, device=device)
        ws = G.mapping(z, truncation_psi=0.7)
        # Reference and fast ops interleaved round by round, so that load drift on a shared
        # machine hits both alike; medians per mode.
        results: dict[bool, list[list[float]]] = {False: [], True: []}
        with torch.no_grad():
            for _ in range(args.repeats):
                for fast in (False, True):
                    previous = ops.set_fast_ops(fast)
                    try:
                        results[fast].append([
                            timed(lambda G=G, z=z: G.mapping(z, truncation_psi=0.7), 1, device),
                            timed(lambda G=G, ws=ws: G.synthesis(ws, noise_mode="const"), 1, device),
                            timed(lambda G=G, ws=ws: G.synthesis.features(ws, stop_block=5), 1, device),
                        ])
                    finally:
                        ops.set_fast_ops(previous)
        for fast in (False, True):
            t_map, t_full, t_b5 = (statistics.median(col) for col in zip(*results[fast]))
            print(f"{name + '²':>6} {'fast' if fast else 'reference':>9} {t_map * 1e3:11.2f} {t_full * 1e3:13.1f} "
                  f"{t_b5 * 1e3:14.1f} {t_b5 / t_full:12.2f}", flush=True)


if __name__ == "__main__":
    main()
