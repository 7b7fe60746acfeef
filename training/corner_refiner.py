"""Training the second-stage landmark refiner for procedural faces (alignment/corner_refiner.py holds
the network, loading and refinement): eye centres and mouth corners from small patches.

Why a second stage and what it does: alignment/corner_refiner.py's docstring.

Training data imitates the product's path: a render at 256 px is rotated (+-45 deg), scaled (1/3 to
1.25) and shifted into a canvas (the user's drawing), the canvas is warped into the frame by the quad
of the exact landmarks plus noise (the first stage's residual error), and the exact landmarks are
mapped into the same frame.

    python -m training.corner_refiner train          # writes alignment/data/corner_refiner.pt
    python -m training.corner_refiner evaluate       # held-out errors of the committed file

Coordinates: (x, y) pixels, ``x = j`` at the centre of pixel column ``j`` (training/faces.py).
The saved file is ``{"format": FORMAT, "config": {...}, "state_dict": {...}, "meta": {...}}``,
loadable with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from alignment.corner_refiner import (
    DEFAULT_PATH,
    FORMAT,
    FRAME,
    LANDMARKS,
    PATCH,
    CornerRefiner,
    _as_input,
    cut_patches,
    frame_template,
    load_refiner,
    refine_in_frame,
)
from training import faces
from training.model_files import save_model_file


# ---------------------------------------------------------------------- training data
def _place(img: np.ndarray, m: np.ndarray, canvas: tuple[int, int], fill: tuple[int, int, int]) -> np.ndarray:
    """``img`` mapped by the 2x3 similarity ``m`` (pixel centres, source -> canvas) into a canvas (w, h)."""
    a = np.linalg.inv(m[:, :2])
    t = -a @ m[:, 2]
    off = t + 0.5 - a @ np.array([0.5, 0.5])     # Pillow's AFFINE works on pixel areas (centre + 0.5)
    data = (a[0, 0], a[0, 1], off[0], a[1, 0], a[1, 1], off[1])
    return np.asarray(Image.fromarray(img).transform(canvas, Image.Transform.AFFINE, data,
                                                     Image.Resampling.BICUBIC, fillcolor=fill))


def make_frames(seed: int, n: int, quad_noise: float = 1.5, log: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training frames as the product sees them: uint8 [n, FRAME, FRAME, 3] and the exact
    landmarks float [n, 5, 2] in frame pixels. Each render (256 px, faces of ``seed``) is rolled by
    +-45 deg, scaled by 1/3 to 1.25 and placed in a canvas; the canvas is warped into the frame by
    the quad of its exact landmarks moved by up to ``quad_noise`` px (at 128 px scale, uniform per
    landmark coordinate): the first stage's residual error."""
    from alignment.align import FaceLandmarks, ffhq_quad, keypoints_to_landmarks, quad_transform

    rng = np.random.default_rng(seed)
    params = faces.sample_params(rng, n)
    template = frame_template()
    per_128 = float(np.hypot(*(template[3] - template[0]))) / FRAME * 128.0   # template side at 128 px
    frames = np.empty((n, FRAME, FRAME, 3), np.uint8)
    truth = np.empty((n, 5, 2))
    t0 = time.time()
    for i, p in enumerate(params):
        img, kp = faces.render(p, 256)
        angle, scale = math.radians(rng.uniform(-45, 45)), rng.uniform(1 / 3, 1.25)
        side = int(math.ceil(256 * scale * 1.45)) + 8
        r = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        centre = np.array([side / 2, side / 2]) + rng.uniform(-4, 4, 2)
        m = np.c_[r, centre - r @ np.array([127.5, 127.5])]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        canvas = _place(img, m, (side, side), fill)   # type: ignore[arg-type]
        exact = keypoints_to_landmarks(kp @ m[:, :2].T + m[:, 2]).array()
        exact_quad = ffhq_quad(exact)
        quad_side = float(np.hypot(*(exact_quad[3] - exact_quad[0])))
        noisy = exact + rng.uniform(-1, 1, exact.shape) * quad_noise * quad_side / per_128
        al = quad_transform(ffhq_quad(FaceLandmarks.from_array(noisy)), FRAME, FRAME, template)
        frames[i], _ = al.warp_image(canvas)
        truth[i] = al.to_model(exact)
        if log is not None and (i + 1) % 500 == 0:
            log(f"seed {seed}: {i + 1}/{n} frames ({time.time() - t0:.0f} s)")
    return frames, truth


def _frames_chunk(args: tuple[int, int, float]) -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    return make_frames(*args)


