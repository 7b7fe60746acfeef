"""Evidence: does aligning a face crop (alignment/align.py) help the faces-128 inversion?

Procedural faces (training/faces.py, held-out seed 77) are rotated (up to +-45 deg), scaled down
(to a third) and shifted inside a larger canvas with Pillow. The renderer's exact keypoints are the
landmark oracle (eye centres = eye-corner midpoints, mouth corners). Each canvas is projected with
the plug-in's default preset ("fast", no PTI; ``--steps`` overrides the step count for all
conditions alike) in three framings:

* ``canvas``: the whole canvas scaled to 128x128 (an axis-aligned crop that is not face-fitted);
* ``box``: the axis-aligned square with the FFHQ quad's centre and size (face-fitted, but the roll
  is not undone);
* ``aligned``: the FFHQ quad mapped onto the quad of faces-128's average face (alignment/align.py).
* ``detected``: the same from detected landmarks instead of the oracle, found as the server finds
  them (``alignment.aligned_edit.refined_procedural_face``: MTCNN, refined twice in faces-128's frame
  by the keypoint detector, then by the patch refiner); skipped when MTCNN is not installed or finds
  no face.

Reported: ST-LPIPS (VGG) and PSNR of the reconstruction against its own 128x128 input (what the
plug-in's poor-inversion warning sees), and the PSNR of the reconstruction pasted back into the
canvas over the pixels inside the face quad (the same pixels for every framing).

Then a drag in each framing, as the server makes it on faces-128 (``backend.edit_runner`` drag parameters:
its larger first steps, at most ``--drag-steps`` steps, no mask): the mouth corners out and up and the
chin down (``DRAG_OFFSETS``, in pixels of the upright 256 px render, carried into the canvas with the
face's own rotation and scale, then into the framing). The dragged picture is pasted back into the
canvas, warped into the oracle's aligned frame (the same frame for every framing) and measured with the
keypoint detector there: ``drag_md_before`` / ``drag_md_after`` = mean distance of the three
keypoints to their targets before / after the drag, in pixels of that 128 px frame (the fidelity
benchmark's MD: the "keypoint error after a drag" the alignment must not worsen).

    python3 benchmarks/alignment_evidence.py --steps 100 --out docs/alignment-evidence.json \
        --figure docs/images/align-faces-128.png
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
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import stylegan2  # noqa: E402
from alignment import align as A  # noqa: E402
from backend import models  # noqa: E402
from draggan_util.hashing import sha256_file  # noqa: E402
from inversion import project  # noqa: E402
from inversion.settings import PRESETS  # noqa: E402
from testkit import canvas  # noqa: E402
from training import faces  # noqa: E402

RENDER = 256
CANVAS = 384
# the drag: keypoint name -> (dx, dy) in pixels of the upright RENDER px face (a smile, the chin down)
DRAG_OFFSETS = {"mouth_left": (-10.0, -10.0), "mouth_right": (10.0, -10.0), "chin": (0.0, 12.0)}
# (angle degrees, scale, centre in the canvas)
CASES = [(40.0, 0.5, (230.0, 160.0)), (-45.0, 1 / 3, (120.0, 250.0)), (25.0, 0.75, (190.0, 200.0)),
         (-20.0, 1 / 3, (270.0, 110.0))]


def detected_quad(big: np.ndarray, handle: np.ndarray, size: int) -> np.ndarray | None:
    """The FFHQ quad from the server's landmarks (MTCNN + refinements), or None (no MTCNN weights, or
    no face there)."""
    from alignment import landmarks as L
    from alignment.aligned_edit import refined_procedural_face

    try:
        found = L.detect_faces(big)
    except L.LandmarksUnavailable:
        return None
    face = A.choose_face(found, handle[None])
    if face is None:
        return None
    refined, _template = refined_procedural_face(big, face, size, size)
    return A.ffhq_quad(refined)


def framings(big: np.ndarray, quad: np.ndarray, size: int, detected: np.ndarray | None = None
             ) -> dict[str, A.Alignment]:
    tmpl = A.faces_template_quad(size)
    c, side = quad.mean(0), float(np.hypot(*(quad[3] - quad[0])))
    box = np.array([c + [-side / 2, -side / 2], c + [-side / 2, side / 2], c + [side / 2, side / 2],
                    c + [side / 2, -side / 2]])
    whole = np.array([[-0.5, -0.5], [-0.5, CANVAS - 0.5], [CANVAS - 0.5, CANVAS - 0.5], [CANVAS - 0.5, -0.5]])
    out = {"canvas": A.quad_transform(whole, size, size), "box": A.quad_transform(box, size, size, tmpl),
           "aligned": A.quad_transform(quad, size, size, tmpl)}
    if detected is not None:
        out["detected"] = A.quad_transform(detected, size, size, tmpl)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=len(CASES))
    ap.add_argument("--steps", type=int, default=0, help="projection steps (0: the fast preset's)")
    ap.add_argument("--drag-steps", type=int, default=200, help="most drag steps (0: no drag)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "alignment-evidence.json")
    ap.add_argument("--figure", type=Path, default=REPO / "docs" / "images" / "align-faces-128.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    G = stylegan2.load_generator(models.EMBEDDED_MODEL_FILE, device="cpu")
    size = int(G.img_width)
    settings = PRESETS["fast"]
    if args.steps:
        settings = dataclasses.replace(settings, steps=args.steps)
    params = faces.sample_params(np.random.default_rng(77), len(CASES))
    from alignment.detector import load_detector

    detector = load_detector()
    names = list(faces.KEYPOINT_NAMES)
    dragged = [names.index(n) for n in DRAG_OFFSETS]
    rows, tiles = [], []
    for i, (angle, scale, centre) in enumerate(CASES[: args.cases]):
        img, kp = faces.render(params[i], RENDER)
        m = canvas.similarity(angle, scale, centre, ((RENDER - 1) / 2, (RENDER - 1) / 2))
        fill = tuple(int(v) for v in np.round(img[:4, :4].reshape(-1, 3).mean(0)))
        big = canvas.place(img, m, (CANVAS, CANVAS), fill=fill)  # type: ignore[arg-type]
        truth = A.keypoints_to_landmarks(canvas.apply(m, kp))
        quad = A.ffhq_quad(truth)
        detected = detected_quad(big, truth.array()[0], size)
        handles_big = canvas.apply(m, kp[dragged])
        targets_big = canvas.apply(m, kp[dragged] + np.array(list(DRAG_OFFSETS.values())))
        oracle = A.quad_transform(quad, size, size, A.faces_template_quad(size))
        face_px = A.quad_transform(quad, size, size).produced_area(CANVAS, CANVAS)
        row: dict = {"case": i, "angle": angle, "scale": round(scale, 3), "centre": list(centre)}
        if detected is not None:
            exact = A.quad_transform(quad, size, size, A.faces_template_quad(size))
            row["detected_quad_error_px"] = round(float(np.hypot(
                *(exact.to_model(detected) - A.faces_template_quad(size)).T).max()), 2)
        tile = [big]
        for name, al in framings(big, quad, size, detected).items():
            frame, valid = al.warp_image(big)
            t0 = time.process_time()
            res = project(G, frame, settings=settings, pti=False)
            back, mask = al.unwarp_image(res.reconstruction, CANVAS, CANVAS)
            sel = face_px & mask
            row[name] = {"stlpips": round(float(res.stlpips), 4), "psnr": round(float(res.psnr), 2),
                         "face_psnr_canvas": round(A.psnr_masked(back, big, sel), 2),
                         "face_coverage": round(float(sel.sum() / face_px.sum()), 3),
                         "cpu_s": round(time.process_time() - t0, 1)}
            if args.drag_steps:
                row[name].update(drag_in_frame(G, res, al, big, handles_big, targets_big, oracle, detector,
                                               dragged, args.drag_steps))
            drag = (f", drag MD {row[name]['drag_md_before']:.2f} -> {row[name]['drag_md_after']:.2f} px in "
                    f"{row[name]['drag_steps']} steps" if args.drag_steps else "")
            print(f"case {i} ({angle:+.0f} deg, x{scale:.2f}) {name:>8}: ST-LPIPS {res.stlpips:.3f} "
                  f"PSNR {res.psnr:5.2f} dB, face PSNR in canvas {row[name]['face_psnr_canvas']:5.2f} dB{drag}",
                  flush=True)
            tile += [frame, res.reconstruction]
            if name == "aligned":
                pasted = big.copy()
                pasted[mask] = back[mask]
                tile.append(pasted)
            if name == "detected":   # the figure keeps the oracle's columns; the table has both
                tile = tile[:-2]
        rows.append(row)
        tiles.append(tile)
        keys = ("stlpips", "psnr", "face_psnr_canvas")
        if args.drag_steps:
            keys += ("drag_md_before", "drag_md_after")
        summary = {name: {k: round(float(np.mean([r[name][k] for r in rows])), 3) for k in keys}
                   for name in ("canvas", "box", "aligned", "detected") if all(name in r for r in rows)}
        args.out.write_text(json.dumps({"model": "faces-128", "model_file_sha256_prefix": sha256_file(
            models.EMBEDDED_MODEL_FILE)[:16], "steps": settings.steps, "preset": "fast", "pti": False,
            "threads": args.threads, "drag_steps": args.drag_steps, "drag_offsets": DRAG_OFFSETS,
            "cases": rows, "mean": summary}, indent=1) + "\n", encoding="utf-8")
        figure(tiles, args.figure, quads=None)
    print(json.dumps(summary, indent=1))
    return 0


def drag_in_frame(G: object, res: object, al: A.Alignment, big: np.ndarray, handles_big: np.ndarray,
                  targets_big: np.ndarray, oracle: A.Alignment, detector: object, dragged: list[int],
                  max_steps: int) -> dict[str, float]:
    """Drag the projection ``res`` (made in framing ``al``) from ``handles_big`` to ``targets_big``
    (canvas px, x then y); measure both before and after in the oracle's aligned frame."""
    from backend import edit_runner
    from backend.engine import DragSession
    from draggan_wire import protocol as P

    def measure(picture_big: np.ndarray, targets: np.ndarray) -> float:
        frame, _ = oracle.warp_image(picture_big)
        found = detector.predict(frame[None])[0][dragged]  # type: ignore[attr-defined]
        return float(np.linalg.norm(found - oracle.to_model(targets), axis=1).mean())

    def pasted(picture: np.ndarray) -> np.ndarray:
        back, mask = al.unwarp_image(picture, CANVAS, CANVAS)
        out = big.copy()
        out[mask] = back[mask]
        return out

    size = int(G.img_width)  # type: ignore[attr-defined]
    clip = np.clip  # a handle of a tiny face near the frame's edge stays inside the image
    handles = [tuple(clip(p, 0, size - 1)) for p in al.to_model(handles_big)]
    targets = [tuple(clip(p, 0, size - 1)) for p in al.to_model(targets_big)]
    params = edit_runner._drag_params(P.EditParams(max_steps=max_steps, preview_every=0), res.generator,  # type: ignore[attr-defined]
                               models.DEFAULT_MODEL)
    session = DragSession(res.generator, res.ws, handle_points=handles, target_points=targets,  # type: ignore[attr-defined]
                          params=params)
    steps = len(list(session.run()))
    return {"drag_md_before": round(measure(pasted(res.reconstruction), targets_big), 2),  # type: ignore[attr-defined]
            "drag_md_after": round(measure(pasted(session.image()), targets_big), 2), "drag_steps": steps}


def figure(tiles: list[list[np.ndarray]], path: Path, quads: object = None) -> None:
    """One row per case: canvas | canvas input, recon | box input, recon | aligned input, recon |
    aligned recon pasted back into the canvas. Each cell 192x192."""
    cell = 192
    heads = ["tilted face (canvas)", "unaligned: whole canvas", "its inversion", "unaligned: face box",
             "its inversion", "aligned (FFHQ quad)", "its inversion", "pasted back"]
    sheet = Image.new("RGB", (cell * len(heads), 20 + cell * len(tiles)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for k, h in enumerate(heads):
        d.text((k * cell + 4, 4), h, fill=(0, 0, 0))
    for r, tile in enumerate(tiles):
        for k, im in enumerate(tile):
            sheet.paste(Image.fromarray(im).resize((cell, cell), Image.Resampling.LANCZOS), (k * cell, 20 + r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())
