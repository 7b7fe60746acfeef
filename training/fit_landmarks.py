"""Fit the 5 face landmarks of procedural faces as a linear function of all 16 detected keypoints
(alignment/landmark_map.py loads and applies the map).

The alignment recipe (``alignment/align.py``) needs eye centres, nose tip and mouth corners; read
directly off ``alignment/detector.py``'s keypoints, the mouth corners are the weak point (about
1 px error at 128 px, where the eye centres have 0.2 px), and the FFHQ quad scales that error by
1.8 x the eye-to-mouth distance.  The detector's errors on different keypoints are partly shared (a
mouth read too wide is read too wide at both corners and the lips) and the face's proportions tie
the keypoints together, so a least-squares map from all 32 coordinates (plus a constant) to the 10
landmark coordinates, fitted on renders where the exact landmarks are known, is a more precise
landmark predictor than the direct read-out.  It is linear: 33 x 10 numbers, stored as JSON.

The detections are shift-averaged exactly as the product's predictor does
(``alignment.landmarks.shift_averaged``), on 128 px renders (faces-128's frame, where the
refinement runs), seeds disjoint from the evaluation seed.

    python -m training.fit_landmarks                    # writes alignment/data/landmark_regression.json
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

from alignment.landmark_map import DEFAULT_PATH, FORMAT, LANDMARK_NAMES, apply_linear_map
from training import faces


def fit_linear_map(detected: np.ndarray, exact: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Ridge least squares from ``detected`` [n, K, 2] keypoints to ``exact`` [n, 5, 2] landmarks:
    the weights [2K + 1, 10] (the last row is the constant), applied by :func:`apply_linear_map`."""
    n = len(detected)
    features = np.c_[np.asarray(detected, np.float64).reshape(n, -1), np.ones(n)]
    targets = np.asarray(exact, np.float64).reshape(n, -1)
    gram = features.T @ features + ridge * np.eye(features.shape[1])
    return np.linalg.solve(gram, features.T @ targets)


def landmark_figures(landmarks: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    """Per-landmark mean error and the FFHQ quad's largest corner error (px; mean, median, share <= 1 px)."""
    from alignment.align import ffhq_quad

    per_landmark = np.linalg.norm(landmarks - exact, axis=-1).mean(0)
    quad = np.array([np.linalg.norm(ffhq_quad(a) - ffhq_quad(b), axis=1).max() for a, b in zip(landmarks, exact)])
    return {"landmark_error_px": {name: round(float(e), 3) for name, e in zip(LANDMARK_NAMES, per_landmark)},
            "quad_error_px": {"mean": round(float(quad.mean()), 3), "median": round(float(np.median(quad)), 3),
                              "within_1px": round(float((quad <= 1.0).mean()), 3), "n": int(len(quad))}}


def save(path: Path, weights: np.ndarray, meta: dict[str, Any]) -> None:
    doc = {"format": FORMAT, "keypoint_names": faces.KEYPOINT_NAMES, "landmark_names": LANDMARK_NAMES,
           "weights": [[float(v) for v in row] for row in weights], "meta": meta}
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def detections(det: Any, seed: int, n: int, log: Any = print) -> tuple[np.ndarray, np.ndarray]:
    """Shift-averaged keypoints of detector ``det`` [n, K, 2] on ``n`` renders of seed ``seed`` and their exact
    landmarks [n, 5, 2], in chunks of 100 with a progress line."""
    from alignment.align import keypoints_to_landmarks
    from alignment.landmarks import shift_averaged

    detected, exact = [], []
    params = faces.sample_params(np.random.default_rng(seed), n)   # the faces of faces.dataset(seed, n)
    t0 = time.time()
    for start in range(0, n, 100):
        images, kps = faces.render_batch(params[start:start + 100], 128)
        detected.append(shift_averaged(det.predict, images))
        exact.append(np.stack([keypoints_to_landmarks(k).array() for k in kps]))
        log(f"seed {seed}: {start + len(images)}/{n} faces ({time.time() - t0:.0f} s)")
    return np.concatenate(detected), np.concatenate(exact)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH)
    ap.add_argument("--n", type=int, default=3000, help="training renders")
    ap.add_argument("--seed", type=int, default=20000, help="training seed (the detector's held-out seed is 1)")
    ap.add_argument("--eval-n", type=int, default=500)
    ap.add_argument("--eval-seed", type=int, default=1)
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.n < 100 or args.eval_n < 1 or not math.isfinite(args.ridge) or args.ridge < 0:
        ap.error("--n must be at least 100, --eval-n positive, --ridge finite and >= 0")
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.time()
    from alignment.detector import load_detector

    det = load_detector()   # once for both sets
    train_x, train_y = detections(det, args.seed, args.n, log)
    test_x, test_y = detections(det, args.eval_seed, args.eval_n, log)
    weights = fit_linear_map(train_x, train_y, args.ridge)
    from alignment.align import keypoints_to_landmarks

    direct = np.stack([keypoints_to_landmarks(k).array() for k in test_x])
    held_out = {"direct read-out": landmark_figures(direct, test_y),
                "linear map": landmark_figures(apply_linear_map(weights, test_x), test_y)}
    meta = {"command": "python -m training.fit_landmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
            "train": {"seed": args.seed, "n": args.n}, "ridge": args.ridge, "size": 128,
            "held_out": {"seed": args.eval_seed, "n": args.eval_n, **held_out},
            "seconds": round(time.time() - t0, 1)}
    save(args.out, weights, meta)
    print(json.dumps(meta["held_out"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
