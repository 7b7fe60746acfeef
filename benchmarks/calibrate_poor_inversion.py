"""Calibrate a model's "poor inversion" thresholds on data: in-domain pictures (the model's own
samples, and for the default model renders of its procedural training domain) against
out-of-domain photos (scikit-image's public-domain astronaut, coffee and chelsea, two crops each).

Each picture is projected exactly as the backend does for the plug-in's default settings (preset
"fast", no PTI), and the ST-LPIPS (VGG) and PSNR of the reconstruction are recorded. The thresholds
are set halfway between the groups: ST-LPIPS halfway between the worst in-domain and the best
out-of-domain value, PSNR likewise; a reconstruction is "poor" when either is crossed (the
plug-in's rule). When the groups overlap the midpoint is still used and the overlap is reported.

Writes backend/data/<model>.calibration.json (read by backend/models.py: the thresholds go to the
plug-in in the model's metadata, `welcome`) and docs/poor-inversion-<model>.md (the figures).
Rerun it whenever the model is re-exported: tests/inversion/test_poor_inversion.py fails while the
file describes another model.

    OMP_NUM_THREADS=2 python benchmarks/calibrate_poor_inversion.py            # faces-128, ~20 CPU-min
    python benchmarks/calibrate_poor_inversion.py --generated 2 --renders 2    # quicker, coarser

Needs scikit-image (the `bench` extra: pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from draggan_util.hashing import sha256_file  # noqa: E402
from inversion import project  # noqa: E402
from inversion._common import tensor_to_uint8  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")
CROPS = {"full": 1.0, "centre-60": 0.6}     # fraction of the largest centred model-shaped crop
TEST_PHOTO = REPO / "tests" / "inversion" / "data" / "astronaut-full-128.png"


def photo_crop(name: str, width: int, height: int, fraction: float) -> np.ndarray:
    """A centred crop of a scikit-image photo, `fraction` of the largest model-shaped one, scaled."""
    from PIL import Image
    from skimage import data

    img = getattr(data, name)()
    h, w = img.shape[:2]
    ratio = width / height
    cw, ch = (int(round(h * ratio)), h) if w / h > ratio else (w, int(round(w / ratio)))
    cw, ch = int(cw * fraction), int(ch * fraction)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = Image.fromarray(np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw, :3]))
    return np.asarray(crop.resize((width, height), Image.Resampling.LANCZOS))


def generated(G: Any, seed: int, psi: float) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, G.z_dim, generator=gen)
    with torch.no_grad():
        img = G.synthesis(G.mapping(z, c=None, truncation_psi=psi), noise_mode="const")
    return tensor_to_uint8(img)


def thresholds(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Midpoints between the groups, and how many of each group they misjudge."""
    inside = [s for s in samples if s["group"] == "in-domain"]
    outside = [s for s in samples if s["group"] == "out-of-domain"]
    worst_in_lp, best_out_lp = max(s["stlpips"] for s in inside), min(s["stlpips"] for s in outside)
    worst_in_db, best_out_db = min(s["psnr"] for s in inside), max(s["psnr"] for s in outside)
    lp = round((worst_in_lp + best_out_lp) / 2, 3)
    db = round((worst_in_db + best_out_db) / 2, 1)

    def poor(s: dict[str, Any]) -> bool:
        return s["stlpips"] > lp or s["psnr"] < db

    return {"poor_stlpips": lp, "poor_psnr_db": db,
            "in_domain_flagged": sum(poor(s) for s in inside), "in_domain": len(inside),
            "out_of_domain_missed": sum(not poor(s) for s in outside), "out_of_domain": len(outside),
            "separable_stlpips": worst_in_lp < best_out_lp, "separable_psnr": worst_in_db > best_out_db}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="faces-128", help="a model name the backend serves (default faces-128)")
    ap.add_argument("--generated", type=int, default=3, help="model samples (seeds 0..N-1, psi 0.7)")
    ap.add_argument("--renders", type=int, default=3, help="procedural renders (faces-128's training domain)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--out", type=Path, help="default: backend/data/<model>.calibration.json")
    ap.add_argument("--from-json", type=Path, help="only rewrite the figures' page from an earlier run's JSON")
    ap.add_argument("--save-test-photo", action="store_true",
                    help=f"also write the astronaut crop the warning test uses ({TEST_PHOTO.relative_to(REPO)})")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.from_json:
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
        (REPO / "docs" / f"poor-inversion-{result['model']}.md").write_text(markdown(result), encoding="utf-8")
        return 0
    from backend import models

    path = models.resolve_model(args.model)
    G = stylegan2.load_generator(path, device="cpu")
    # as the server does: a W+ encoder beside the model file is the projection's start (and changes
    # the preset's steps and loss, so the thresholds are for the model *with* it)
    from backend.model_pool import encoder_path
    from inversion.encoder import load_encoder

    encoder = load_encoder(encoder_path(path), sha256_file(path)) if encoder_path(path).is_file() else None
    width, height = int(G.img_width), int(G.img_height)
    pictures: list[tuple[str, str, np.ndarray]] = []
    for seed in range(args.generated):
        pictures.append(("in-domain", f"sample seed={seed} psi=0.7", generated(G, seed, 0.7)))
    if args.renders and args.model == models.DEFAULT_MODEL:
        from training import faces

        renders, _points = faces.dataset(2026, args.renders, size=width)
        pictures += [("in-domain", f"render {i} (training.faces seed 2026)", r) for i, r in enumerate(renders)]
    for name in PHOTOS:
        for crop, fraction in CROPS.items():
            pictures.append(("out-of-domain", f"{name} {crop}", photo_crop(name, width, height, fraction)))
    if args.save_test_photo:
        from PIL import Image

        TEST_PHOTO.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_crop("astronaut", width, height, 1.0)).save(TEST_PHOTO, optimize=True)
        print(f"wrote {TEST_PHOTO.relative_to(REPO)}")

    samples = []
    started = time.perf_counter()
    for group, name, pixels in pictures:
        t0 = time.process_time()
        res = project(G, pixels, preset="fast", pti=False, encoder=encoder)
        samples.append({"group": group, "name": name, "stlpips": round(float(res.stlpips), 4),
                        "psnr": round(float(res.psnr), 2), "cpu_s": round(time.process_time() - t0, 1)})
        print(f"{group:>13}  {name:<34} ST-LPIPS {res.stlpips:.4f}  PSNR {res.psnr:6.2f} dB", flush=True)
    result = {"model": args.model, "model_file": path.name, "model_sha256": sha256_file(path),
              "preset": "fast", "pti": False,
              "encoder_sha256": sha256_file(encoder_path(path)) if encoder is not None else None,
              "metric": "ST-LPIPS (VGG, shift-tolerant) and PSNR of the projection",
              **thresholds(samples), "samples": samples,
              "command": "python benchmarks/calibrate_poor_inversion.py " + " ".join(map(shlex.quote, argv or
                                                                                      sys.argv[1:])),
              "machine": f"{platform.machine()}, {args.threads} torch threads, torch {torch.__version__}",
              "wall_s": round(time.perf_counter() - started, 1),
              "date": time.strftime("%Y-%m-%d", time.gmtime())}
    out = args.out or REPO / "backend" / "data" / f"{args.model}.calibration.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nthresholds: poor when ST-LPIPS > {result['poor_stlpips']} or PSNR < {result['poor_psnr_db']} dB; "
          f"in-domain flagged {result['in_domain_flagged']}/{result['in_domain']}, out-of-domain missed "
          f"{result['out_of_domain_missed']}/{result['out_of_domain']}; wrote {out}")
    doc = markdown(result)
    doc_path = REPO / "docs" / f"poor-inversion-{args.model}.md"
    doc_path.write_text(doc, encoding="utf-8")
    print(f"wrote {doc_path}\n\n{doc}")
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The figures for docs/poor-inversion-<model>.md (rewritten by every run)."""
    lines = [f"# Poor-inversion thresholds of `{r['model']}`", "",
             "Made by `benchmarks/calibrate_poor_inversion.py` (rerun it when the model is re-exported; "
             "`tests/inversion/test_poor_inversion.py` fails while the figures describe another file).", "",
             f"- command: `{r['command'].strip()}`",
             f"- model file: `{r['model_file']}` (sha256 `{r['model_sha256'][:16]}…`), {r['date']}",
             f"- machine: {r['machine']}; {r['wall_s']:.0f} s wall in all",
             f"- projection: preset `{r['preset']}`, PTI {'on' if r['pti'] else 'off'} (the plug-in's defaults); "
             f"{r['metric']}",
             f"- **poor when ST-LPIPS > {r['poor_stlpips']} or PSNR < {r['poor_psnr_db']} dB** (halfway between the "
             "worst in-domain and the best out-of-domain value of each measure); "
             f"in-domain flagged {r['in_domain_flagged']}/{r['in_domain']}, out-of-domain missed "
             f"{r['out_of_domain_missed']}/{r['out_of_domain']}; separable by ST-LPIPS alone: "
             f"{'yes' if r['separable_stlpips'] else 'no'}, by PSNR alone: {'yes' if r['separable_psnr'] else 'no'}",
             "- before this calibration the plug-in used 0.35 / 16 dB for every model (still the default for "
             "official models, which are not calibrated here)", "",
             "| picture | group | ST-LPIPS | PSNR dB | poor | CPU s |", "|---|---|---|---|---|---|"]
    for s in r["samples"]:
        flag = s["stlpips"] > r["poor_stlpips"] or s["psnr"] < r["poor_psnr_db"]
        old = s["stlpips"] > 0.35 or s["psnr"] < 16.0
        verdict = ("yes" if flag else "no") + ("" if flag == old else f" (0.35/16 dB: {'yes' if old else 'no'})")
        lines.append(f"| {s['name']} | {s['group']} | {s['stlpips']:.3f} | {s['psnr']:.1f} | {verdict} "
                     f"| {s['cpu_s']:.0f} |")
    lines += ["", "Photos: scikit-image's `astronaut` (NASA, public domain), `coffee` and `chelsea` (CC0), centred "
              "model-shaped crops (`full` = the largest, `centre-60` = 60 % of it) scaled with Lanczos.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
