"""bf16 or fp32 for drags on a CPU: what bf16 saves per step and what it does to the tracked points.

Two measurements in one run, interleaved (fp32, bf16, fp32, ...) so that load hits both alike:

* **the trained default model** (faces-128): the fidelity protocol's pairs (the model's own samples, the
  keypoint detector's point on picture A dragged onto B's, 1 point, the server's drag settings, fast mode),
  each drag run once in fp32 and once in bf16 from the same latent. Per pair: seconds per step, steps,
  the largest distance between the two runs' tracked points over the steps they share, and the detector's
  distance to the target after each (MD).
* **a 512² random-weight generator** of the FFHQ-512 shape: the same one-point drag for ``--steps512``
  steps in both precisions: seconds per step and the tracked points' divergence.

Usage::

    python benchmarks/bf16_drags.py --pairs 12 --threads 2 --json docs/bf16-drags.json

``precision="auto"`` picks bf16 where torch reports AMX or AVX512-BF16; the printed ``cpu`` line says
whether this CPU is one (on a CPU without native bf16 the bf16 rows are many times slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.engine import DragParams, DragSession  # noqa: E402
from backend.engine.session import to_uint8  # noqa: E402
from testkit import fidelity  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def cpu_capability() -> str:
    """torch's view of the CPU's vector units (``AVX512``, ``AVX2``...) and its bf16 verdict."""
    from stylegan2.precision import resolve_precision

    capability = torch.backends.cpu.get_cpu_capability()
    auto = "bf16" if resolve_precision("auto", torch.device("cpu")) == torch.bfloat16 else "fp32"
    return f"{platform.processor() or platform.machine()}, torch capability {capability}, auto picks {auto}"


def drag(G: Any, ws: torch.Tensor, handles: np.ndarray, targets: np.ndarray, params: DragParams
         ) -> tuple[list[list[tuple[float, float]]], float, np.ndarray]:
    """(tracked points per step, seconds per step, the final picture uint8 [H, W, 3])."""
    session = DragSession(G, ws, [tuple(map(float, p)) for p in handles], [tuple(map(float, p)) for p in targets],
                          params=params)
    started = time.perf_counter()
    tracks = [list(step.points) for step in session.run()]
    seconds = (time.perf_counter() - started) / max(1, len(tracks))
    return tracks, seconds, session.image()


def divergence(a: list[list[tuple[float, float]]], b: list[list[tuple[float, float]]]) -> float:
    """The largest distance (px) between two runs' tracked points over the steps both ran."""
    shared = min(len(a), len(b))
    if shared == 0:
        return 0.0
    return float(max(np.linalg.norm(np.asarray(a[i]) - np.asarray(b[i]), axis=1).max() for i in range(shared)))


def trained_model_rows(model: Path, pairs: int, max_steps: int, seed: int) -> list[dict[str, Any]]:
    import stylegan2
    from alignment.detector import DEFAULT_PATH, load_detector

    G = stylegan2.load_generator(model)
    detector = load_detector(DEFAULT_PATH)
    base, _settings = fidelity.base_params("model", model, 0.002, 3.0, 12.0)
    rows = []
    for pair in range(pairs):
        ws_a, ws_b = fidelity.pair_latents(G, seed, pair, 0.7)
        with torch.no_grad():
            images = np.stack([to_uint8(G.synthesis(w, noise_mode="const")) for w in (ws_a, ws_b)])
        keypoints_a, keypoints_b = detector.predict(images)
        subset = fidelity.choose_subset(seed, pair, 1, len(keypoints_a))
        handles = np.clip(keypoints_a[subset], 0, [G.img_width - 1, G.img_height - 1])
        targets = np.clip(keypoints_b[subset], 0, [G.img_width - 1, G.img_height - 1])
        row: dict[str, Any] = {"pair": pair, "distance_before": float(np.linalg.norm(handles - targets, axis=1).mean())}
        tracks = {}
        for precision in PRECISIONS:
            params = fidelity.row_params("fast", max_steps, base)
            params = dataclasses.replace(params, precision=precision)
            tracks[precision], seconds, image = drag(G, ws_a, handles, targets, params)
            after = detector.predict(image[None])[0][subset]
            row[precision] = {"seconds_per_step": seconds, "steps": len(tracks[precision]),
                              "md_after": float(np.linalg.norm(after - targets, axis=1).mean())}
        row["tracked_divergence_px"] = divergence(tracks["fp32"], tracks["bf16"])
        rows.append(row)
        print(f"pair {pair}: fp32 {row['fp32']['md_after']:.2f} px in {row['fp32']['steps']} steps "
              f"({row['fp32']['seconds_per_step'] * 1000:.0f} ms/step), bf16 {row['bf16']['md_after']:.2f} px in "
              f"{row['bf16']['steps']} steps ({row['bf16']['seconds_per_step'] * 1000:.0f} ms/step), tracked points "
              f"apart by up to {row['tracked_divergence_px']:.2f} px", file=sys.stderr, flush=True)
    return rows


