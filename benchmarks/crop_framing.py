"""Why the plug-in's Auto crop sends the whole layer to faces-128 (its registry ``framing="whole"``).

Procedural face drawings rendered larger than the model (``--size`` px, upright, as README invites
users to edit), inverted with the server's fast preset and the model's encoder two ways:

* ``points crop``: a model-sized crop (1:1) centred between the mouth corners: what the Auto crop
  sends for a drag near the mouth on a model of any scene (points + margin, at least the model's size);
* ``whole layer``: the whole drawing scaled to the model's size (what *Whole layer* sends).

Prints ST-LPIPS (VGG) and PSNR of each reconstruction.

    python benchmarks/crop_framing.py --faces 4 --size 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="drawing size in px (> the model's 128)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import stylegan2
    from inversion import project
    from inversion.encoder import load_encoder
    from training import faces

    torch.set_num_threads(args.threads)
    data = REPO / "backend" / "data"
    G = stylegan2.load_generator(data / "faces-128.pt")
    encoder = load_encoder(data / "faces-128.encoder.pt")
    side = int(G.img_width)
    mouth = [faces.KEYPOINT_NAMES.index("mouth_left"), faces.KEYPOINT_NAMES.index("mouth_right")]
    scores: dict[str, list[float]] = {"points crop": [], "whole layer": []}
    for i, p in enumerate(faces.sample_params(np.random.default_rng(args.seed), args.faces)):
        drawing, keypoints = faces.render(p, size=args.size)
        cx, cy = keypoints[mouth].mean(axis=0)
        x0 = int(np.clip(round(cx - side / 2), 0, args.size - side))
        y0 = int(np.clip(round(cy - side / 2), 0, args.size - side))
        pictures = {"points crop": np.ascontiguousarray(drawing[y0:y0 + side, x0:x0 + side]),
                    "whole layer": np.asarray(Image.fromarray(drawing).resize((side, side), Image.LANCZOS))}
        for name, picture in pictures.items():
            result = project(G, picture, preset="fast", encoder=encoder)
            scores[name].append(result.stlpips)
            print(f"face {i} {name:11s}: ST-LPIPS {result.stlpips:.3f}, PSNR {result.psnr:.1f} dB", flush=True)
    for name, values in scores.items():
        print(f"{name}: ST-LPIPS mean {statistics.fmean(values):.3f} (min {min(values):.3f}, max {max(values):.3f}) "
              f"over {len(values)} drawings of {args.size} px")


if __name__ == "__main__":
    main()
