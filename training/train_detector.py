"""Train the keypoint detector on procedural faces (CPU friendly, resumable).

    OMP_NUM_THREADS=1 python -m training.train_detector            # train (resumes from --checkpoint)
    OMP_NUM_THREADS=1 python -m training.train_detector --eval-only   # held-out figures of --out

Data: a ring buffer of rendered faces (``training.faces``, seeds >= TRAIN_SEED_BASE, one seed per
chunk of 64 images) that is refreshed with new renders every step, so the net sees fresh faces
throughout; augmentations that keep keypoints exact (horizontal flip with left/right swapped,
integer shifts, blur, noise, brightness/contrast) make it robust to generator outputs.
Held-out evaluation uses seed ``--eval-seed`` (default 1), never used for training.
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

from alignment.detector import DEFAULT_PATH, KeypointDetector, flip_permutation, load_detector
from training import faces
from training.detector import save_detector

TRAIN_SEED_BASE = 10_000
CHUNK = 64


class RingPool:
    """Rendered training faces in a fixed-size ring buffer, filled chunk by chunk (chunk c = seed
    TRAIN_SEED_BASE + c), so the content after c chunks is reproducible."""

    def __init__(self, capacity: int, size: int):
        self.capacity = capacity - capacity % CHUNK
        self.images = np.zeros((self.capacity, size, size, 3), dtype=np.uint8)
        self.kps = np.zeros((self.capacity, faces.NUM_KEYPOINTS, 2), dtype=np.float32)
        self.size = size
        self.chunks = 0

    def __len__(self) -> int:
        return min(self.chunks * CHUNK, self.capacity)

    def add_chunk(self) -> None:
        imgs, kps = faces.dataset(TRAIN_SEED_BASE + self.chunks, CHUNK, self.size)
        at = (self.chunks * CHUNK) % self.capacity
        self.images[at : at + CHUNK] = imgs
        self.kps[at : at + CHUNK] = kps
        self.chunks += 1

    def fill_to(self, chunks: int, log: Any = None) -> None:
        """Render chunks until ``chunks`` have been added (only the last ``capacity`` are kept)."""
        first = max(self.chunks, chunks - self.capacity // CHUNK)
        self.chunks = first
        t0 = time.time()
        while self.chunks < chunks:
            self.add_chunk()
            if log and (self.chunks % 16 == 0 or self.chunks == chunks):
                log(f"rendering training faces: {len(self)} in pool, chunk {self.chunks}/{chunks} "
                    f"({time.time() - t0:.0f} s)")


def augment(images: np.ndarray, kps: np.ndarray, rng: np.random.Generator, flip_perm: list[int],
            max_shift: int = 8, photometric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B, H, W, 3] + [B, K, 2] -> float [B, 3, H, W] in [-1, 1] + [B, K, 2], keypoints exact."""
    b, h, w, _ = images.shape
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    k = torch.from_numpy(kps.copy())
    flip = rng.random(b) < 0.5
    if flip.any():
        fi = torch.from_numpy(np.nonzero(flip)[0])
        x[fi] = x[fi].flip(-1)
        kf = k[fi][:, flip_perm]
        kf[..., 0] = (w - 1) - kf[..., 0]  # x = j at pixel j's centre: mirror is j -> w-1-j
        k[fi] = kf
    pad = F.pad(x, (max_shift,) * 4, mode="replicate")
    shifts = rng.integers(-max_shift, max_shift + 1, size=(b, 2))
    out = torch.empty_like(x)
    for i, (dx, dy) in enumerate(shifts):
        out[i] = pad[i, :, max_shift - dy : max_shift - dy + h, max_shift - dx : max_shift - dx + w]
    k = k + torch.from_numpy(shifts.astype(np.float32))[:, None, :]
    if not photometric:
        return out, k
    # blur: symmetric Gaussian kernels do not move anything
    blur = rng.random(b) < 0.4
    for i in np.nonzero(blur)[0]:
        sigma = float(rng.uniform(0.3, 1.1))
        r = 3
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        g = torch.exp(-t * t / (2 * sigma * sigma))
        g = g / g.sum()
        img = F.pad(out[i : i + 1], (r, r, r, r), mode="replicate")
        img = F.conv2d(img, g.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
        img = F.conv2d(img, g.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
        out[i] = img[0]
    gain = torch.from_numpy(rng.uniform(0.85, 1.15, (b, 1, 1, 1)).astype(np.float32))
    bias = torch.from_numpy(rng.uniform(-0.08, 0.08, (b, 3, 1, 1)).astype(np.float32))
    noise = torch.from_numpy(rng.uniform(0.0, 0.04, (b, 1, 1, 1)).astype(np.float32))
    out = out * gain + bias + noise * torch.randn_like(out)
    return out.clamp(-1.0, 1.0), k


def blur_images(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blurred copy of uint8 [N, H, W, 3] images (a stand-in for softer generator output)."""
    from PIL import Image, ImageFilter

    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(sigma))) for im in images])


def heatmap_targets(kps: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
    """Soft one-hot cell targets [B, K, h*w]: each keypoint split bilinearly over its 4 nearest cells."""
    g = (kps - (stride - 1) / 2) / stride
    gx = g[..., 0].clamp(0, w - 1 - 1e-4)
    gy = g[..., 1].clamp(0, h - 1 - 1e-4)
    x0, y0 = gx.floor(), gy.floor()
    fx, fy = gx - x0, gy - y0
    tgt = torch.zeros(*kps.shape[:2], h * w)
    for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = (x0 + dx).clamp(0, w - 1).long()
        yi = (y0 + dy).clamp(0, h - 1).long()
        tgt.scatter_add_(-1, (yi * w + xi).unsqueeze(-1), wt.unsqueeze(-1))
    return tgt


def evaluate(det: KeypointDetector, images: np.ndarray, kps: np.ndarray, flip_average: bool = False
             ) -> dict[str, Any]:
    """Held-out errors in pixels (Euclidean distance per keypoint)."""
    pred = det.predict(images, flip_average=flip_average)
    err = np.linalg.norm(pred - kps, axis=-1)
    per_kp = {n: round(float(err[:, i].mean()), 4) for i, n in enumerate(faces.KEYPOINT_NAMES)}
    return {"n_images": int(len(images)), "mean_px": float(err.mean()), "median_px": float(np.median(err)),
            "p95_px": float(np.percentile(err, 95)), "max_px": float(err.max()), "per_keypoint_mean_px": per_kp}


def _lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH, help="detector file written at the end")
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/detector/checkpoint.pt"),
                    help="resumable training state (resumed when it exists)")
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--pool", type=int, default=8192, help="ring buffer capacity (images)")
    ap.add_argument("--initial-chunks", type=int, default=48, help="chunks of 64 faces rendered first")
    ap.add_argument("--chunk-every", type=int, default=4, help="render one new chunk every N steps")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=1)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-only", action="store_true", help="only evaluate --out on the held-out seed")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"held-out set: faces.dataset(seed={args.eval_seed}, n={args.eval_n}, size={args.size})")
    ev_imgs, ev_kps = faces.dataset(args.eval_seed, args.eval_n, args.size)
    if args.eval_only:
        det = load_detector(args.out)
        log(json.dumps(evaluate(det, ev_imgs, ev_kps), indent=1))
        for sigma, flip in ((0.0, True), (0.7, False), (1.2, False)):
            r = evaluate(det, blur_images(ev_imgs, sigma) if sigma else ev_imgs, ev_kps, flip_average=flip)
            what = f"blurred (Gaussian sigma {sigma} px)" if sigma else "flip-averaged"
            log(f"{what}: mean {r['mean_px']:.3f} px median {r['median_px']:.3f} "
                f"p95 {r['p95_px']:.3f} max {r['max_px']:.3f}")
        return 0

    det = KeypointDetector(faces.NUM_KEYPOINTS, keypoint_names=faces.KEYPOINT_NAMES)
    det = det.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(det.parameters(), lr=args.lr, weight_decay=1e-4)
    step, elapsed = 0, 0.0
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    if args.checkpoint.is_file():
        ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)  # our own file
        det.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, elapsed = int(ck["step"]), float(ck["elapsed_s"])
        rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed {args.checkpoint} at step {step} ({elapsed / 60:.1f} min trained)")
    pool = RingPool(args.pool, args.size)
    pool.fill_to(args.initial_chunks + step // args.chunk_every, log)
    flip_perm = flip_permutation(faces.KEYPOINT_NAMES)
    assert flip_perm is not None

    def save_checkpoint() -> None:
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.checkpoint.with_name(args.checkpoint.name + ".tmp")
        torch.save({"model": det.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "elapsed_s": elapsed, "numpy_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "args": vars(args) | {"out": str(args.out),
                                                                             "checkpoint": str(args.checkpoint)}},
                   tmp)
        tmp.replace(args.checkpoint)

    det.train()
    run_loss, run_err, run_n = 0.0, 0.0, 0
    t_last = time.time()
    while step < args.steps:
        t0 = time.time()
        if step % args.chunk_every == 0:
            pool.add_chunk()
        idx = rng.integers(0, len(pool), args.batch)
        x, k = augment(pool.images[idx], pool.kps[idx], rng, flip_perm)
        x = x.contiguous(memory_format=torch.channels_last)
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr)
        pred, logits = det(x)
        n, kk, h, w = logits.shape
        err = (pred - k).norm(dim=-1)
        coord_loss = F.smooth_l1_loss(pred, k, beta=0.25)
        tgt = heatmap_targets(k, h, w, det.stride)
        ce = -(tgt * torch.log_softmax(logits.reshape(n, kk, h * w), dim=-1)).sum(-1).mean()
        loss = coord_loss + 0.05 * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        elapsed += time.time() - t0
        run_loss += float(loss.detach())
        run_err += float(err.detach().mean())
        run_n += 1
        if step % 25 == 0 or step == args.steps:
            rate = 25 * args.batch / max(1e-6, time.time() - t_last)
            eta = (args.steps - step) * elapsed / step / 60
            log(f"step {step}/{args.steps} loss {run_loss / run_n:.4f} train err {run_err / run_n:.3f} px "
                f"lr {_lr(step, args.steps, args.lr):.2e} {rate:.1f} img/s pool {len(pool)} "
                f"elapsed {elapsed / 60:.1f} min eta {eta:.1f} min")
            run_loss, run_err, run_n, t_last = 0.0, 0.0, 0, time.time()
        if step % args.checkpoint_every == 0 or step == args.steps:
            save_checkpoint()
        if step % args.eval_every == 0 and step < args.steps:
            r = evaluate(det, ev_imgs[:256], ev_kps[:256])
            det.train()
            log(f"  held-out (256): mean {r['mean_px']:.3f} px median {r['median_px']:.3f} p95 {r['p95_px']:.3f}")

    r = evaluate(det, ev_imgs, ev_kps)
    det = det.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    meta = {"trained_steps": step, "batch": args.batch, "train_seconds": round(elapsed, 1),
            "threads": args.threads, "held_out": {k: v for k, v in r.items() if k != "per_keypoint_mean_px"},
            "eval_seed": args.eval_seed, "train_seeds": f">= {TRAIN_SEED_BASE}", "size": args.size,
            "command": "OMP_NUM_THREADS=1 python -m training.train_detector " + " ".join(sys.argv[1:])}
    save_detector(det, args.out, meta)
    log(json.dumps(r, indent=1))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
