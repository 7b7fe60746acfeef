"""DragSession behaviour on a tiny random generator: API, validation, cancel, continuation, determinism."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from backend.engine import DragParams, DragSession, DragStep, EditCancelled
from backend.engine.synthesis import block_features

from .conftest import tiny_latent

# 32 px: r1 = 12 -> round(0.75) = 1 px, r2 = 40 -> round(2.5) = 2 px (half to even)
TINY = dict(r1=12.0, r2=40.0, feature_block=3, preview_every=0)
HANDLES = [(10.0, 12.0), (20.0, 22.0)]
TARGETS = [(14.0, 12.0), (16.0, 26.0)]


def session(G, mode="fast", steps=5, **overrides):
    params = DragParams(max_steps=steps, mode=mode, **{**TINY, **overrides})
    return DragSession(G, tiny_latent(G), HANDLES, TARGETS, params=params)


def test_steps_report_points_losses_and_finish_at_max_steps(tiny_G):
    s = session(tiny_G, steps=4)
    steps = list(s.run())
    assert [step.index for step in steps] == [0, 1, 2, 3] and all(step.total == 4 for step in steps)
    assert all(isinstance(step, DragStep) and not step.done for step in steps)
    assert steps[0].points == HANDLES  # step 0 tracks on unchanged features: the handles themselves
    assert all(step.targets == TARGETS and step.loss > 0 and step.loss_mask == 0 for step in steps)
    assert s.points == steps[-1].points and s.finished
    assert list(s.run()) == []
    with pytest.raises(RuntimeError, match="finished"):
        s.step()
    image = s.image()
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_cpu_runs_are_bit_reproducible(tiny_G, mode):
    mask = np.zeros((32, 32), np.float32)
    mask[4:28, 4:28] = 1
    runs = []
    for _ in range(2):
        s = DragSession(tiny_G, tiny_latent(tiny_G), HANDLES, TARGETS, mask=mask,
                        params=DragParams(max_steps=6, mode=mode, **TINY))
        steps = list(s.run())
        runs.append((s.ws, [st.points for st in steps], [st.loss for st in steps], s.image()))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]
    assert np.array_equal(runs[0][3], runs[1][3])


def test_fast_equals_reference_when_the_feature_block_has_image_size(tiny_G):
    fast, reference = session(tiny_G, "fast", steps=8), session(tiny_G, "reference", steps=8)
    fast_steps, reference_steps = list(fast.run()), list(reference.run())
    assert [s.points for s in fast_steps] == [s.points for s in reference_steps]
    np.testing.assert_allclose([s.loss for s in fast_steps], [s.loss for s in reference_steps], rtol=1e-4)
    torch.testing.assert_close(fast.ws, reference.ws, rtol=0, atol=1e-4)


def test_fast_equals_reference_without_mask_on_an_upsampled_feature_block(tiny_G):
    # block 2 is 16²: features are upsampled 2x; without a mask fast mode reads the same values
    fast = session(tiny_G, "fast", steps=8, feature_block=2)
    reference = session(tiny_G, "reference", steps=8, feature_block=2)
    fast_steps, reference_steps = list(fast.run()), list(reference.run())
    assert [s.points for s in fast_steps] == [s.points for s in reference_steps]
    np.testing.assert_allclose([s.loss for s in fast_steps], [s.loss for s in reference_steps], rtol=1e-4)
    torch.testing.assert_close(fast.ws, reference.ws, rtol=0, atol=1e-4)


def test_unfused_truncated_synthesis_matches_the_generator_features(tiny_G):
    ws = tiny_latent(tiny_G)
    expected = tiny_G.synthesis.features(ws, stop_block=2, noise_mode="const")[2]
    assert torch.equal(block_features(tiny_G.synthesis, ws, 2, fused_modconv=True), expected)
    torch.testing.assert_close(block_features(tiny_G.synthesis, ws, 2), expected, rtol=1e-5, atol=1e-5)


def test_previews_every_k_steps_show_the_latent_the_step_tracked_on(tiny_G):
    for mode in ("fast", "reference"):
        s = session(tiny_G, mode, steps=5, preview_every=2)
        first_image = s.image()
        ws_before = []
        steps = []
        for step in s.run():
            steps.append(step)
            ws_before.append(s.ws)
        assert [step.preview is not None for step in steps] == [False, True, False, True, False]
        # preview of step 1 = image of the latent after step 0's update
        s2 = session(tiny_G, mode, steps=5, preview_every=1)
        previews = [step.preview for step in s2.run()]
        assert np.array_equal(previews[0], first_image)
        assert np.array_equal(previews[1], steps[1].preview)
        assert not np.array_equal(previews[4], s2.image())  # the last update is not in any preview


def test_stop_rule_ends_the_drag_without_an_update(tiny_G):
    ws = tiny_latent(tiny_G)
    s = DragSession(tiny_G, ws, [(10.0, 10.0)], [(12.0, 10.0)],
                    params=DragParams(max_steps=10, mode="fast", **{**TINY, "preview_every": 0}))
    steps = list(s.run())
    assert len(steps) == 1 and steps[0].done and s.finished
    assert steps[0].preview is not None  # the final state is always shown
    assert torch.equal(s.ws, ws)


def test_the_generator_is_left_untouched(tiny_G):
    before = {k: v.clone() for k, v in tiny_G.state_dict().items()}
    list(session(tiny_G, "fast", steps=3).run())
    list(session(tiny_G, "reference", steps=3).run())
    assert all(torch.equal(before[k], v) for k, v in tiny_G.state_dict().items())
    assert all(p.grad is None for p in tiny_G.parameters())


def test_w_latent_optimises_one_vector_broadcast_to_the_first_layers(tiny_G):
    s = session(tiny_G, "fast", steps=3, latent="w", optimize_ws=6)
    w0 = tiny_latent(tiny_G)
    list(s.run())
    ws = s.ws
    assert all(torch.equal(ws[:, i], ws[:, 0]) for i in range(6))
    assert not torch.equal(ws[:, 0], w0[:, 0])
    assert torch.equal(ws[:, 6:], w0[:, 6:])


def test_optimize_ws_is_clamped_to_the_generator(tiny_G):
    s = session(tiny_G, "fast", steps=2, optimize_ws=50)
    list(s.run())
    assert s.optimize_ws == tiny_G.num_ws


def test_cancel_raises_at_the_next_step_and_the_session_can_continue(tiny_G):
    s = session(tiny_G, "fast", steps=6)
    seen = []
    with pytest.raises(EditCancelled):
        for step in s.run():
            seen.append(step.index)
            if step.index == 2:
                s.cancel()
    assert seen == [0, 1, 2]
    ws_after_three = s.ws
    rest = [step.index for step in s.run()]
    assert rest == [3, 4, 5]
    # the result equals an uninterrupted run
    uninterrupted = session(tiny_G, "fast", steps=6)
    list(uninterrupted.run())
    assert torch.equal(uninterrupted.ws, s.ws) and not torch.equal(ws_after_three, s.ws)


def test_should_cancel_and_cancel_from_another_thread(tiny_G):
    s = session(tiny_G, "fast", steps=6)
    with pytest.raises(EditCancelled):
        list(s.run(should_cancel=lambda: s._step_index >= 1))
    s2 = session(tiny_G, "fast", steps=100)
    started = threading.Event()

    def consume():
        try:
            for _ in s2.run(progress=lambda step: started.set()):
                pass
        except EditCancelled:
            results.append("cancelled")

    results: list[str] = []
    worker = threading.Thread(target=consume)
    worker.start()
    assert started.wait(60)
    s2.cancel()
    worker.join(60)
    assert results == ["cancelled"] and not s2.finished


def test_set_points_continues_from_the_current_latent(tiny_G):
    s = session(tiny_G, "fast", steps=3)
    list(s.run())
    ws_after_first_drag = s.ws
    s.set_points([(5.0, 5.0)], [(9.0, 5.0)])
    assert s.points == [(5.0, 5.0)] and not s.finished
    steps = list(s.run())
    assert [st.index for st in steps] == [0, 1, 2] and steps[0].points == [(5.0, 5.0)]
    # same as a fresh session started on the first drag's result
    fresh = DragSession(tiny_G, ws_after_first_drag, [(5.0, 5.0)], [(9.0, 5.0)],
                        params=DragParams(max_steps=3, mode="fast", **TINY))
    list(fresh.run())
    assert torch.equal(fresh.ws, s.ws)


def test_float_handles_are_rounded_half_to_even(tiny_G):
    s = DragSession(tiny_G, tiny_latent(tiny_G), [(10.5, 11.5)], [(20.0, 11.0)],
                    params=DragParams(max_steps=1, **TINY))
    assert s.points == [(10.0, 12.0)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(handle_points=[(32.0, 3.0)]), r"handle_points\[0\] = \(32, 3\) is outside the image"),
        (dict(target_points=[(3.0, -1.0)]), r"target_points\[0\].*outside the image"),
        (dict(handle_points=[], target_points=[]), "handle_points: no points"),
        (dict(target_points=[(1.0, 1.0), (2.0, 2.0)]), "target_points: 2 targets for 1 handle_points"),
        (dict(handle_points=[(float("nan"), 1.0)]), "handle_points: contains NaN"),
        (dict(target_points=[(1.0, float("inf"))]), "target_points: contains NaN or infinite"),
        (dict(mask=np.ones((16, 16), np.float32)), r"mask: expected shape \[32, 32\]"),
        (dict(mask=np.full((32, 32), np.nan, np.float32)), "mask: contains NaN"),
        (dict(ws=torch.zeros(1, 7, 32)), r"ws: expected shape \[1, 8, 32\]"),
        (dict(ws=torch.full((1, 8, 32), float("nan"))), "ws: contains NaN"),
        (dict(params=DragParams(mode="turbo")), "params.mode"),
        (dict(params=DragParams(lr=-1.0)), "params.lr"),
        (dict(params=DragParams(latent="z")), "params.latent"),
        (dict(params=DragParams(max_steps=0)), "params.max_steps"),
        (dict(params=DragParams(r1=12.0, feature_block=9)), "params.feature_block: 9 is out of range"),
        (dict(params=DragParams(r1=3.0, feature_block=3)), "params.r1: 3.0 .* rounds to a motion radius of 0 pixels"),
        (dict(params=DragParams(r1=12.0, r2=float("nan"), feature_block=3)), "params.r2"),
    ],
)
def test_invalid_input_names_the_field(tiny_G, kwargs, message):
    arguments = dict(ws=tiny_latent(tiny_G), handle_points=[(3.0, 3.0)], target_points=[(8.0, 3.0)], mask=None,
                     params=DragParams(**TINY))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DragSession(tiny_G, arguments.pop("ws"), **arguments)


def test_set_points_validates_before_changing_anything(tiny_G):
    s = session(tiny_G, "fast", steps=2)
    list(s.run())
    with pytest.raises(ValueError, match="target_points"):
        s.set_points([(1.0, 1.0)], [(40.0, 1.0)])
    assert s.finished and s.points != [(1.0, 1.0)]
