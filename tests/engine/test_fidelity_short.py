"""A short run of the fidelity protocol (testkit/fidelity.py, run by benchmarks/fidelity.py) on the
default model: drags land nearer the targets."""

from __future__ import annotations

import os

import numpy as np
import pytest

from backend.engine import DragParams
from testkit import fidelity


def require(path):
    if not path.is_file():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{path} is missing", pytrace=False)
        pytest.skip(f"{path} not there yet (default model / detector)")
    return path


def generated_keypoint_error(G, detector, n: int = 8) -> float:
    """Mean px error of the detector on G's samples against the exact keypoints of their z.

    The fidelity protocol measures drags with the detector, so it means something only when the
    detector finds the features G draws; an under-trained G draws none (see the model card).
    """
    import torch

    from training import faces
    from training.train_generator import params_for_z

    z = np.random.default_rng(99).standard_normal((n, G.z_dim)).astype(np.float32)
    with torch.no_grad():
        img = G.synthesis(G.mapping(torch.from_numpy(z)), noise_mode="const")
    _, true_kps = faces.render_batch(params_for_z(z), size=G.img_resolution)
    return float(np.linalg.norm(detector.predict(img) - true_kps, axis=-1).mean())


def test_two_pairs_one_point_move_toward_their_targets():
    import stylegan2
    from alignment.detector import DEFAULT_PATH, load_detector

    G = stylegan2.load_generator(require(fidelity.DEFAULT_MODEL))
    detector = load_detector(require(DEFAULT_PATH))
    error = generated_keypoint_error(G, detector)
    # The protocol measures drags with the detector: meaningful only when G draws the features where
    # the renderer puts them (1.68 px on these 8 samples with the 73771 weights). No xfail: a default
    # model that draws no recognisable features must not ship.
    assert error < 3.0, (f"the default model is not trained enough for the fidelity protocol: the detector's "
                         f"keypoint error on its samples is {error:.1f} px (needs < 3 px; backend/data/faces-128.md)")
    # What the server does on this model: its registry settings (larger first steps, 16x decaying with a
    # half-life of 20 steps; stop within 1 px), at most the benchmark's 200 steps. With the official
    # constant lr the chin pair moved only 40 % of the way in 200 steps (the 69335 weights).
    base = fidelity.base_params("model", fidelity.DEFAULT_MODEL, DragParams.lr, DragParams.r1, DragParams.r2)[0]
    results = fidelity.run_fidelity(G, detector, pairs=2, point_counts=[1], rows=["fast"], max_steps=200, base=base)
    edits = results[("fast", 1)]
    assert all(e.distance_before > 2.0 for e in edits)  # the pairs really differ
    # every handle ends at least half-way to its target (by the detector, on the dragged picture)
    for e in edits:
        assert e.distance_after <= 0.5 * e.distance_before, (e.pair, e.distance_before, e.distance_after)
    table = fidelity.format_table(results, [1], ["fast"])
    assert "no edit" in table and "fast" in table
