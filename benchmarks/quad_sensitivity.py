"""How far landmark errors move the FFHQ alignment quad (the alignment's target: "within 1 px at model scale").

Exact landmarks of procedural faces (training/faces.py, 128 px, faces-128's frame) get Gaussian noise
of a given RMS distance on the eye centres and on the mouth corners; the quad built from them
(alignment/align.py ``ffhq_quad``) is compared with the exact quad in faces-128's aligned frame:
largest corner distance, mean / median and the share within 1 px. It says which landmark precision
the 1 px criterion needs (docs/alignment.md).

    python3 benchmarks/quad_sensitivity.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment import align as A  # noqa: E402
from training import faces  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=200)
    ap.add_argument("--draws", type=int, default=5, help="noise draws per face")
    ap.add_argument("--eye", type=float, nargs="+", default=[0.0, 0.1, 0.2], help="eye-centre RMS error, px")
    ap.add_argument("--mouth", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5, 0.9],
                    help="mouth-corner RMS error, px")
    args = ap.parse_args(argv)
    template = A.faces_template_quad(128)
    landmarks = [A.keypoints_to_landmarks(faces.render(p, 128)[1]).array()
                 for p in faces.sample_params(np.random.default_rng(1), args.faces)]
    rng = np.random.default_rng(0)
    print("eye px  mouth px  quad error: mean  median  within 1 px")
    for eye in args.eye:
        for mouth in args.mouth:
            errors = []
            for lm in landmarks:
                frame = A.quad_transform(A.ffhq_quad(lm), 128, 128, template)
                for _ in range(args.draws):
                    noisy = lm.copy()
                    noisy[:2] += rng.normal(0, eye / np.sqrt(2), (2, 2))     # RMS distance = eye
                    noisy[3:] += rng.normal(0, mouth / np.sqrt(2), (2, 2))
                    errors.append(np.hypot(*(frame.to_model(A.ffhq_quad(noisy)) - template).T).max())
            e = np.array(errors)
            print(f"{eye:6.2f}  {mouth:8.2f}  {e.mean():16.2f}  {np.median(e):6.2f}  {(e <= 1).mean():10.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
