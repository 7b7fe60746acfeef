"""Issue 19: MTCNN landmarks (backend/landmarks.py) against hand annotations on scikit-image's
astronaut (tests/alignment/data/astronaut-landmarks.json), upright and rotated about the image centre
(the annotations rotate with it), and against the exact keypoints of procedural faces.

    python3 benchmarks/alignment_landmarks.py --out docs/alignment-landmarks.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend import align as A  # noqa: E402
from backend import landmarks as L  # noqa: E402
from tests.alignment import canvas  # noqa: E402
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "alignment-landmarks.json")
    args = ap.parse_args(argv)
    from skimage import data

    ann = json.loads((REPO / "tests/alignment/data/astronaut-landmarks.json").read_text(encoding="utf-8"))
    truth = np.array([ann["points"][k] for k in ORDER])
    img = data.astronaut()
    out: dict = {"astronaut (vs hand annotation, quad error at ffhq-512 scale)": {},
                 "procedural faces 256 px (vs exact keypoints, quad error at 128)": {}}
    for angle in (0, 15, 30, 45, -30):
        m = canvas.similarity(angle, 1.0, (255.5, 255.5), (255.5, 255.5))
        r = measure(canvas.place(img, m, (512, 512), fill=(0, 0, 0)), canvas.apply(m, truth), 512)
        out["astronaut (vs hand annotation, quad error at ffhq-512 scale)"][f"rotated {angle} deg"] = r
        print("astronaut", angle, r, flush=True)
    params = faces.sample_params(np.random.default_rng(77), 8)
    for i, p in enumerate(params):
        im, kp = faces.render(p, 256)
        r = measure(im, A.keypoints_to_landmarks(kp).array(), 128)
        out["procedural faces 256 px (vs exact keypoints, quad error at 128)"][f"seed 77 #{i}"] = r
        print("procedural", i, r, flush=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
