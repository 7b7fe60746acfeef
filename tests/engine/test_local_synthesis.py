"""Local synthesis (fast mode without a mask): only the feature boxes a step reads are synthesised.

It must give the same drag as synthesising the whole map -- tracked points identical at every
step, losses and the final latent equal up to float rounding -- and must really skip most of the map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine import DragParams, DragSession
from backend.engine.regions import feature_regions, step_reach

from .conftest import make_tiny_generator, tiny_latent


def drag(G, ws, handles, targets, local, mask=None, **params):
    session = DragSession(G, ws, handles, targets, mask=mask,
                          params=DragParams(preview_every=0, local_synthesis=local, **params))
    regions_seen = []
    steps = []
    while not session.finished:
        regions_seen.append(session._local_regions())
        steps.append(session.step())
    return session, steps, regions_seen


def assert_same_drag(whole, local):
    (s_whole, steps_whole, _), (s_local, steps_local, _) = whole, local
    assert [st.points for st in steps_local] == [st.points for st in steps_whole]
    assert [st.done for st in steps_local] == [st.done for st in steps_whole]
    np.testing.assert_allclose([st.loss for st in steps_local], [st.loss for st in steps_whole], rtol=1e-4)
    np.testing.assert_allclose(s_local.ws.numpy(), s_whole.ws.numpy(), rtol=0, atol=1e-4)


def test_one_point_on_the_official_128_generator(fixture_G):
    ws = fixture_G.mapping(torch.randn([1, fixture_G.z_dim], generator=torch.Generator().manual_seed(5)), None)
    args = (fixture_G, ws, [(40.0, 50.0)], [(52.0, 44.0)])
    whole = drag(*args, local=False, max_steps=12, lr=0.01)
    local = drag(*args, local=True, max_steps=12, lr=0.01)
    assert_same_drag(whole, local)
    assert all(regions is None for regions in whole[2])
    # 128x128 feature block 5: one box of at most 18x18 pixels, 2 % of the map
    for regions in local[2]:
        assert regions is not None and len(regions) == 1
        top, bottom, left, right = regions[0]
        assert (bottom - top) * (right - left) <= 18 * 18


@pytest.mark.parametrize("feature_block", [2, 3])  # 16 px (reads upsampled 2x) and 32 px (1:1)
def test_points_far_apart_and_at_the_edges(feature_block):
    G = make_tiny_generator(seed=2)
    ws = tiny_latent(G, seed=3)
    handles = [(0.0, 1.0), (30.0, 29.0), (31.0, 2.0)]   # corners: boxes clamp onto the map's edges
    targets = [(4.0, 5.0), (26.0, 25.0), (27.0, 6.0)]
    params = dict(max_steps=8, lr=0.02, r1=12.0, r2=24.0, feature_block=feature_block)
    whole = drag(G, ws, handles, targets, local=False, **params)
    local = drag(G, ws, handles, targets, local=True, **params)
    assert_same_drag(whole, local)
    assert any(regions is not None and len(regions) >= 2 for regions in local[2])


def test_a_mask_needs_the_whole_map():
    G = make_tiny_generator()
    mask = np.zeros((32, 32), np.float32)
    mask[4:20, 4:20] = 1
    session, _, regions_seen = drag(G, tiny_latent(G), [(10.0, 10.0)], [(14.0, 10.0)], local=True, mask=mask,
                                    max_steps=2, r1=12.0, r2=24.0, feature_block=3)
    assert regions_seen == [None, None]


def test_boxes_hold_every_read_and_merge_when_they_overlap():
    reach = step_reach(r1_px=2, r2_px=6)
    assert reach == 11
    # 512 image, 128 map: rows 100 +- 11 read f at (r + 0.5) / 4 - 0.5 -> rows 22..27 (+1 corner, +1 safety)
    (box,) = feature_regions([(100, 300)], reach, (512, 512), (128, 128))
    assert box[0] <= 21 and box[1] >= 28 and box[2] <= 71 and box[3] >= 78
    assert (box[1] - box[0]) <= 10 and (box[3] - box[2]) <= 10
    # two handles 5 px apart share one box; a third far away gets its own
    boxes = feature_regions([(100, 300), (105, 300), (400, 40)], reach, (512, 512), (128, 128))
    assert len(boxes) == 2
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3])
    # boxes that cover more than half the map: whole-map synthesis instead
    assert feature_regions([(16, 16)], 30, (32, 32), (32, 32)) is None
