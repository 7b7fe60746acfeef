"""Fast mode's one numerical deviation: the mask term at feature resolution.

The official mask term is ``lambda * mean(|F - F0| * m)`` over the *upsampled* features ``F`` (C x H x W).
Fast mode computes ``lambda * mean(|f - f0| * area(m))`` on the block output ``f`` (C x h x w) with the
mask area-averaged to ``h x w``: no image-size tensor is ever built (at 512² with block 5 that is 4M
instead of 67M elements per map, for F, F0 and their gradients). When ``h = H`` (the 128² fixtures)
the two are identical. Otherwise the term differs by how |.| and the bilinear upsample commute
inside each upsampling cell.

Tolerance and why: on the official 128² fixture generator with the feature block one level lower
(64², so features are upsampled 2x) and the masked fixture's settings, the reference and fast
outcomes after 20 steps differ by less than the official code's own sensitivity to its input: the
fixture README measures final-ws differences of 4.4e-3 / 6.4e-4 and image differences of 7.1e-3 /
3.1e-4 from ``w0 += 1e-4 * randn``. We require final ws and final image within 1e-2 (about one
uint8 level), tracked handles within 1 px at the end, and the mask to hold the fixed region as well
as in reference mode (its mean change within 20 % of reference's, and clearly below an unmasked
drag's).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine import DragParams, DragSession


def fixed_region_change(G, ws0, ws, fixed):
    with torch.no_grad():
        change = (G.synthesis(ws, noise_mode="const") - G.synthesis(ws0, noise_mode="const")).abs().mean(1)[0]
    return float(change[fixed].mean())


@pytest.mark.parametrize("seed", [1])
def test_fast_mask_term_at_feature_resolution_stays_within_tolerance(fixture_G, seed):
    G = fixture_G
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float()
    with torch.no_grad():
        ws0 = G.mapping(z, None, truncation_psi=0.7)
    yy, xx = np.mgrid[:128, :128]
    editable = (((yy - 64) ** 2 + (xx - 64) ** 2) <= 1600).astype(np.float32)
    fixed = torch.from_numpy(editable == 0)
    handles, targets = [(50.0, 50.0), (76.0, 80.0)], [(62.0, 58.0), (66.0, 72.0)]
    outcome = {}
    for mode, mask in [("reference", editable), ("fast", editable), ("fast", None)]:
        params = DragParams(max_steps=20, lr=0.005, r1=10, r2=20, feature_block=4, preview_every=0, mode=mode)
        session = DragSession(G, ws0, handles, targets, mask=mask, params=params)
        steps = list(session.run())
        outcome[mode, mask is not None] = (session.ws, steps[-1].points, fixed_region_change(G, ws0, session.ws, fixed))

    reference_ws, reference_points, reference_change = outcome["reference", True]
    fast_ws, fast_points, fast_change = outcome["fast", True]
    torch.testing.assert_close(fast_ws, reference_ws, rtol=0, atol=1e-2)
    with torch.no_grad():
        images = [G.synthesis(w, noise_mode="const") for w in (reference_ws, fast_ws)]
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=1e-2)
    assert np.abs(np.array(fast_points) - np.array(reference_points)).max() <= 1
    assert abs(fast_change - reference_change) <= 0.2 * reference_change
    assert fast_change < 0.8 * outcome["fast", False][2]  # the mask does hold the fixed region
