"""Inversion figures: ST-LPIPS (VGG) and PSNR of projections, vs steps and on real photos.

Seconds are given as wall time and as this process's CPU time: on a shared machine the wall
time mostly measures the other jobs.

Parts (all by default):

* ``generated``: images the model makes from known latents (seeded z, truncation psi 0.7);
  project each with the "fast" preset at several step counts (the schedule scales with the
  count, so each row is what ``steps=N`` gives). Target: ST-LPIPS < 0.05 with the default preset.
* ``renders``: procedural faces from the training renderer (``training.faces.dataset(2026, n)``), which
  the model never produced: the drawings README invites users to edit. Same preset as ``generated``,
  at its default step count.
* ``photos``: scikit-image's CC0/public-domain photos (astronaut, coffee, chelsea), centre-cropped
  and scaled to the model's size, projected with the "fast" preset without and with pivotal
  tuning. With the procedural default model these photos are far outside its domain.
* ``lpips-cost``: seconds per ST-LPIPS forward and forward+backward for one image.

ST-LPIPS figures are on the shift-tolerant LPIPS (VGG) scale, not comparable to plain LPIPS.
``scikit-image`` is needed for ``photos`` only (``pip install scikit-image``; not a dependency).

``--encoder FILE`` runs ``generated`` and ``renders`` with the W+ encoder's preset (``ENCODER_PRESETS``,
what the server uses when the model has an encoder) instead of the plain ``fast`` preset.

Examples: ``OMP_NUM_THREADS=2 python benchmarks/inversion.py --part generated --seeds 2``;
the figures in the docs: ``--part generated --seeds 16 --steps 150`` and ``--part renders --renders 16``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import stylegan2  # noqa: E402
from inversion import ENCODER_PRESETS, PRESETS, project  # noqa: E402
from inversion._common import tensor_to_uint8  # noqa: E402
from inversion.lpips import STLPIPS  # noqa: E402

DEFAULT_MODEL = REPO / "backend" / "data" / "faces-128.pt"


def load_model(path: str | None, device: str, random_resolution: int) -> tuple[Any, str]:
    """The trained default model when present, else a small random-weight generator."""
    candidate = Path(path) if path else DEFAULT_MODEL
    if candidate.exists():
        return stylegan2.load_generator(candidate, device=device), str(candidate.relative_to(REPO)
                                                                       if candidate.is_relative_to(REPO)
                                                                       else candidate)
    if path:
        raise SystemExit(f"model not found: {path}")
    torch.manual_seed(0)
    res = random_resolution
    G = stylegan2.Generator(z_dim=128, w_dim=128, img_resolution=res, img_channels=3, channel_base=32 * res,
                            channel_max=128, mapping_kwargs={"num_layers": 4})
    return G.eval().requires_grad_(False).to(device), f"random-weight {res}x{res} generator (no trained model yet)"


def progress_line(prefix: str):  # noqa: ANN201
    def show(step: int, total: int, metrics: dict[str, Any]) -> None:
        if step == total or step % 10 == 0:
            print(f"\r  {prefix}: step {step}/{total} {metrics['phase']} ST-LPIPS {metrics['stlpips']:.3f} "
                  f"PSNR {metrics['psnr']:.1f}", end="", file=sys.stderr, flush=True)
        if step == total:
            print(file=sys.stderr)
    return show


def part_generated(G: Any, seeds: int, step_counts: list[int], encoder: Any = None) -> None:
    print(f"\n(a) images generated from known latents (z seeded 0..{seeds - 1}, truncation psi 0.7), "
          f"preset {preset_name(encoder)}")
    targets = []
    for seed in range(seeds):
        z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(next(G.parameters()).device)
        with torch.no_grad():
            ws = G.mapping(z, None, truncation_psi=0.7)
            targets.append(tensor_to_uint8(G.synthesis(ws, noise_mode="const")))
    rows = []
    for steps in step_counts:
        settings = (ENCODER_PRESETS if encoder is not None else PRESETS)["fast"].replace(steps=steps)
        results, cpu = [], []
        for seed, target in enumerate(targets):
            started = time.process_time()
            results.append(project(G, target, settings=settings, encoder=encoder,
                                   progress=progress_line(f"steps={steps} seed={seed}")))
            cpu.append(time.process_time() - started)
        rows.append((steps, [r.stlpips for r in results], [r.psnr for r in results], [r.seconds for r in results],
                     cpu))
    default_steps = (ENCODER_PRESETS if encoder is not None else PRESETS)["fast"].steps
    print(f"{'steps':>6} {'ST-LPIPS(VGG) mean':>19} {'median':>7} {'max':>7} {'PSNR dB mean':>13} {'min':>6} "
          f"{'wall s':>7} {'CPU s':>6}")
    for steps, stl, psnr, secs, cpu in rows:
        mark = "  <- default 'fast'" if steps == default_steps else ""
        print(f"{steps:>6} {np.mean(stl):>19.4f} {np.median(stl):>7.4f} {np.max(stl):>7.4f} {np.mean(psnr):>13.2f} "
              f"{np.min(psnr):>6.2f} {np.mean(secs):>7.1f} {np.mean(cpu):>6.1f}{mark}")


def preset_name(encoder: Any) -> str:
    return "'fast' with the W+ encoder (ENCODER_PRESETS)" if encoder is not None else "'fast'"


def part_renders(G: Any, count: int, encoder: Any = None) -> None:
    """Procedural renders (never produced by the model), the default step count of the preset."""
    from training import faces  # only this part needs the renderer

    print(f"\n(r) {count} procedural renders (training.faces.dataset(2026, {count})), preset {preset_name(encoder)}")
    images, _ = faces.dataset(2026, count, size=G.img_resolution)
    settings = (ENCODER_PRESETS if encoder is not None else PRESETS)["fast"]
    stl, psnr, secs, cpu = [], [], [], []
    print(f"{'render':>6} {'ST-LPIPS(VGG)':>14} {'PSNR dB':>8} {'steps':>6} {'wall s':>7} {'CPU s':>6}")
    for index, image in enumerate(images):
        started = time.process_time()
        res = project(G, np.ascontiguousarray(image), settings=settings, encoder=encoder,
                      progress=progress_line(f"render {index}"))
        cpu.append(time.process_time() - started)
        stl.append(res.stlpips), psnr.append(res.psnr), secs.append(res.seconds)
        print(f"{index:>6} {res.stlpips:>14.4f} {res.psnr:>8.2f} {res.steps:>6} {res.seconds:>7.1f} {cpu[-1]:>6.1f}",
              flush=True)
    print(f"renders: ST-LPIPS(VGG) mean {np.mean(stl):.4f}, median {np.median(stl):.4f}, max {np.max(stl):.4f}; "
          f"PSNR mean {np.mean(psnr):.2f} dB, min {np.min(psnr):.2f}; wall {np.mean(secs):.1f} s, "
          f"CPU {np.mean(cpu):.1f} s per picture")


def load_photos(width: int, height: int, names: list[str]) -> dict[str, np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("the 'photos' part needs scikit-image: pip install scikit-image") from None
    from PIL import Image

    photos = {}
    for name in names:
        img = getattr(data, name)()
        h, w = img.shape[:2]
        # centre crop to the model's aspect ratio, then scale
        target_ratio = width / height
        if w / h > target_ratio:
            cw, ch = int(round(h * target_ratio)), h
        else:
            cw, ch = w, int(round(w / target_ratio))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        crop = Image.fromarray(img[y0:y0 + ch, x0:x0 + cw, :3])
        photos[name] = np.asarray(crop.resize((width, height), Image.Resampling.LANCZOS))
    return photos


def part_photos(G: Any, names: list[str]) -> None:
    print("\n(b) real photos (scikit-image data; out of the procedural model's domain), preset 'fast'")
    photos = load_photos(int(G.img_width), int(G.img_height), names)
    print(f"{'photo':>10} {'PTI':>4} {'ST-LPIPS(VGG)':>14} {'PSNR dB':>8} {'steps':>6} {'wall s':>7} {'CPU s':>6}")
    for name, pixels in photos.items():
        for pti in (False, True):
            started = time.process_time()
            res = project(G, pixels, pti=pti, progress=progress_line(f"{name} pti={pti}"))
            cpu = time.process_time() - started
            print(f"{name:>10} {'yes' if pti else 'no':>4} {res.stlpips:>14.4f} {res.psnr:>8.2f} {res.steps:>6} "
                  f"{res.seconds:>7.1f} {cpu:>6.1f}", flush=True)


def part_lpips_cost(side: int) -> None:
    print(f"\nST-LPIPS cost per {side}x{side} image (CPU seconds of this process, mean of 5)")
    for net in ("vgg", "alex"):
        metric = STLPIPS(net)
        x = torch.rand(1, 3, side, side) * 2 - 1
        with torch.no_grad():
            metric.features(x)
            t = time.process_time()
            for _ in range(5):
                metric.features(x)
            fwd = (time.process_time() - t) / 5
        target = metric.features(x.flip(3))
        xg = x.clone().requires_grad_(True)
        t = time.process_time()
        for _ in range(5):
            torch.autograd.grad(metric.distance_to(xg, target).sum(), xg)
        both = (time.process_time() - t) / 5
        print(f"  {net:>4}: forward {fwd:.3f} s, forward+backward (target features cached) {both:.3f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "generated", "renders", "photos", "lpips-cost"], default="all")
    parser.add_argument("--model", help="generator file (default: backend/data/faces-128.pt if present)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3, help="generated images for part (a)")
    parser.add_argument("--steps", default="25,50,100,150", help="step counts for part (a), comma separated")
    parser.add_argument("--renders", type=int, default=4, help="procedural renders for part (r)")
    parser.add_argument("--encoder", help="W+ encoder file: generated and renders use ENCODER_PRESETS")
    parser.add_argument("--photos", default="astronaut,coffee,chelsea", help="scikit-image photos for part (b)")
    parser.add_argument("--random-resolution", type=int, default=128,
                        help="size of the random-weight stand-in generator when no trained model exists")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("command: " + " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]))
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    if args.part in ("all", "lpips-cost"):
        part_lpips_cost(128)
    if args.part == "lpips-cost":
        return
    G, model_name = load_model(args.model, args.device, args.random_resolution)
    print(f"model: {model_name} ({G.img_width}x{G.img_height}, num_ws {G.num_ws}, w_dim {G.w_dim})")
    fast = PRESETS["fast"]
    print(f"preset 'fast': {fast.steps} steps, lr {fast.lr}, search {fast.search_samples}, loss ST-LPIPS "
          f"{fast.lpips_net} + {fast.pixel_weight} MSE; PTI {fast.pti_steps} steps")
    encoder = None
    if args.encoder:
        from inversion.encoder import load_encoder

        encoder = load_encoder(args.encoder, device=args.device)
    if args.part in ("all", "generated"):
        part_generated(G, args.seeds, [int(s) for s in args.steps.split(",") if s], encoder)
    if args.part in ("all", "renders"):
        part_renders(G, args.renders, encoder)
    if args.part in ("all", "photos"):
        part_photos(G, [p for p in args.photos.split(",") if p])


if __name__ == "__main__":
    main()
