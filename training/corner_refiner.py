"""Second-stage landmark refiner for procedural faces: eye centres and mouth corners from small patches.

Why: the face-alignment quad (``backend/align.py`` ``ffhq_quad``) magnifies landmark noise. Its side is
about 4 eye distances and 3.6 eye-to-mouth distances, so with eye centres 0.2 px off at 128 px the
quad's worst corner is already 0.66 px off on average, and the mouth corners' 0.9 px from the
whole-face keypoint detector (``training/detector.py``, stride-4 heatmaps) take it past 1 px on a
third of faces (docs/alignment.md). ``benchmarks/quad_sensitivity.py`` measures that sensitivity: eye
centres 0.1 px and mouth corners 0.3 px keep 99 % of quads within 1 px.

What: once the face has been aligned by the first stage, its picture is warped into a frame of
``FRAME`` x ``FRAME`` pixels (faces-128's template quad at twice the size, so a large face keeps
detail the 128 px frame would average away) and a ``PATCH`` x ``PATCH`` patch is cut around each
landmark's current estimate (integer centre, no resampling). A small CNN regresses the landmark's
offset from the patch centre. Right-side patches are mirrored so that one network serves both
sides of each kind ("eye": the midpoint of the eye's two corners; "mouth": the mouth corner). The
prediction is repeated from the improved estimate and averaged over a few patch shifts
(:func:`refine_in_frame`).

Training data imitates the product's path: a render at 256 px is rotated (+-45 deg), scaled (1/3 to
1.25) and shifted into a canvas (the user's drawing), the canvas is warped into the frame by the quad
of the exact landmarks plus noise (the first stage's residual error), and the exact landmarks are
mapped into the same frame.

    python -m training.corner_refiner train          # writes training/models/corner_refiner.pt
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
from torch import nn

from training import faces
from training.model_files import read_model_file, save_model_file

FORMAT = "draggan-corner-refiner-v1"
DEFAULT_PATH = Path(__file__).resolve().parent / "models" / "corner_refiner.pt"
FRAME = 256
PATCH = 40
#: The landmarks the refiner predicts, in backend.align.FaceLandmarks order (nose: index 2, not refined),
#: each with its kind (0 eye, 1 mouth corner) and whether its patch is mirrored.
LANDMARKS: tuple[tuple[int, int, bool], ...] = ((0, 0, False), (1, 0, True), (3, 1, False), (4, 1, True))
#: Patch-centre shifts (whole pixels, x then y) whose predictions are averaged at inference.
SHIFTS: tuple[tuple[int, int], ...] = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))


class CornerRefiner(nn.Module):
    """Patches float ``[N, 3, PATCH, PATCH]`` in [-1, 1] and kinds long ``[N]`` -> offsets ``[N, 2]``
    (x, y) in frame pixels from the patch centre (the corner between its four middle pixels)."""

    def __init__(self, widths: tuple[int, ...] | list[int] = (12, 24, 48, 96), hidden: int = 128,
                 kinds: int = 2, patch: int = PATCH):
        super().__init__()
        self.config: dict[str, Any] = {"widths": [int(w) for w in widths], "hidden": int(hidden),
                                       "kinds": int(kinds), "patch": int(patch)}
        if patch % 2 ** (len(widths) - 1):
            raise ValueError(f"patch {patch} must be divisible by {2 ** (len(widths) - 1)}")
        # two 3x3 convolutions per stage at full patch resolution first (sub-pixel detail lives
        # there), halving the resolution between stages; one convolution on the last stage
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            last = i == len(widths) - 1
            for _ in range(1 if last else 2):
                layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            if not last:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = patch // 2 ** (len(widths) - 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * side * side, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, 2 * kinds))
        self.kinds = int(kinds)
        self.patch = int(patch)

    def forward(self, x: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x)).view(len(x), self.kinds, 2)
        # the head's outputs are in units of 8 px: small weights start near "no offset"
        return out[torch.arange(len(x), device=x.device), kind] * 8.0


# ---------------------------------------------------------------------- patches
def cut_patches(frame: np.ndarray, centres: np.ndarray, mirrored: np.ndarray, patch: int = PATCH
                ) -> tuple[np.ndarray, np.ndarray]:
    """Patches of ``frame`` (uint8 [H, W, 3]) around ``centres`` (float [N, 2] x, y): each patch spans the
    ``patch`` pixels around the rounded centre (edge pixels repeat outside the frame), mirrored
    left-right where ``mirrored``. Returns (uint8 [N, patch, patch, 3], float [N, 2] the patch centres in
    frame pixels, i.e. where offset (0, 0) lies)."""
    half = patch // 2
    padded = np.pad(frame, ((half, half), (half, half), (0, 0)), mode="edge")
    h, w = frame.shape[:2]
    out = np.empty((len(centres), patch, patch, 3), np.uint8)
    origin = np.empty((len(centres), 2))
    for i, (x, y) in enumerate(np.asarray(centres, np.float64)):
        cx = int(min(max(math.floor(x + 0.5), 0), w))   # the patch's centre is between columns cx-1 and cx
        cy = int(min(max(math.floor(y + 0.5), 0), h))
        p = padded[cy:cy + patch, cx:cx + patch]
        out[i] = p[:, ::-1] if mirrored[i] else p
        origin[i] = (cx - 0.5, cy - 0.5)
    return out, origin


def _as_input(patches: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def predict_offsets(net: CornerRefiner, patches: np.ndarray, kinds: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Offsets float [N, 2] (x, y frame pixels, un-mirrored) of uint8 patches [N, P, P, 3]."""
    net.eval()
    off = net(_as_input(patches), torch.as_tensor(np.asarray(kinds), dtype=torch.long)).double().numpy()
    off[np.asarray(mirrored, bool), 0] *= -1
    return off


