"""Seconds per drag step and peak memory: reference mode (the official step) vs fast mode.

Random-weight generators of the official shapes (z_dim = w_dim = 512, 8 mapping layers):
256² (channel_base 16384, channel_max 512), 512² (channel_base 32768, channel_max 512, FFHQ-512) and
1024² (FFHQ-1024); 64² (channel_max 64) is a seconds-long configuration for dry runs.

Every measurement runs in its own child process, so its peak RSS (``ru_maxrss``) belongs to that
configuration alone; the children of one run are interleaved (reference, fast, reference, fast, ...)
so that load on a shared machine hits both modes alike, and the table reports medians over rounds.
CUDA (``--device cuda``): peak is ``torch.cuda.max_memory_allocated`` and steps are synchronised.

Usage::

    python benchmarks/drag_step.py                         # 256 and 512, 1 and 10 points, 2 threads
    python benchmarks/drag_step.py --resolutions 512 --points 1 --variants reference fast fast-fused \\
        fast-fullres fast-untruncated                      # one lever switched off at a time
    python benchmarks/drag_step.py --mask                  # with a mask (fixed outside a centred disk)
    python benchmarks/drag_step.py --device cuda --resolutions 256 512 1024 --precisions fp32 bf16 \
        --json out.json                                    # fast mode in fp32 and bf16 (reference: fp32 only)

Variants: ``reference`` and ``fast`` are the engine's modes. The ablations switch one fast-mode lever
off: ``fast-whole`` (local synthesis off: the whole feature map is synthesised, as fast mode did
before local synthesis), ``fast-fused`` (fused modulated convolutions), ``fast-fullres`` (features
upsampled to image size and read there), ``fast-untruncated`` (the whole synthesis network runs
every step). Local synthesis applies only without a mask (``--mask`` turns it off by itself).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# benchmarks/inversion.py would shadow the inversion package that the engine imports
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
CONFIGS = {64: dict(channel_base=2048, channel_max=64), 256: dict(channel_base=16384, channel_max=512),
           512: dict(channel_base=32768, channel_max=512), 1024: dict(channel_base=32768, channel_max=512)}
VARIANTS = ("reference", "fast", "fast-whole", "fast-fused", "fast-fullres", "fast-untruncated")


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    """One configuration: build the generator, run warm-up + timed steps, print one JSON line."""
    import numpy as np
    import torch

    import stylegan2
    from backend.engine import DragParams, DragSession
    from backend.engine import session as session_module
    from backend.engine.sources import FullResFeatures
    from backend.engine.synthesis import block_features

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    resolution = args.resolution
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the benchmark's own process: same random generator in every child
        G = stylegan2.Generator(z_dim=512, w_dim=512, img_resolution=resolution, img_channels=3,
                                mapping_kwargs={"num_layers": 8}, **CONFIGS[resolution])
    G = G.eval().requires_grad_(False).to(device)
    z = torch.from_numpy(np.random.RandomState(1).randn(1, 512)).float().to(device)
    with torch.no_grad():
        ws = G.mapping(z, None, truncation_psi=0.7)

    variant = args.variant
    if variant == "fast-fused":
        session_module.block_features = lambda s, w, b, fused_modconv=False, regions=None: block_features(
            s, w, b, True, regions)
    elif variant == "fast-fullres":
        session_module.LowResFeatures = FullResFeatures.from_block  # type: ignore[assignment]
    elif variant == "fast-untruncated":
        session_module.block_features = lambda s, w, b, fused_modconv=False, regions=None: s(
            w, noise_mode="const", return_features=True)[1][b]

    rng = np.random.RandomState(2)
    handles = rng.uniform(0.2, 0.8, size=(args.points, 2)) * (resolution - 1)
    offsets = rng.normal(size=(args.points, 2))
    offsets *= 0.15 * resolution / np.linalg.norm(offsets, axis=1, keepdims=True)
    targets = np.clip(handles + offsets, 0, resolution - 1)
    mask = None
    if args.mask:
        yy, xx = np.mgrid[:resolution, :resolution]
        mask = (((yy - resolution / 2) ** 2 + (xx - resolution / 2) ** 2) <= (0.35 * resolution) ** 2)
        mask = mask.astype(np.float32)
    mode = "reference" if variant == "reference" else "fast"
    # CPU: every step read back (per-step times). Other devices: the timed steps are queued as one
    # batch without host synchronisation (the engine's default there) and timed together.
    queued = device.type != "cpu" and mode == "fast"
    # official settings (block 5, r1 3, r2 12); the 64² dry-run generator has 5 blocks and needs r1 >= 8
    params = DragParams(max_steps=args.warmup + args.steps, preview_every=0, mode=mode, precision=args.precision,
                        sync_every=args.steps if queued else 1, feature_block=min(5, G.synthesis.num_blocks - 1),
                        r1=max(3.0, 512 / resolution), local_synthesis=variant != "fast-whole")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    baseline_rss = current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline_cuda = torch.cuda.memory_allocated()
    session = DragSession(G, ws, [tuple(p) for p in handles], [tuple(p) for p in targets], mask=mask,
                          params=params)
    seconds = []
    sync()
    started = time.perf_counter()
    for _ in range(args.warmup):
        assert not session.step().done
        sync()
        now = time.perf_counter()
        seconds.append(now - started)
        started = now
    if queued:
        steps = list(session.run())
        sync()
        assert len(steps) == args.steps and not any(step.done for step in steps)
        seconds += [(time.perf_counter() - started) / args.steps] * args.steps
    for step in session.run():
        sync()
        now = time.perf_counter()
        seconds.append(now - started)
        started = now
        assert not step.done
    assert len(seconds) == args.warmup + args.steps
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    result = dict(variant=variant, precision=args.precision, resolution=resolution, points=args.points,
                  mask=bool(args.mask),
                  step_seconds=seconds[args.warmup:], peak_rss=peak_rss, baseline_rss=baseline_rss,
                  threads=torch.get_num_threads(), device=str(device))
    if device.type == "cuda":
        result["peak_cuda"] = torch.cuda.max_memory_allocated()
        result["baseline_cuda"] = baseline_cuda
    started = time.perf_counter()
    session.image()
    sync()
    result["image_seconds"] = time.perf_counter() - started
    print("RESULT " + json.dumps(result), flush=True)


def run_child(args: argparse.Namespace, variant: str, resolution: int, points: int, precision: str = "fp32") -> dict:
    command = [sys.executable, __file__, "--child", "--variant", variant, "--resolution", str(resolution),
               "--precision", precision,
               "--points", str(points), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--device", args.device] + (["--mask"] if args.mask else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {variant} {resolution} {points} failed:\n{completed.stderr[-3000:]}")


def gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512], choices=sorted(CONFIGS))
    parser.add_argument("--points", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--variants", nargs="+", default=["reference", "fast"], choices=VARIANTS)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every configuration")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per child (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mask", action="store_true", help="edit with a mask (fixed outside a centred disk)")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "auto"],
                        help="precisions of the fast variants (reference mode is always fp32)")
    parser.add_argument("--json", help="also write every child's result and the table rows to this file")
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="fast", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.points = args.points[0]
        child(args)
        return

    runs = [(v, "fp32") if v == "reference" else (v, p) for v in args.variants for p in args.precisions]
    runs = list(dict.fromkeys(runs))
    results: dict[tuple[str, str, int, int], list[dict]] = {}
    total = args.rounds * len(args.resolutions) * len(args.points) * len(runs)
    done = 0
    for round_index in range(args.rounds):
        for resolution in args.resolutions:
            for points in args.points:
                order = runs if round_index % 2 == 0 else list(reversed(runs))
                for variant, precision in order:
                    result = run_child(args, variant, resolution, points, precision)
                    results.setdefault((variant, precision, resolution, points), []).append(result)
                    done += 1
                    print(f"[{done}/{total}] {variant} {precision} {resolution}² {points} pt: steps "
                          + " ".join(f"{s:.3f}" for s in result["step_seconds"])
                          + f" s, peak RSS {gib(result['peak_rss'])} GiB", file=sys.stderr, flush=True)

    load = os.getloadavg()
    print(f"\ndrag step benchmark: device {args.device}, {args.threads} threads, mask {args.mask}, "
          f"{args.rounds} interleaved rounds x {args.steps} timed steps (after {args.warmup} warm-up), "
          f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    peak_key = "peak_cuda" if args.device.startswith("cuda") else "peak_rss"
    base_key = "baseline_cuda" if args.device.startswith("cuda") else "baseline_rss"
    header = (f"{'res':>4} {'pts':>3} {'variant':<22} {'s/step (median)':>15} {'min':>7} {'max':>7} "
              f"{'peak GiB':>8} {'peak-base':>9} {'image s':>7}  {'speed-up':>8} {'mem ratio':>9} {'(-base)':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for resolution in args.resolutions:
        for points in args.points:
            base = None
            for variant, precision in runs:
                children = results[(variant, precision, resolution, points)]
                steps = [s for run in children for s in run["step_seconds"]]
                median = statistics.median(steps)
                peak = statistics.median(run[peak_key] for run in children)
                above = statistics.median(run[peak_key] - run[base_key] for run in children)
                image = statistics.median(run["image_seconds"] for run in children)
                name = variant if variant == "reference" else f"{variant} {precision}"
                rows.append(dict(resolution=resolution, points=points, variant=variant, precision=precision,
                                 median_s=median, min_s=min(steps), max_s=max(steps), peak_bytes=peak,
                                 peak_above_start_bytes=above, image_s=image,
                                 speedup=(base[0] / median) if base else None,
                                 peak_ratio=(peak / base[1]) if base else None))
                if variant == "reference":
                    base = (median, peak, above)
                ratio = f"{base[0] / median:7.2f}x" if base else ""
                memory = f"{peak / base[1]:8.2f}  {above / base[2]:7.2f}" if base else ""
                print(f"{resolution:>4} {points:>3} {name:<22} {median:>15.3f} {min(steps):>7.3f} "
                      f"{max(steps):>7.3f} {gib(peak):>8} {gib(above):>9} {image:>7.3f}  {ratio:>8} {memory}")
    print("speed-up = reference median / variant median; mem ratio = variant peak / reference peak "
          "(whole process), (-base) the same for peak-base; peak-base = peak minus the RSS before the session started")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            device=args.device, threads=args.threads, rounds=args.rounds, steps=args.steps, warmup=args.warmup,
            mask=bool(args.mask), load_average=load, rows=rows,
            children=[r for rs in results.values() for r in rs]), indent=1))


if __name__ == "__main__":
    main()
