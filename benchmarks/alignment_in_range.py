"""Should faces-128 align drawings that are already in its training range?

docs/alignment.md shows that aligning pays on faces rolled, shrunk and shifted outside faces-128's
training range. This measures the other side: procedural faces as the renderer draws them (256 px
layers, roll within +-15 deg, held-out seed 77), inverted in the framing the plug-in uses for
faces-128 today ("whole": the whole layer scaled to 128 px, exactly its training framing) and in the
frame the server's landmarks align them to ("aligned": ``aligned_edit.refined_procedural_face``, MTCNN
+ two keypoint-detector refinements + the patch refiner, the quad mapped onto the average face).
Reported per framing: ST-LPIPS and PSNR of the reconstruction in its own frame, and the PSNR of the
reconstruction pasted back into the layer over the face's quad (the same pixels for both framings);
the fast preset with ``--steps`` projection steps, no PTI.

    python3 benchmarks/alignment_in_range.py --faces 8 --steps 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import stylegan2  # noqa: E402
from alignment import align as A  # noqa: E402
from backend import models  # noqa: E402
from draggan_util.hashing import sha256_file  # noqa: E402
from inversion import project  # noqa: E402
from inversion.settings import PRESETS  # noqa: E402
from training import faces  # noqa: E402

LAYER = 256


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--steps", type=int, default=0, help="projection steps (0: the fast preset's)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--out", type=Path, default=None, help="JSON of every face and the means")
    args = ap.parse_args(argv)
    from alignment import landmarks as L
    from alignment.aligned_edit import refined_procedural_face

    torch.set_num_threads(args.threads)
    G = stylegan2.load_generator(models.EMBEDDED_MODEL_FILE, device="cpu")
    size = int(G.img_width)
    settings = PRESETS["fast"]
    if args.steps:
        settings = dataclasses.replace(settings, steps=args.steps)
    template = A.faces_template_quad(size)
    whole = np.array([[-0.5, -0.5], [-0.5, LAYER - 0.5], [LAYER - 0.5, LAYER - 0.5], [LAYER - 0.5, -0.5]])
    rows = []
    for i, p in enumerate(faces.sample_params(np.random.default_rng(77), args.faces)):
        img, kp = faces.render(p, LAYER)
        truth = A.keypoints_to_landmarks(kp)
        row: dict = {"face": i, "roll_deg": round(float(np.degrees(p[faces.PARAM_NAMES.index("roll")])), 1)}
        face = A.choose_face(L.detect_faces(img), truth.array()[:1])
        framings = {"whole": A.quad_transform(whole, size, size)}
        if face is not None:
            refined, _ = refined_procedural_face(img, face, size, size)
            framings["aligned"] = A.quad_transform(A.ffhq_quad(refined), size, size, template)
        face_px = A.quad_transform(A.ffhq_quad(truth), size, size).produced_area(LAYER, LAYER)
        for name, al in framings.items():
            frame, _valid = al.warp_image(img)
            t0 = time.perf_counter()
            res = project(G, frame, settings=settings, pti=False)
            back, mask = al.unwarp_image(res.reconstruction, LAYER, LAYER)
            row[name] = {"stlpips": round(float(res.stlpips), 4), "psnr": round(float(res.psnr), 2),
                         "face_psnr_layer": round(A.psnr_masked(back, img, face_px & mask), 2),
                         "face_coverage": round(float((face_px & mask).sum() / face_px.sum()), 3),
                         "seconds": round(time.perf_counter() - t0, 1)}
            print(f"face {i} (roll {row['roll_deg']:+.1f} deg) {name:>7}: ST-LPIPS {res.stlpips:.4f}, "
                  f"PSNR {res.psnr:5.2f} dB, face PSNR in the layer {row[name]['face_psnr_layer']:5.2f} dB", flush=True)
        rows.append(row)
    both = [r for r in rows if "aligned" in r]
    summary = {name: {k: round(float(np.mean([r[name][k] for r in both])), 4)
                      for k in ("stlpips", "psnr", "face_psnr_layer")} for name in ("whole", "aligned")}
    summary["faces"] = len(rows)
    summary["faces_found"] = len(both)
    summary["aligned_better_stlpips"] = sum(r["aligned"]["stlpips"] < r["whole"]["stlpips"] for r in both)
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps({"model": "faces-128", "model_file_sha256_prefix": sha256_file(
            models.EMBEDDED_MODEL_FILE)[:16], "steps": settings.steps, "preset": "fast", "pti": False,
            "threads": args.threads, "faces": rows, "mean": summary}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
