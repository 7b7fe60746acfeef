"""Train the W+ encoder (``inversion.encoder``) of an exported generator, on CPU, in minutes.

    python -m training.train_encoder backend/data/faces-128.pt --out backend/data/faces-128.encoder.pt \
        --minutes 15 --threads 1

Pairs are free: for z ~ N(0, I) the latent is ``ws = G.mapping(z)`` and two pictures have it as
their answer:

* the generator's own image ``G.synthesis(ws)`` (half of them with a style-mixed ``ws``, so the
  encoder sees W+ codes as the ones edits end in);
* the procedural render of z (``training.faces``), since the generator was trained to draw the
  render of its z: the pictures README invites users to edit.  ``--render-fraction`` of the batch.

Loss = the latent error ``mean(((E(x) - ws) / w_scale)²)`` + ``--image-weight`` * L1 between
``G(E(x))`` and ``x`` on ``--image-images`` pictures of the batch (backpropagated through the frozen
generator: it teaches what the latent error cannot weigh, which layers matter for the picture).

Re-export rule: the encoder belongs to the generator file (its SHA-256 is in the encoder file);
retrain it whenever the generator is re-exported.  The held-out figures (fixed seed, never trained
on) are printed at the end and stored in the file's ``training`` record.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import stylegan2
from draggan_util.hashing import sha256_file
from inversion.encoder import LatentEncoder, load_encoder, save_encoder
from training import faces
from training.train_generator import params_for_z, to_tensor

HELD_OUT_SEED = 987_654


def latent_statistics(G: Any, samples: int = 2000, seed: int = 0) -> tuple[torch.Tensor, float]:
    """(w_avg [w_dim], mean per-dimension std of w) of the mapping network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = G.mapping(torch.randn(samples, G.z_dim, generator=gen), None)[:, 0, :]
    return w.mean(0), float(w.std(0).mean())


def make_batch(G: Any, rng: np.random.Generator, batch: int, render_fraction: float, mix_fraction: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pictures [B, 3, R, R] in [-1, 1], their latents [B, num_ws, w_dim])."""
    z = rng.standard_normal((batch, G.z_dim)).astype(np.float32)
    n_render = int(round(render_fraction * batch))
    with torch.no_grad():
        ws = G.mapping(torch.from_numpy(z), None)
        # style mixing on the generated part only: a render has exactly one z
        n_mix = int(round(mix_fraction * (batch - n_render)))
        if n_mix:
            other = G.mapping(torch.from_numpy(rng.standard_normal((n_mix, G.z_dim)).astype(np.float32)), None)
            for i in range(n_mix):
                cut = int(rng.integers(1, G.num_ws))
                ws[n_render + i, cut:] = other[i, cut:]
        parts = []
        if n_render:
            renders, _ = faces.render_batch(params_for_z(z[:n_render]), size=G.img_resolution)
            parts.append(to_tensor(renders))
        if batch - n_render:
            parts.append(G.synthesis(ws[n_render:], noise_mode="const").clamp(-1, 1))
    return torch.cat(parts), ws


def held_out_figures(G: Any, encoder: LatentEncoder, n: int = 32) -> dict[str, float]:
    """Latent error and PSNR of G(E(x)) vs x on a fixed held-out set: generated and rendered."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    figures: dict[str, float] = {}
    with torch.no_grad():
        for name, fraction in (("generated", 0.0), ("render", 1.0)):
            x, ws = make_batch(G, rng, n, fraction, 0.0)
            pred = encoder(x)
            err = ((pred - ws) / encoder.w_scale).square().mean()
            recon = G.synthesis(pred, noise_mode="const").clamp(-1, 1)
            mse = ((recon - x) / 2).square().mean(dim=(1, 2, 3))
            figures[f"{name}_latent_error"] = float(err)
            figures[f"{name}_psnr_db"] = float((-10 * torch.log10(mse.clamp_min(1e-10))).mean())
            start = encoder.w_avg.expand_as(pred)  # what the projection would start from without it
            avg = G.synthesis(start, noise_mode="const").clamp(-1, 1)
            mse0 = ((avg - x) / 2).square().mean(dim=(1, 2, 3))
            figures[f"{name}_psnr_db_w_avg"] = float((-10 * torch.log10(mse0.clamp_min(1e-10))).mean())
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generator", type=Path, help="the exported generator file (our format)")
    ap.add_argument("--out", type=Path, required=True, help="encoder file to write")
    ap.add_argument("--resume", action="store_true", help="continue from --out when it exists")
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-time budget of the training loop")
    ap.add_argument("--iterations", type=int, default=None, help="stop after this many iterations")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--render-fraction", type=float, default=0.5)
    ap.add_argument("--mix-fraction", type=float, default=0.5)
    ap.add_argument("--image-weight", type=float, default=1.0)
    ap.add_argument("--image-images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--held-out", type=int, default=32, help="held-out pictures per kind for the final figures")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    G = stylegan2.load_generator(args.generator).eval().requires_grad_(False)
    sha = sha256_file(args.generator)
    if args.resume and args.out.exists():
        encoder = load_encoder(args.out, sha).train().requires_grad_(True)
        print(f"resuming {args.out}", file=sys.stderr)
    else:
        encoder = LatentEncoder(G.num_ws, G.w_dim, input_size=min(64, G.img_resolution))
        w_avg, w_scale = latent_statistics(G)
        encoder.set_latent_statistics(w_avg, w_scale)
    opt = torch.optim.Adam(encoder.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    iteration, images = 0, 0
    window: list[float] = []
    while True:
        elapsed = time.perf_counter() - started
        if elapsed > args.minutes * 60 or (args.iterations is not None and iteration >= args.iterations):
            break
        # cosine decay over the wall-time budget (or the iteration budget when that is set)
        t = iteration / args.iterations if args.iterations else elapsed / (args.minutes * 60)
        for group in opt.param_groups:
            group["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
        x, ws = make_batch(G, rng, args.batch, args.render_fraction, args.mix_fraction)
        pred = encoder(x)
        loss = ((pred - ws) / encoder.w_scale).square().mean()
        if args.image_weight > 0 and args.image_images > 0:
            k = min(args.image_images, args.batch)
            recon = G.synthesis(pred[:k], noise_mode="const")
            loss = loss + args.image_weight * F.l1_loss(recon, x[:k])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        iteration += 1
        images += args.batch
        window.append(float(loss.detach()))
        if iteration % args.log_every == 0:
            print(f"encoder it {iteration}  images {images}  loss {np.mean(window):.4f}  "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            window.clear()
    encoder.eval()
    figures = held_out_figures(G, encoder, args.held_out)
    record = {"iterations": iteration, "images": images, "seconds": round(time.perf_counter() - started, 1),
              "threads": args.threads, "batch": args.batch, "image_weight": args.image_weight, **figures}
    save_encoder(encoder, args.out, sha, record)
    for name, value in record.items():
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
