"""Learning curves of generator training runs: evaluate every snapshot, tabulate, plot.

``train_generator --snapshot-cpu-minutes K`` writes ``snap-cpuNNN.pt`` (G, G_ema, iteration,
images seen, CPU minutes) every K CPU minutes of the training process.  This evaluates each
snapshot's raw G on one fixed z set (``evaluate_generator``: keypoint error of the detector on
generated samples, detector-feature FD, PSNR to the render) and writes a JSON, a Markdown table
and a PNG plot (keypoint error and FD against CPU minutes) drawn with Pillow.

    python -m training.learning_curve runs/lc/baseline runs/lc/multiscale --n 128 \\
        --json runs/lc/curve.json --plot docs/images/faces-128-learning.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from alignment.detector import load_detector
from training.evaluate_generator import evaluate_generator, generator_from_state

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def evaluate_run(run_dir: Path, n: int, seed: int, weights: str = "G") -> list[dict[str, Any]]:
    """Figures for every snapshot of ``run_dir``, in CPU-time order."""
    det = load_detector()
    rows = []
    for snap in sorted(run_dir.glob("snap-cpu*.pt")):
        state = torch.load(snap, weights_only=True, map_location="cpu")
        G = generator_from_state(state, weights, str(snap))
        figures = evaluate_generator(G, n, seed, det=det)
        rows.append(dict(run=run_dir.name, snapshot=snap.name, cpu_minutes=float(state["cpu_minutes"]),
                         iteration=int(state["iteration"]), images_seen=int(state["images_seen"]), **figures))
        print(f"{run_dir.name:12s} {snap.name:18s} cpu {rows[-1]['cpu_minutes']:5.1f} min  "
              f"img {rows[-1]['images_seen']:7d}  kp {figures['kp_error_generated_mean_px']:6.2f} px  "
              f"FD {figures['fd_detector']:7.2f}  PSNR {figures['psnr_db']:5.2f} dB", flush=True)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per run at its last snapshot, with the change since its first snapshot."""
    lines = ["| run | CPU min | images | keypoint error px (Δ) | FD (Δ) | PSNR dB (Δ) |",
             "|---|---|---|---|---|---|"]
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run]
        first, last = mine[0], mine[-1]
        cells = [f"{last[k]:.2f} ({last[k] - first[k]:+.2f})"
                 for k in ("kp_error_generated_mean_px", "fd_detector", "psnr_db")]
        lines.append(f"| {run} | {last['cpu_minutes']:.1f} | {last['images_seen'] - first['images_seen']:,} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Two panels (keypoint error, FD) against CPU minutes, one line per run; Pillow only."""
    panels = [("kp_error_generated_mean_px", "keypoint error on samples (px)"), ("fd_detector", "FD (detector)")]
    width, height, margin = 520, 360, 60
    canvas = Image.new("RGB", (width * len(panels), height + 40), "white")
    draw = ImageDraw.Draw(canvas)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    xmax = max(r["cpu_minutes"] for r in rows) or 1.0
    for p, (key, label) in enumerate(panels):
        ox = p * width
        values = np.array([r[key] for r in rows], dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        pad = (hi - lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad

        def xy(cpu: float, v: float, ox: int = ox, lo: float = lo, hi: float = hi) -> tuple[float, float]:
            return (ox + margin + (width - 1.5 * margin) * cpu / xmax,
                    height - margin + 20 - (height - 1.5 * margin) * (v - lo) / (hi - lo))

        x0, y0 = xy(0, lo)
        x1, y1 = xy(xmax, hi)
        draw.rectangle([x0, y1, x1, y0], outline=(0, 0, 0))
        for t in range(5):
            v = lo + (hi - lo) * t / 4
            _, y = xy(0, v)
            draw.line([x0 - 4, y, x0, y], fill=(0, 0, 0))
            draw.text((ox + 4, y - 6), f"{v:.2f}", fill=(0, 0, 0))
            c = xmax * t / 4
            x, _ = xy(c, lo)
            draw.line([x, y0, x, y0 + 4], fill=(0, 0, 0))
            draw.text((x - 10, y0 + 6), f"{c:.1f}", fill=(0, 0, 0))
        draw.text((ox + margin, 4), label, fill=(0, 0, 0))
        draw.text((ox + width // 2 - 40, y0 + 22), "CPU minutes", fill=(0, 0, 0))
        for i, run in enumerate(runs):
            pts = [xy(r["cpu_minutes"], r[key]) for r in rows if r["run"] == run]
            colour = COLOURS[i % len(COLOURS)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for i, run in enumerate(runs):
        x = 10 + i * (width * len(panels) - 20) // max(len(runs), 1)
        draw.rectangle([x, height + 22, x + 12, height + 32], fill=COLOURS[i % len(COLOURS)])
        draw.text((x + 16, height + 21), run, fill=(0, 0, 0))
    if title:
        draw.text((width - 60, height + 4), title, fill=(80, 80, 80))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run directories holding snap-cpu*.pt")
    ap.add_argument("--n", type=int, default=128, help="z samples per evaluation (one fixed set)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--weights", choices=["G", "G_ema"], default="G")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for run in args.runs:
        rows += evaluate_run(run, args.n, args.seed, args.weights)
    if not rows:
        print("no snapshots found")
        return 1
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot, args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
