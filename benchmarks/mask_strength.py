"""Mask strength: how the mask term's weight (``lambda_mask``, the plug-in's *Mask strength*) trades a
drag's reach against the drift outside the editable region, on the fidelity benchmark's pairs.

Same pairs, handles, targets and editable box (handles and targets + ``--mask-margin`` px) as the
``fast mask`` row of ``benchmarks/fidelity.py`` (testkit/fidelity.py), with the server's drag settings for the model
(``--drag-settings model``); one row per weight, and ``none`` (the same drag with no mask at all).
Per row: MD after (px, mean ± standard error over pairs), how many edits converged and how many
*stalled* (ended less than 20 % closer to their targets than they started), median steps, and the
drift outside the box (keypoints displacement px, mean |RGB change| 0..255), as in the fidelity table.

    python benchmarks/mask_strength.py --pairs 30 --lambdas 20 5 2 1 none --json docs/mask-strength-faces-128.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.engine.session import to_uint8  # noqa: E402
from draggan_util.hashing import sha256_file  # noqa: E402
from testkit import fidelity  # noqa: E402

STALL_FRACTION = 0.8  # an edit that ends at >= 80 % of its starting distance "stalled"


def stalled(result: Any) -> bool:
    return result.distance_after >= STALL_FRACTION * result.distance_before


def row_name(weight: float | None) -> str:
    return "none" if weight is None else f"{weight:g}"


def summary_row(name: str, edits: list[Any]) -> dict[str, Any]:
    md = fidelity.summarize(e.distance_after for e in edits)
    before = fidelity.summarize(e.distance_before for e in edits)
    kp = fidelity.summarize(e.outside_moved for e in edits)
    px = fidelity.summarize(e.outside_pixels for e in edits)
    return {
        "lambda_mask": name, "pairs": len(edits), "md_before": before.mean, "md": md.mean, "md_se": md.se,
        "converged": sum(e.converged for e in edits), "stalled": sum(stalled(e) for e in edits),
        "median_steps": statistics.median(e.steps for e in edits),
        "median_seconds": statistics.median(e.seconds for e in edits),
        "outside_keypoints_px": kp.mean, "outside_keypoints_se": kp.se,
        "outside_pixels": px.mean, "outside_pixels_se": px.se,
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| mask strength (lambda_mask) | pairs | MD px (before) | converged | stalled | median steps / s | "
             "keypoints outside moved px | pixels outside changed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['lambda_mask']} | {r['pairs']} | {r['md']:.2f} ± {r['md_se']:.2f} ({r['md_before']:.2f}) | "
            f"{r['converged']}/{r['pairs']} | {r['stalled']}/{r['pairs']} | {r['median_steps']:g} / "
            f"{r['median_seconds']:.2f} | {r['outside_keypoints_px']:.2f} ± {r['outside_keypoints_se']:.2f} | "
            f"{r['outside_pixels']:.2f} ± {r['outside_pixels_se']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=fidelity.DEFAULT_MODEL)
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--points", type=int, default=1, help="handles per edit")
    ap.add_argument("--lambdas", nargs="+", default=["20", "5", "1", "none"],
                    help="mask weights to compare; 'none' = no mask")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--mask-margin", type=float, default=12.0, help="px")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    weights = [None if v == "none" else float(v) for v in args.lambdas]

    import stylegan2
    from alignment.detector import DEFAULT_PATH, load_detector

    torch.set_num_threads(args.threads)
    G = stylegan2.load_generator(args.model)
    detector = load_detector(DEFAULT_PATH)
    base, settings = fidelity.base_params("model", args.model, 0.002, 3.0, 12.0)
    results: dict[str, list[Any]] = {row_name(w): [] for w in weights}
    started = time.perf_counter()
    for pair in range(args.pairs):
        ws_a, ws_b = fidelity.pair_latents(G, args.seed, pair, 0.7)
        with torch.no_grad():
            images = np.stack([to_uint8(G.synthesis(w, noise_mode="const")) for w in (ws_a, ws_b)])
        keypoints_a, keypoints_b = detector.predict(images)
        subset = fidelity.choose_subset(args.seed, pair, args.points, len(keypoints_a))
        for weight in weights:
            params = fidelity.row_params("fast mask", args.max_steps, base)
            params = replace(params, lambda_mask=20.0 if weight is None else weight)
            result = fidelity.drag_once(G, detector, ws_a, keypoints_a, keypoints_b, subset, params,
                                        args.mask_margin, masked=weight is not None, image_a=images[0], pair=pair)
            results[row_name(weight)].append(result)
            print(f"pair {pair} lambda_mask {row_name(weight):>5}: {result.distance_before:6.2f} -> "
                  f"{result.distance_after:6.2f} px in {result.steps} steps", file=sys.stderr, flush=True)
    rows = [summary_row(name, edits) for name, edits in results.items()]
    print(f"mask strength on {args.model.name}, {args.points} point(s), {args.pairs} pairs, margin "
          f"{args.mask_margin:g} px, max {args.max_steps} steps, {settings}, {args.threads} threads, "
          f"{(time.perf_counter() - started) / 60:.1f} min")
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({
            "config": {"model": args.model.name, "model_sha256": sha256_file(args.model), "pairs": args.pairs,
                       "points": args.points, "mask_margin": args.mask_margin, "max_steps": args.max_steps,
                       "drag_settings": settings, "threads": args.threads, "seed": args.seed,
                       "torch": torch.__version__},
            "rows": rows,
            "edits": {name: [asdict(e) for e in edits] for name, edits in results.items()},
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