def make_frames_parallel(seed: int, n: int, workers: int, chunk: int = 1000, log: Any = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_frames` in chunks of ``chunk`` frames (chunk ``i`` from seed ``seed + i``, so the
    result does not depend on ``workers``) on ``workers`` processes."""
    import multiprocessing as mp

    jobs = [(seed + i, min(chunk, n - start), 1.5) for i, start in enumerate(range(0, n, chunk))]
    frames, truth = [], []
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers) as pool:
        for f, t in pool.imap(_frames_chunk, jobs):
            frames.append(f)
            truth.append(t)
            if log is not None:
                log(f"frames: {sum(len(x) for x in frames)}/{n} ({time.time() - t0:.0f} s)")
    return np.concatenate(frames), np.concatenate(truth)


def training_patches(frames: np.ndarray, truth: np.ndarray, rng: np.random.Generator, jitter: float,
                     patch: int = PATCH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One patch per refined landmark of every frame, centred within ``jitter`` px (uniform) of the
    truth: (uint8 [4n, P, P, 3] mirrored where needed, kinds long [4n], target offsets float [4n, 2]
    in the patch's own (mirrored) orientation)."""
    patches, kinds, targets = [], [], []
    for frame, lm in zip(frames, truth):
        for idx, kind, mirrored in LANDMARKS:
            centre = lm[idx] + rng.uniform(-jitter, jitter, 2)
            p, origin = cut_patches(frame, centre[None], np.array([mirrored]), patch)
            off = lm[idx] - origin[0]
            if mirrored:
                off[0] = -off[0]
            patches.append(p[0])
            kinds.append(kind)
            targets.append(off)
    return np.stack(patches), np.array(kinds), np.array(targets, np.float32)


# ---------------------------------------------------------------------- files
def save_refiner(net: CornerRefiner, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    save_model_file(net, net.config, path, FORMAT, meta)


# ---------------------------------------------------------------------- evaluation
def frame_errors(net: CornerRefiner, frames: np.ndarray, truth: np.ndarray, start: np.ndarray,
                 iterations: int = 2) -> dict[str, Any]:
    """Errors at 128 px scale (frame px / 2) of the refined landmarks started from ``start`` [n, 5, 2]
    (frame px), and of the FFHQ quad built from them (nose: the truth's, unused by the quad)."""
    from alignment.align import ffhq_quad

    refined = np.stack([refine_in_frame(net, f, s, iterations) for f, s in zip(frames, start)])
    refined[:, 2] = truth[:, 2]
    scale = 128.0 / FRAME
    err = np.linalg.norm(refined - truth, axis=-1) * scale
    quad = np.array([np.linalg.norm(ffhq_quad(a) - ffhq_quad(b), axis=1).max() for a, b in zip(refined, truth)])
    quad *= scale
    from training.fit_landmarks import LANDMARK_NAMES

    return {"landmark_error_px_at_128": {n: round(float(err[:, i].mean()), 3)
                                         for i, n in enumerate(LANDMARK_NAMES) if i != 2},
            "quad_error_px_at_128": {"mean": round(float(quad.mean()), 3), "median": round(float(np.median(quad)), 3),
                                     "max": round(float(quad.max()), 3),
                                     "within_1px": round(float((quad <= 1.0).mean()), 3), "n": int(len(quad))}}


def _lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="generate frames, train, evaluate, save")
    tr.add_argument("--out", type=Path, default=DEFAULT_PATH)
    tr.add_argument("--frames", type=int, default=12000)
    tr.add_argument("--seed", type=int, default=30000)
    tr.add_argument("--steps", type=int, default=5000)
    tr.add_argument("--batch", type=int, default=256)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--jitter", type=float, default=3.0, help="patch-centre jitter, frame px")
    tr.add_argument("--cache", type=Path, default=None, help="npz of generated frames (reused when present)")
    tr.add_argument("--threads", type=int, default=2)
    ev = sub.add_parser("evaluate", help="held-out errors of a saved refiner")
    ev.add_argument("--path", type=Path, default=DEFAULT_PATH)
    for p in (tr, ev):
        p.add_argument("--eval-n", type=int, default=400)
        p.add_argument("--eval-seed", type=int, default=2)
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(getattr(args, "threads", 2))
    ev_frames, ev_truth = make_frames(args.eval_seed, args.eval_n, log=log)
    ev_rng = np.random.default_rng(args.eval_seed + 1)
    ev_start = ev_truth + ev_rng.uniform(-1.5, 1.5, ev_truth.shape)   # 0.75 px at 128: a first stage's error
    if args.cmd == "evaluate":
        net = load_refiner(args.path)
        print(json.dumps(frame_errors(net, ev_frames, ev_truth, ev_start), indent=1))
        return 0

    t0 = time.time()
    if args.cache is not None and args.cache.is_file():
        blob = np.load(args.cache)
        frames, truth = blob["frames"], blob["truth"]
    else:
        frames, truth = make_frames_parallel(args.seed, args.frames, args.threads, log=log)
        if args.cache is not None:
            np.savez(args.cache, frames=frames, truth=truth)
    log(f"{len(frames)} frames in {time.time() - t0:.0f} s")
    rng = np.random.default_rng(args.seed + 1)
    net = CornerRefiner()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    n_frames = len(frames)
    per_batch = max(1, args.batch // len(LANDMARKS))
    t1 = time.time()
    running = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr)
        pick = rng.integers(0, n_frames, per_batch)
        patches, kinds, targets = training_patches(frames[pick], truth[pick], rng, args.jitter)
        x = _as_input(patches)
        if rng.random() < 0.5:   # sensor-like noise on half the batches
            x = x + torch.randn_like(x) * float(rng.uniform(0, 0.02))
        net.train()
        pred = net(x, torch.from_numpy(kinds))
        loss = F.smooth_l1_loss(pred, torch.from_numpy(targets), beta=0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
        if (step + 1) % 200 == 0 or step + 1 == args.steps:
            log(f"step {step + 1}/{args.steps} loss {running:.4f} ({time.time() - t1:.0f} s)")
    net.eval()
    held_out = frame_errors(net, ev_frames, ev_truth, ev_start)
    meta = {"command": "python -m training.corner_refiner " + " ".join(argv if argv is not None else sys.argv[1:]),
            "train": {"seed": args.seed, "frames": n_frames, "steps": args.steps, "batch": args.batch,
                      "jitter": args.jitter},
            "held_out": {"seed": args.eval_seed, "n": args.eval_n, **held_out},
            "seconds": round(time.time() - t0, 1), "threads": args.threads}
    save_refiner(net, args.out, meta)
    print(json.dumps(meta["held_out"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
