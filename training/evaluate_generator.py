"""Model-card figures for a generator trained on the procedural faces.

* **FD (detector)**: a FID-like Fréchet distance between generated and procedural samples, in the
  pooled backbone features of the keypoint detector (``training/detector.py``), not Inception's —
  so the figure is only comparable with itself.  The floor (two independent procedural sets of
  the same size) is printed beside it.
* **Keypoint error**: for a generated image of z the renderer's exact keypoints are known (the
  parameters of z); the detector's mean error on generated images against those keypoints, next
  to its error on the procedural renders of the same z.  Generated error ≫ render error means the
  generator misplaces features; the error on generated images is also split by feature (eyes, brows,
  nose, mouth, chin). ``--per-keypoint`` adds a table per keypoint with the mean signed offset
  (dx, dy) of the detections on generated images: a systematic offset (eye and mouth corners
  pulled inwards, a nose read low) is a feature the generator draws shrunken or faint, not noise.
* **Reconstruction**: L1 and PSNR of G(z) against the render of z.

    python -m training.evaluate_generator backend/data/faces-128.pt --n 512
    python -m training.evaluate_generator backend/data/faces-128.pt --n 256 \
        --samples docs/images/faces-128-samples.png       # + the model card's sample grid
    python -m training.evaluate_generator runs/NAME/checkpoint.pt --weights G_ema --n 128 \
        --geometry-scale 0.7                               # a training checkpoint, on a narrower domain
    python -m training.evaluate_generator backend/data/faces-128.pt --n 256 --per-keypoint
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

import stylegan2
from alignment.detector import KeypointDetector, load_detector
from training import faces
from training.train_generator import params_for_z

# The features a drag moves, as groups of faces.KEYPOINT_NAMES (every keypoint in exactly one): the model
# card reports where the generator's error sits, e.g. the nose it draws without shading.
KEYPOINT_GROUPS: dict[str, list[str]] = {
    "eyes": ["left_eye_outer", "left_eye_inner", "right_eye_inner", "right_eye_outer", "left_pupil", "right_pupil"],
    "brows": ["left_brow_outer", "left_brow_inner", "right_brow_inner", "right_brow_outer"],
    "nose": ["nose_tip"],
    "mouth": ["mouth_left", "mouth_right", "upper_lip_top", "lower_lip_bottom"],
    "chin": ["chin"],
}


def keypoint_error_by_feature(errors: np.ndarray) -> dict[str, float]:
    """Mean error per feature group: ``errors`` [n, NUM_KEYPOINTS] in pixels -> ``kp_error_<group>_px``."""
    index = {name: i for i, name in enumerate(faces.KEYPOINT_NAMES)}
    return {f"kp_error_{group}_px": float(errors[:, [index[name] for name in names]].mean())
            for group, names in KEYPOINT_GROUPS.items()}


def keypoint_offsets(predicted: np.ndarray, true: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """Per keypoint name: (mean error, mean dx, mean dy) in pixels of ``predicted`` [n, K, 2] against
    ``true`` [n, K, 2] ((x, y) pixels).  A mean offset near the mean error is a bias of the
    generator's drawing (the same error on every sample), not scatter."""
    delta = np.asarray(predicted, np.float64) - np.asarray(true, np.float64)
    error = np.linalg.norm(delta, axis=-1).mean(0)
    offset = delta.mean(0)
    return {name: (float(error[i]), float(offset[i, 0]), float(offset[i, 1]))
            for i, name in enumerate(faces.KEYPOINT_NAMES)}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N, D] and b [M, D]."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # sqrt of cov_a @ cov_b via the symmetric form sqrt(A^1/2 B A^1/2) (real, stable).
    vals, vecs = np.linalg.eigh(cov_a)
    sqrt_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    inner = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def generate(G: stylegan2.Generator, z: np.ndarray, batch: int = 32) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(z), batch):
            img = G.synthesis(G.mapping(torch.from_numpy(z[i:i + batch])), noise_mode="const")
            out.append((img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def load_for_evaluation(path: Path, weights: str = "G") -> stylegan2.Generator:
    """A generator file (our export), or ``weights`` ("G" or "G_ema") of a train_generator checkpoint
    or snapshot (a dict with ``config`` and those state dicts), in eval mode."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    if not (isinstance(state, dict) and "config" in state and "G" in state):
        return stylegan2.load_generator(path)
    return generator_from_state(state, weights, str(path))


def generator_from_state(state: dict, weights: str = "G", name: str = "the checkpoint") -> stylegan2.Generator:
    """``weights`` ("G" or "G_ema") of a loaded train_generator checkpoint or snapshot, in eval mode."""
    if state.get(weights) is None:
        raise ValueError(f"{name} holds no {weights} weights (a compact checkpoint has no G_ema)")
    G = stylegan2.Generator(**state["config"])
    G.load_state_dict(state[weights])
    return G.eval().requires_grad_(False)


def evaluate(model: Path, n: int, seed: int, weights: str = "G", geometry_scale: float = 1.0,
             per_keypoint: bool = False) -> dict[str, float]:
    """Model-card figures of ``model`` (see :func:`load_for_evaluation`) on ``n`` samples of z seed ``seed``."""
    return evaluate_generator(load_for_evaluation(model, weights), n, seed, geometry_scale=geometry_scale,
                              per_keypoint=per_keypoint)


def evaluate_generator(G: stylegan2.Generator, n: int, seed: int, det: KeypointDetector | None = None,
                       geometry_scale: float = 1.0, per_keypoint: bool = False) -> dict[str, float]:
    """Figures for an in-memory generator (learning curves evaluate snapshots this way).
    ``geometry_scale``: judge against a curriculum's narrower domain (see ``params_for_z``);
    ``per_keypoint``: also ``kp_<name>_px`` / ``_dx_px`` / ``_dy_px`` (see :func:`keypoint_offsets`)."""
    det = det if det is not None else load_detector()
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, G.z_dim)).astype(np.float32)
    gen = generate(G, z)
    renders, true_kps = faces.render_batch(params_for_z(z, geometry_scale), size=G.img_resolution)
    other, _ = faces.dataset(seed + 1, n, size=G.img_resolution)

    with torch.no_grad():
        f_gen = det.backbone_features(gen).numpy().astype(np.float64)
        f_ren = det.backbone_features(renders).numpy().astype(np.float64)
        f_oth = det.backbone_features(other).numpy().astype(np.float64)
    predicted = det.predict(gen)
    err_gen = np.linalg.norm(predicted - true_kps, axis=-1)
    err_ren = np.linalg.norm(det.predict(renders) - true_kps, axis=-1)
    l1 = np.abs(gen.astype(np.float64) - renders).mean() / 127.5
    mse = ((gen.astype(np.float64) - renders) ** 2).mean()
    offsets = keypoint_offsets(predicted, true_kps) if per_keypoint else {}
    return {
        "fd_detector": frechet_distance(f_gen, f_ren),
        "fd_detector_floor": frechet_distance(f_oth, f_ren),
        "kp_error_generated_mean_px": float(err_gen.mean()),
        "kp_error_generated_median_px": float(np.median(err_gen)),
        "kp_error_render_mean_px": float(err_ren.mean()),
        **keypoint_error_by_feature(err_gen),
        "l1": float(l1),
        "psnr_db": float(10 * math.log10(255.0**2 / mse)),
        **{f"kp_{name}_{part}": value for name, figures in offsets.items()
           for part, value in zip(("px", "dx_px", "dy_px"), figures)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=Path, default=None, metavar="PNG",
                    help="also write a grid of 16 samples (seed 0) above the renders of the same z")
    ap.add_argument("--weights", choices=["G", "G_ema"], default="G",
                    help="which weights of a training checkpoint (export files hold one set)")
    ap.add_argument("--geometry-scale", type=float, default=1.0,
                    help="judge against the curriculum's narrower domain (1 = the model's real domain)")
    ap.add_argument("--per-keypoint", action="store_true",
                    help="also each keypoint's mean error and mean signed offset (dx, dy) on generated images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.samples is not None:
        from training.train_generator import sample_grid

        G = load_for_evaluation(args.model, args.weights)
        z = torch.from_numpy(np.random.default_rng(0).standard_normal((16, G.z_dim)).astype(np.float32))
        sample_grid(G, z, args.samples, G.img_resolution)
        print(f"samples: {args.samples}")
    figures = evaluate(args.model, args.n, args.seed, args.weights, args.geometry_scale, args.per_keypoint)
    for key, value in figures.items():
        if not key.startswith(tuple(f"kp_{name}_" for name in faces.KEYPOINT_NAMES)):
            print(f"{key:32s} {value:.4f}")
    if args.per_keypoint:
        print(f"\n{'keypoint':18s} {'error px':>9s} {'dx px':>7s} {'dy px':>7s}")
        for name in faces.KEYPOINT_NAMES:
            print(f"{name:18s} {figures[f'kp_{name}_px']:9.2f} {figures[f'kp_{name}_dx_px']:+7.2f} "
                  f"{figures[f'kp_{name}_dy_px']:+7.2f}")


if __name__ == "__main__":
    main()
