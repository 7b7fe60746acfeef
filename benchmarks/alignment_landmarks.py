"""How good are the alignment's landmarks? MTCNN landmarks (alignment/landmarks.py) against hand
annotations on scikit-image's astronaut (tests/alignment/data/astronaut-landmarks.json), upright and
rotated about the image centre (the annotations rotate with it), and against the exact keypoints of
procedural faces: upright at 256 px, and rolled (+-45 deg), scaled (1/3 to 1) and shifted in a 384 px
canvas, where MTCNN's landmarks are also refined in faces-128's frame by training/detector.py's
keypoint detector (``alignment.landmarks.refine_landmarks``, the 16 keypoints mapped to the 5 landmarks by
training/fit_landmarks.py's linear map), then by the second stage (training/corner_refiner.py's patch
network in a 256 px frame, ``alignment.landmarks.procedural_corner_refiner``: "corners"); "floor" is the
first-stage predictor run on the exactly aligned frame ("floor_corners": then the second stage).

    python3 benchmarks/alignment_landmarks.py --out docs/alignment-landmarks.json
    python3 benchmarks/alignment_landmarks.py --tilted-only --direct-landmarks --out OUT.json   # before session 11
    python3 benchmarks/alignment_landmarks.py --tilted-only --params-seed 78 --placement-seed 6 --tilted 48 \
        --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment import align as A  # noqa: E402
from alignment import landmarks as L  # noqa: E402
from testkit import canvas  # noqa: E402
from training import faces  # noqa: E402

ORDER = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]


def measure(image: np.ndarray, truth: np.ndarray, model_side: int) -> dict:
    found = L.detect_faces(image)
    if not found:
        return {"faces": 0}
    f = A.choose_face(found, truth[:1])
    assert f is not None
    err = np.hypot(*(f.array() - truth).T)
    qd, qt = A.ffhq_quad(f), A.ffhq_quad(A.FaceLandmarks.from_array(truth))
    side = float(np.hypot(*(qt[3] - qt[0])))
    qerr = float(np.hypot(*(qd - qt).T).max())
    return {"faces": len(found), "landmark_error_px": [round(float(e), 2) for e in err],
            "eye_distance_px": round(float(np.hypot(*(truth[1] - truth[0]))), 2),
            "quad_side_px": round(side, 1), "quad_corner_error_px": round(qerr, 2),
            f"quad_corner_error_at_{model_side}": round(qerr * model_side / side, 2)}


def refinement_cases(n: int, seed: int = 5, params_seed: int = 77, direct: bool = False) -> tuple[list[dict], dict]:
    """MTCNN, MTCNN + 1 or 2 refinements, and the detector's floor on ``n`` tilted procedural faces
    (faces of ``params_seed``, placements of ``seed``; ``direct``: the keypoints' direct read-out
    instead of training/fit_landmarks.py's linear map)."""
    size, template = 128, A.faces_template_quad(128)
    predict = L.procedural_face_predictor(regression=None if direct else "default")
    corners = L.procedural_corner_refiner()
    rng = np.random.default_rng(seed)
    rows = []
    for i, p in enumerate(faces.sample_params(np.random.default_rng(params_seed), n)):
        angle, scale, centre = rng.uniform(-45, 45), rng.uniform(1 / 3, 1.0), rng.uniform(130, 254, 2)
        im, kp = faces.render(p, 256)
        m = canvas.similarity(angle, scale, tuple(centre), (127.5, 127.5))
        big = canvas.place(im, m, (384, 384))
        truth = A.keypoints_to_landmarks(canvas.apply(m, kp))
        exact = A.quad_transform(A.ffhq_quad(truth), size, size, template)

        def err(face: A.FaceLandmarks, exact: A.Alignment = exact) -> float:
            return round(float(np.hypot(*(exact.to_model(A.ffhq_quad(face)) - template).T).max()), 2)

        floor = L.refine_landmarks(big, truth, predict, template, size, 1)
        row: dict = {"case": i, "roll_deg": round(float(angle), 1), "scale": round(float(scale), 2),
                     "floor": err(floor), "floor_corners": err(corners(big, floor))}
        found = L.detect_faces(big)
        face = A.choose_face(found, truth.array()[:1]) if found else None
        if face is not None:
            refined_2 = L.refine_landmarks(big, face, predict, template, size, 2)
            row.update(mtcnn=err(face), refined_1=err(L.refine_landmarks(big, face, predict, template, size, 1)),
                       refined_2=err(refined_2), corners=err(corners(big, refined_2)))
        rows.append(row)
        print("tilted", row, flush=True)
    summary: dict = {"cases": n, "faces_found": sum("mtcnn" in r for r in rows)}
    for key in ("mtcnn", "refined_1", "refined_2", "corners", "floor", "floor_corners"):
        v = np.array([r[key] for r in rows if key in r])
        summary[key] = {"mean": round(float(v.mean()), 2), "median": round(float(np.median(v)), 2),
                        "max": round(float(v.max()), 2), "within_1px": int((v <= 1.0).sum()), "n": int(v.size)}
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "alignment-landmarks.json")
    ap.add_argument("--tilted", type=int, default=24, help="rolled/scaled procedural cases")
    ap.add_argument("--params-seed", type=int, default=77, help="the tilted cases' faces")
    ap.add_argument("--placement-seed", type=int, default=5, help="the tilted cases' roll, scale and shift")
    ap.add_argument("--direct-landmarks", action="store_true",
                    help="refine with the detector's keypoints read out directly (before session 11)")
    ap.add_argument("--tilted-only", action="store_true", help="skip the astronaut and the upright faces")
    args = ap.parse_args(argv)
    from skimage import data

    ann = json.loads((REPO / "tests/alignment/data/astronaut-landmarks.json").read_text(encoding="utf-8"))
    truth = np.array([ann["points"][k] for k in ORDER])
    img = data.astronaut()
    out: dict = {"astronaut (vs hand annotation, quad error at ffhq-512 scale)": {},
                 "procedural faces 256 px (vs exact keypoints, quad error at 128)": {}}
    for angle in () if args.tilted_only else (0, 15, 30, 45, -30):
        m = canvas.similarity(angle, 1.0, (255.5, 255.5), (255.5, 255.5))
        r = measure(canvas.place(img, m, (512, 512), fill=(0, 0, 0)), canvas.apply(m, truth), 512)
        out["astronaut (vs hand annotation, quad error at ffhq-512 scale)"][f"rotated {angle} deg"] = r
        print("astronaut", angle, r, flush=True)
    params = faces.sample_params(np.random.default_rng(77), 0 if args.tilted_only else 8)
    for i, p in enumerate(params):
        im, kp = faces.render(p, 256)
        r = measure(im, A.keypoints_to_landmarks(kp).array(), 128)
        out["procedural faces 256 px (vs exact keypoints, quad error at 128)"][f"seed 77 #{i}"] = r
        print("procedural", i, r, flush=True)
    tilted, summary = refinement_cases(args.tilted, args.placement_seed, args.params_seed, args.direct_landmarks)
    out["procedural faces tilted in a 384 px canvas (vs exact keypoints, quad error in faces-128's frame)"] = {
        "summary": summary, "cases": tilted}
    print("tilted summary", summary, flush=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
