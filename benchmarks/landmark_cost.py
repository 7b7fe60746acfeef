"""What the server's landmarks cost for a procedural face (alignment/aligned_edit.py
refined_procedural_face): MTCNN on the canvas, the first stage (two keypoint-detector refinements in
faces-128's frame), the second stage (the patch refiner in a 256 px frame). One face of seed 77 rolled
30 deg at 0.8x in a 384 px canvas; min / median of ``--runs`` runs after a warm-up, seconds.

    python3 benchmarks/landmark_cost.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment import align as A  # noqa: E402
from alignment import landmarks as L  # noqa: E402
from alignment.aligned_edit import REFINE_ITERATIONS  # noqa: E402
from testkit import canvas  # noqa: E402
from training import faces  # noqa: E402


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    im, kp = faces.render(faces.sample_params(np.random.default_rng(77), 1)[0], 256)
    m = canvas.similarity(30.0, 0.8, (200.0, 190.0), (127.5, 127.5))
    big = canvas.place(im, m, (384, 384))
    truth = A.keypoints_to_landmarks(canvas.apply(m, kp))
    face = A.choose_face(L.detect_faces(big), truth.array()[:1])
    if face is None:
        raise SystemExit("MTCNN found no face")
    predict, template = L.procedural_face_predictor_at(128), A.faces_template_quad(128)
    corners = L.procedural_corner_refiner()
    first = L.refine_landmarks(big, face, predict, template, 128, REFINE_ITERATIONS)   # warm-up too
    corners(big, first)
    for name, fn in (("MTCNN on the 384 px canvas", lambda: L.detect_faces(big)),
                     (f"first stage ({REFINE_ITERATIONS} refinements)",
                      lambda: L.refine_landmarks(big, face, predict, template, 128, REFINE_ITERATIONS)),
                     ("second stage (patch refiner)", lambda: corners(big, first))):
        lo, med = timed(fn, args.runs)
        print(f"{name}: min {lo:.3f} s, median {med:.3f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
