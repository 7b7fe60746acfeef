"""DragParams.lr_schedule, the engine's step-size hook (how per-model drag settings change the step size):
``None`` keeps Adam's ``lr`` constant (the official behaviour); a callable sets the learning rate of
step ``index`` (0-based within the drag) before that step's update, in both modes and with
``sync_every > 1``."""

from __future__ import annotations

import pytest
import torch

from backend.engine import DragParams, DragSession

from .conftest import tiny_latent

# 32 px: r1 = 12 -> 1 px, r2 = 40 -> 2 px (see test_session.py)
TINY = dict(r1=12.0, r2=40.0, feature_block=3, preview_every=0)
HANDLES = [(10.0, 12.0), (20.0, 22.0)]
TARGETS = [(24.0, 12.0), (10.0, 28.0)]  # far enough that 6 steps never reach the stop rule


def drag(G, steps=6, **overrides):
    session = DragSession(G, tiny_latent(G), HANDLES, TARGETS,
                          params=DragParams(max_steps=steps, **{**TINY, **overrides}))
    return session, list(session.run())


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_a_constant_schedule_equals_no_schedule_bit_for_bit(tiny_G, mode):
    plain, plain_steps = drag(tiny_G, mode=mode)
    scheduled, scheduled_steps = drag(tiny_G, mode=mode, lr_schedule=lambda step: 0.002)
    assert not plain_steps[-1].done
    assert torch.equal(plain.ws, scheduled.ws)
    assert [s.points for s in plain_steps] == [s.points for s in scheduled_steps]


@pytest.mark.parametrize("sync_every", [1, 4])
def test_the_schedule_is_asked_for_every_step_in_order(tiny_G, sync_every):
    asked: list[int] = []

    def schedule(step: int) -> float:
        asked.append(step)
        return 0.002

    drag(tiny_G, steps=6, sync_every=sync_every, lr_schedule=schedule)
    # queued steps (sync_every > 1) ask too, once each; nothing is asked after max_steps
    assert asked == list(range(6))


def test_larger_first_steps_move_the_latent_further(tiny_G):
    start = tiny_latent(tiny_G)
    plain, _ = drag(tiny_G, steps=1)
    boosted, _ = drag(tiny_G, steps=1, lr_schedule=lambda step: 0.008 if step == 0 else 0.002)
    # Adam's first update is lr * g / (|g| + eps): every coordinate with a gradient moves by lr
    ratio = float((boosted.ws - start).abs().max() / (plain.ws - start).abs().max())
    assert ratio == pytest.approx(4.0, rel=1e-3)


def test_a_schedule_matches_sync_every_one_when_steps_are_queued(tiny_G):
    def schedule(step: int) -> float:
        return 0.002 * (1 + 3 * 0.5 ** (step / 2))

    one, one_steps = drag(tiny_G, sync_every=1, lr_schedule=schedule)
    queued, queued_steps = drag(tiny_G, sync_every=3, lr_schedule=schedule)
    assert [s.points for s in one_steps] == [s.points for s in queued_steps]
    assert torch.allclose(one.ws, queued.ws, atol=1e-6)


def test_a_schedule_that_is_not_callable_is_refused(tiny_G):
    with pytest.raises(ValueError, match="params.lr_schedule"):
        drag(tiny_G, lr_schedule=0.01)


# --- lr_boost / lr_half_life: the warm schedule as plain fields (what the server sets per model) ---


def test_lr_at_is_warm_lr_and_boost_one_is_constant():
    params = DragParams(lr=0.002, lr_boost=16.0, lr_half_life=20.0)
    assert params.lr_at(0) == pytest.approx(0.032)
    assert params.lr_at(20) == pytest.approx(0.002 * 8.5)  # halfway back to lr after one half-life
    assert all(params.lr_at(i) > params.lr_at(i + 1) > 0.002 for i in range(300))
    assert DragParams(lr=0.002).lr_at(0) == 0.002 and DragParams(lr=0.002).lr_at(500) == 0.002
    # an explicit schedule wins over the fields
    assert DragParams(lr_boost=16.0, lr_schedule=lambda step: 0.5).lr_at(0) == 0.5


def test_boost_one_equals_the_official_constant_lr_bit_for_bit(tiny_G):
    plain, plain_steps = drag(tiny_G)
    boosted, boosted_steps = drag(tiny_G, lr_boost=1.0, lr_half_life=3.0)
    assert torch.equal(plain.ws, boosted.ws)
    assert [s.points for s in plain_steps] == [s.points for s in boosted_steps]


@pytest.mark.parametrize("sync_every", [1, 3])
def test_lr_boost_matches_the_same_schedule_given_as_a_callable(tiny_G, sync_every):
    by_fields, field_steps = drag(tiny_G, sync_every=sync_every, lr_boost=4.0, lr_half_life=2.0)
    by_hook, hook_steps = drag(tiny_G, sync_every=sync_every,
                               lr_schedule=lambda step: 0.002 * (1 + 3 * 0.5 ** (step / 2)))
    assert [s.points for s in field_steps] == [s.points for s in hook_steps]
    assert torch.equal(by_fields.ws, by_hook.ws)
    first, _ = drag(tiny_G, steps=1, lr_boost=4.0)
    plain, _ = drag(tiny_G, steps=1)
    start = tiny_latent(tiny_G)
    assert float((first.ws - start).abs().max() / (plain.ws - start).abs().max()) == pytest.approx(4.0, rel=1e-3)


@pytest.mark.parametrize("field,value", [("lr_boost", 0.5), ("lr_boost", float("nan")), ("lr_half_life", 0.0),
                                         ("lr_half_life", float("inf"))])
def test_bad_boost_or_half_life_is_refused_by_name(tiny_G, field, value):
    with pytest.raises(ValueError, match=f"params.{field}"):
        drag(tiny_G, **{field: value})


# --- stop_distance: the stop rule's distance (0 = the official max(2 / 512 * H, 2)) ---


def test_stop_distance_zero_is_the_official_rule_and_a_value_replaces_it(tiny_G):
    from backend.engine import conventions

    official, _ = drag(tiny_G, steps=1)
    assert official.stop_distance == conventions.stop_threshold(official.height) == 2.0
    finer, _ = drag(tiny_G, steps=1, stop_distance=0.5)
    assert finer.stop_distance == 0.5
    # a distance larger than every handle's: the drag ends at once, without an update
    start = tiny_latent(tiny_G)
    done, steps = drag(tiny_G, steps=6, stop_distance=30.0)
    assert len(steps) == 1 and steps[0].done and torch.equal(done.ws, start)
    # set_points with new params takes their stop distance
    done.set_points(HANDLES, TARGETS, params=DragParams(max_steps=6, **TINY))
    assert done.stop_distance == 2.0


def test_a_negative_stop_distance_is_refused_by_name(tiny_G):
    with pytest.raises(ValueError, match="params.stop_distance"):
        drag(tiny_G, stop_distance=-1.0)