def refine_in_frame(net: CornerRefiner, frame: np.ndarray, landmarks: np.ndarray, iterations: int = 2,
                    shifts: tuple[tuple[int, int], ...] = SHIFTS) -> np.ndarray:
    """Refine the eye centres and mouth corners of ``landmarks`` (float [5, 2], frame pixels) in
    ``frame`` (uint8 [FRAME, FRAME, 3]): each iteration cuts patches around the current estimates
    (moved by each of ``shifts``), predicts the offsets and averages the implied positions. The nose
    (index 2) is returned unchanged. Returns float [5, 2]."""
    pts = np.asarray(landmarks, np.float64).reshape(5, 2).copy()
    idx = np.array([i for i, _, _ in LANDMARKS])
    kinds = np.array([k for _, k, _ in LANDMARKS])
    mirrored = np.array([m for _, _, m in LANDMARKS])
    shift = np.asarray(shifts, np.float64).reshape(-1, 2)
    for _ in range(iterations):
        centres = (pts[idx][None] + shift[:, None]).reshape(-1, 2)
        patches, origin = cut_patches(frame, centres, np.tile(mirrored, len(shift)), net.patch)
        off = predict_offsets(net, patches, np.tile(kinds, len(shift)), np.tile(mirrored, len(shift)))
        pts[idx] = (origin + off).reshape(len(shift), len(idx), 2).mean(0)
    return pts


# ---------------------------------------------------------------------- training data
def frame_template() -> np.ndarray:
    """faces-128's template quad (backend/align.py ``faces_template_quad``) in the ``FRAME`` px frame,
    float [4, 2] (pixel-centre coordinates scale about the image's outer corner)."""
    from backend.align import faces_template_quad

    return (faces_template_quad(128) + 0.5) * (FRAME / 128.0) - 0.5


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
    from backend.align import FaceLandmarks, ffhq_quad, keypoints_to_landmarks, quad_transform

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
class RefinerFileError(RuntimeError):
    """The refiner file is missing, corrupt or not a corner refiner."""


def save_refiner(net: CornerRefiner, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    save_model_file(net, net.config, path, FORMAT, meta)


def load_refiner(path: str | Path | None = None) -> CornerRefiner:
    """A refiner saved by :func:`save_refiner` (default: the committed file), in eval mode; raises
    :class:`RefinerFileError` naming the file and what is wrong."""
    path = Path(path) if path is not None else DEFAULT_PATH
    cfg, state, meta = read_model_file(path, FORMAT, "corner refiner", RefinerFileError)
    try:
        net = CornerRefiner(widths=cfg["widths"], hidden=cfg["hidden"], kinds=cfg["kinds"], patch=cfg["patch"])
        net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise RefinerFileError(f"{path}: weights do not match the refiner config: {e}") from e
    if net.patch != PATCH or net.kinds != 2:
        raise RefinerFileError(f"{path}: patch {net.patch} / kinds {net.kinds}, expected {PATCH} / 2")
    net.meta = meta  # type: ignore[assignment]
    return net.eval()


# ---------------------------------------------------------------------- evaluation
def frame_errors(net: CornerRefiner, frames: np.ndarray, truth: np.ndarray, start: np.ndarray,
                 iterations: int = 2) -> dict[str, Any]:
    """Errors at 128 px scale (frame px / 2) of the refined landmarks started from ``start`` [n, 5, 2]
    (frame px), and of the FFHQ quad built from them (nose: the truth's, unused by the quad)."""
    from backend.align import ffhq_quad

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
