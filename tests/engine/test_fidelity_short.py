"""A short run of benchmarks/fidelity.py (issue 12) on the default model: drags land nearer the targets."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

from backend.engine import DragParams

from .conftest import REPO_ROOT


def load_fidelity_module():
    spec = importlib.util.spec_from_file_location("fidelity", REPO_ROOT / "benchmarks" / "fidelity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fidelity"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
    from training.detector import DEFAULT_PATH, load_detector

    fidelity = load_fidelity_module()
    G = stylegan2.load_generator(require(fidelity.DEFAULT_MODEL))
    detector = load_detector(require(DEFAULT_PATH))
    error = generated_keypoint_error(G, detector)
    if error > 3.0:
        # Not a pass: reported as xfail, with the measured reason, until the model is trained.
        pytest.xfail(f"the default model is not trained enough for the fidelity protocol: the detector's "
                     f"keypoint error on its samples is {error:.1f} px (needs < 3 px; backend/data/faces-128.md)")
    # 200 steps, the benchmark's own budget: with the trained weights a 7-11 px drag needs 100-200 steps
    # at the default lr (60 steps moved these two handles 13 % and 30 % of the way)
    results = fidelity.run_fidelity(G, detector, pairs=2, point_counts=[1], rows=["fast"], max_steps=200,
                                    base=DragParams())
    edits = results[("fast", 1)]
    before = np.mean([e.distance_before for e in edits])
    after = np.mean([e.distance_after for e in edits])
    assert before > 2.0  # the pairs really differ
    assert after < 0.7 * before, (before, after)
    table = fidelity.format_table(results, [1], ["fast"])
    assert "no edit" in table and "fast" in table
