"""Edit fidelity: does a drag land where the user asked? The paper's Table 1 protocol on our faces.

Protocol (Pan et al. 2023, Table 1, on the procedural face domain of ``training.faces``): sample pairs
of generated images A and B, detect the 16 keypoints on both with the committed keypoint detector,
use A's keypoints as handles and B's as targets (1 point, 5 points, all points), drag A, detect
keypoints on the result, and report the mean distance (pixels) between the dragged keypoints and
their targets. ``no edit`` is that distance before editing. Each configuration also reports the
time per edit and the steps taken (the official stop rule ends a drag once every handle is within
2 px of its target; ``max_steps`` otherwise).

Rows: ``no edit``; ``reference`` (W+); ``fast`` (W+); ``fast w`` (single w); ``fast mask`` (W+, editable
region = the box around handles and targets grown by ``--mask-margin`` px), which also reports how far
the keypoints *outside* the editable region moved (and the same for the unmasked fast drag).

Usage::

    python benchmarks/fidelity.py --pairs 8 --max-steps 200             # default model + detector
    python benchmarks/fidelity.py --model path/to/G.pt --detector path/to/det.pt --rows fast reference

Figures are means over pairs with their standard deviation (spread between pairs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.engine import DragParams, DragSession  # noqa: E402
from backend.engine.session import to_uint8  # noqa: E402

DEFAULT_MODEL = REPO / "backend" / "data" / "faces-128.pt"
ROWS = ("reference", "fast", "fast w", "fast mask")


@dataclass
class EditResult:
    distance_before: float  # mean |handle - target| over the dragged keypoints, pixels
    distance_after: float  # mean |detected keypoint after the drag - target|
    outside_moved: float | None  # mean displacement of keypoints outside the editable region (None: none)
    steps: int
    converged: bool
    seconds: float


def editable_region(handles: np.ndarray, targets: np.ndarray, height: int, width: int, margin: float) -> np.ndarray:
    """Mask ``[H, W]`` float, 1 inside the box around handles and targets grown by ``margin`` px."""
    points = np.concatenate([handles, targets])
    x0, y0 = points.min(axis=0) - margin
    x1, y1 = points.max(axis=0) + margin
    yy, xx = np.mgrid[:height, :width]
    return ((xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)).astype(np.float32)


def row_params(row: str, max_steps: int, base: DragParams) -> DragParams:
    mode = "reference" if row == "reference" else "fast"
    latent = "w" if row == "fast w" else "w+"
    return DragParams(max_steps=max_steps, lr=base.lr, latent=latent, optimize_ws=base.optimize_ws,
                      lambda_mask=base.lambda_mask, r1=base.r1, r2=base.r2, feature_block=base.feature_block,
                      preview_every=0, mode=mode, lr_schedule=base.lr_schedule)


def drag_once(G, detector, ws: torch.Tensor, keypoints_a: np.ndarray, keypoints_b: np.ndarray, subset: np.ndarray,
              params: DragParams, mask_margin: float | None) -> EditResult:
    """One edit: drag A's keypoints ``subset`` onto B's; measure with the detector on the result."""
    height, width = G.img_height, G.img_width
    handles = keypoints_a[subset]
    targets = keypoints_b[subset]
    # the engine needs points inside the image; detector outputs can sit a fraction of a pixel outside
    handles = np.clip(handles, 0, [width - 1, height - 1])
    targets = np.clip(targets, 0, [width - 1, height - 1])
    mask = None if mask_margin is None else editable_region(handles, targets, height, width, mask_margin)
    started = time.perf_counter()
    session = DragSession(G, ws, [tuple(p) for p in handles], [tuple(p) for p in targets], mask=mask, params=params)
    steps = list(session.run())
    image = session.image()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        after = detector.predict(image[None])[0]
    others = np.setdiff1d(np.arange(len(keypoints_a)), subset)
    region = mask if mask is not None else editable_region(handles, targets, height, width, 12.0)
    outside = [k for k in others
               if region[int(np.clip(round(keypoints_a[k, 1]), 0, height - 1)),
                         int(np.clip(round(keypoints_a[k, 0]), 0, width - 1))] == 0]
    outside_moved = (float(np.linalg.norm(after[outside] - keypoints_a[outside], axis=1).mean())
                     if outside else None)
    return EditResult(
        distance_before=float(np.linalg.norm(keypoints_a[subset] - keypoints_b[subset], axis=1).mean()),
        distance_after=float(np.linalg.norm(after[subset] - keypoints_b[subset], axis=1).mean()),
        outside_moved=outside_moved, steps=len(steps), converged=steps[-1].done, seconds=seconds)


def sample_pair(G, seed: int, truncation_psi: float) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.RandomState(seed)
    z = torch.from_numpy(rng.randn(2, G.z_dim)).float()
    with torch.no_grad():
        ws = G.mapping(z, None, truncation_psi=truncation_psi)
    return ws[0:1], ws[1:2]


def run_fidelity(G, detector, pairs: int, point_counts: list[int], rows: list[str], max_steps: int,
                 base: DragParams | None = None, seed: int = 0, truncation_psi: float = 0.7,
                 mask_margin: float = 12.0, progress=None) -> dict[tuple[str, int], list[EditResult]]:
    """All edits: ``{(row, points): [EditResult per pair]}`` plus ``("no edit", points)``."""
    base = base or DragParams()
    results: dict[tuple[str, int], list[EditResult]] = {}
    for pair in range(pairs):
        ws_a, ws_b = sample_pair(G, seed + pair, truncation_psi)
        with torch.no_grad():
            images = [to_uint8(G.synthesis(w, noise_mode="const")) for w in (ws_a, ws_b)]
            keypoints_a, keypoints_b = (detector.predict(img[None])[0] for img in images)
        rng = np.random.RandomState(10_000 + seed + pair)
        for count in point_counts:
            count = min(count, len(keypoints_a))
            subset = np.sort(rng.choice(len(keypoints_a), size=count, replace=False))
            before = float(np.linalg.norm(keypoints_a[subset] - keypoints_b[subset], axis=1).mean())
            results.setdefault(("no edit", count), []).append(
                EditResult(before, before, None, 0, False, 0.0))
            for row in rows:
                params = row_params(row, max_steps, base)
                margin = mask_margin if row == "fast mask" else None
                result = drag_once(G, detector, ws_a, keypoints_a, keypoints_b, subset, params, margin)
                results.setdefault((row, count), []).append(result)
                if progress is not None:
                    progress(pair, row, count, result)
    return results


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_table(results: dict[tuple[str, int], list[EditResult]], point_counts: list[int],
                 rows: list[str]) -> str:
    lines = []
    header = f"{'row':<10} {'pts':>3} {'distance (px)':>15} {'after/before':>12} {'outside moved':>14} " \
             f"{'steps':>13} {'converged':>9} {'s/edit':>13}"
    lines.append(header)
    lines.append("-" * len(header))
    for count in point_counts:
        for row in ["no edit", *rows]:
            key = next((k for k in results if k[0] == row and k[1] == min(count, 16)), None)
            if key is None:
                continue
            edits = results[key]
            before = statistics.mean(e.distance_before for e in edits)
            after = [e.distance_after for e in edits]
            ratio = statistics.mean(after) / before if before else float("nan")
            outside = [e.outside_moved for e in edits if e.outside_moved is not None]
            if row == "no edit":
                lines.append(f"{row:<10} {key[1]:>3} {mean_sd(after):>15} {'1.00':>12}")
                continue
            converged = sum(e.converged for e in edits)
            lines.append(f"{row:<10} {key[1]:>3} {mean_sd(after):>15} {ratio:>12.2f} {mean_sd(outside):>14} "
                         f"{mean_sd([float(e.steps) for e in edits]):>13} {converged:>4}/{len(edits):<4} "
                         f"{mean_sd([e.seconds for e in edits]):>13}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--detector", type=Path, default=None, help="default: training.detector.DEFAULT_PATH")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--points", type=int, nargs="+", default=[1, 5, 16])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=DragParams.lr)
    parser.add_argument("--r1", type=float, default=DragParams.r1)
    parser.add_argument("--r2", type=float, default=DragParams.r2)
    parser.add_argument("--mask-margin", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import stylegan2
    from training.detector import load_detector

    torch.set_num_threads(args.threads)
    G = stylegan2.load_generator(args.model)
    detector = load_detector(args.detector)
    base = DragParams(lr=args.lr, r1=args.r1, r2=args.r2)

    def progress(pair: int, row: str, count: int, result: EditResult) -> None:
        print(f"pair {pair} {row:<9} {count:>2} pts: {result.distance_before:6.2f} -> {result.distance_after:6.2f} px "
              f"in {result.steps} steps, {result.seconds:.1f} s", file=sys.stderr, flush=True)

    results = run_fidelity(G, detector, args.pairs, args.points, args.rows, args.max_steps, base=base,
                           seed=args.seed, mask_margin=args.mask_margin, progress=progress)
    print(f"fidelity: model {args.model.name}, {args.pairs} pairs, max_steps {args.max_steps}, lr {args.lr}, "
          f"r1 {args.r1}, r2 {args.r2}, {args.threads} threads")
    print(format_table(results, args.points, args.rows))
    print("distance: mean over pairs ± sd between pairs; outside moved: keypoints outside the editable region "
          "(mask rows: the mask; others: the same box) displacement from image A")


if __name__ == "__main__":
    main()