def random_512_rows(steps: int, rounds: int, seed: int) -> list[dict[str, Any]]:
    import stylegan2

    torch.manual_seed(seed)
    G = stylegan2.Generator(z_dim=512, w_dim=512, img_resolution=512, img_channels=3,
                            channel_base=32768, channel_max=512).eval()
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, 512), None, truncation_psi=0.7)
    handles, targets = np.array([[200.0, 240.0]]), np.array([[230.0, 250.0]])
    rows = []
    for round_ in range(rounds):
        row: dict[str, Any] = {"round": round_}
        tracks = {}
        for precision in PRECISIONS:
            params = DragParams(max_steps=steps, stop_distance=0.0, precision=precision)
            tracks[precision], seconds, _ = drag(G, ws, handles, targets, params)
            row[precision] = {"seconds_per_step": seconds, "steps": len(tracks[precision])}
        row["tracked_divergence_px"] = divergence(tracks["fp32"], tracks["bf16"])
        rows.append(row)
        print(f"512² round {round_}: fp32 {row['fp32']['seconds_per_step']:.3f} s/step, bf16 "
              f"{row['bf16']['seconds_per_step']:.3f} s/step, tracked points apart by up to "
              f"{row['tracked_divergence_px']:.2f} px", file=sys.stderr, flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for precision in PRECISIONS:
        out[precision] = {"seconds_per_step_median": statistics.median(r[precision]["seconds_per_step"] for r in rows)}
        if "md_after" in rows[0][precision]:
            out[precision]["md_after_mean"] = statistics.fmean(r[precision]["md_after"] for r in rows)
            out[precision]["steps_median"] = statistics.median(r[precision]["steps"] for r in rows)
    out["speed_up"] = out["fp32"]["seconds_per_step_median"] / out["bf16"]["seconds_per_step_median"]
    divergences = [r["tracked_divergence_px"] for r in rows]
    out["tracked_divergence_px"] = {"median": statistics.median(divergences), "max": max(divergences),
                                    "over_1px": sum(d > 1.0 for d in divergences), "of": len(divergences)}
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=fidelity.DEFAULT_MODEL)
    ap.add_argument("--pairs", type=int, default=12, help="fidelity pairs on the trained model (0: none)")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--steps512", type=int, default=10, help="drag steps on the 512² generator (0: none)")
    ap.add_argument("--rounds512", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = cpu_capability()
    print(f"cpu: {cpu}; {args.threads} threads; torch {torch.__version__}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"config": {**{k: str(v) for k, v in vars(args).items()}, "cpu": cpu,
                                         "torch": torch.__version__}}
    if args.pairs:
        rows = trained_model_rows(args.model, args.pairs, args.max_steps, args.seed)
        result["faces-128"] = {"summary": summary(rows), "pairs": rows}
    if args.steps512:
        rows = random_512_rows(args.steps512, args.rounds512, args.seed)
        result["random-512"] = {"summary": summary(rows), "rounds": rows}
    print(json.dumps({k: v["summary"] for k, v in result.items() if k != "config"}, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
