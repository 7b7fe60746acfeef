"""Precision setting (fp32 / bf16 / auto) and steps queued without host synchronisation (sync_every > 1)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from backend.engine import DragParams, DragSession, EditCancelled, conventions
from stylegan2 import precision

from .conftest import tiny_latent

# block 2 = 16 px: upsampled reads. Local synthesis is off: it runs only in step-by-step runs, and its
# convolutions on crops round differently, so exact equality with queued runs needs the whole map
# (local vs whole: tests/engine/test_local_synthesis.py).
TINY = dict(r1=12.0, r2=40.0, feature_block=2, preview_every=0, local_synthesis=False)
HANDLES = [(10.0, 12.0), (20.0, 22.0)]
TARGETS = [(14.0, 12.0), (16.0, 26.0)]


def run(G, mask=None, handles=HANDLES, targets=TARGETS, steps=7, **overrides):
    s = DragSession(G, tiny_latent(G), handles, targets, mask=mask,
                    params=DragParams(max_steps=steps, **{**TINY, **overrides}))
    out = list(s.run())
    return s, out


def summary(session, steps):
    return ([(st.index, st.points, st.loss, st.loss_motion, st.loss_mask, st.done) for st in steps],
            [st.preview for st in steps], session.ws, session.points, session.finished)


def assert_same(a, b):
    assert a[0] == b[0]
    assert len(a[1]) == len(b[1])
    for pa, pb in zip(a[1], b[1]):
        assert (pa is None) == (pb is None) and (pa is None or np.array_equal(pa, pb))
    assert torch.equal(a[2], b[2]) and a[3] == b[3] and a[4] == b[4]


@pytest.mark.parametrize("sync_every", [2, 3, 50])
@pytest.mark.parametrize("preview_every", [0, 2])
def test_queued_steps_give_the_same_run_as_step_by_step(tiny_G, sync_every, preview_every):
    mask = np.zeros((32, 32), np.float32)
    mask[2:30, 2:30] = 1
    reference = summary(*run(tiny_G, mask=mask, preview_every=preview_every, sync_every=1))
    queued = summary(*run(tiny_G, mask=mask, preview_every=preview_every, sync_every=sync_every))
    assert_same(reference, queued)


def test_queued_steps_stop_where_step_by_step_stops_and_mask_the_rest(tiny_G):
    # one handle 2 px from its target: the stop rule fires at step 0, before any update
    kwargs = dict(handles=[(10.0, 10.0)], targets=[(12.0, 10.0)], steps=10)
    reference = summary(*run(tiny_G, sync_every=1, **kwargs))
    queued_session, queued_steps = run(tiny_G, sync_every=4, **kwargs)
    queued = summary(queued_session, queued_steps)
    assert len(queued_steps) == 1 and queued_steps[0].done and queued_steps[0].preview is not None
    assert_same(reference, queued)
    assert torch.equal(queued_session.ws, tiny_latent(tiny_G))
    # a stop after a few updates: find one by running step by step, then compare
    far = dict(handles=[(10.0, 10.0)], targets=[(13.0, 10.0)], steps=40, lr=0.02)
    ref_session, ref_steps = run(tiny_G, sync_every=1, **far)
    assert ref_steps[-1].done and len(ref_steps) == 10  # stops at step 9: inside a batch of 3 and of 7
    for k in (3, 7):
        s, steps = run(tiny_G, sync_every=k, **far)
        assert_same(summary(ref_session, ref_steps), summary(s, steps))


def test_queued_steps_cancel_after_the_batch_and_can_continue(tiny_G):
    s = DragSession(tiny_G, tiny_latent(tiny_G), HANDLES, TARGETS,
                    params=DragParams(max_steps=9, sync_every=3, **TINY))
    calls = {"n": 0}

    def should_cancel():
        calls["n"] += 1
        return calls["n"] == 5  # polled before every queued step: cancel before step 4

    seen = []
    with pytest.raises(EditCancelled):
        for step in s.run(should_cancel=should_cancel):
            seen.append(step.index)
    assert seen == [0, 1, 2, 3] and not s.finished
    rest = [step.index for step in s.run()]
    assert rest == [4, 5, 6, 7, 8]
    reference = DragSession(tiny_G, tiny_latent(tiny_G), HANDLES, TARGETS,
                            params=DragParams(max_steps=9, sync_every=1, **TINY))
    list(reference.run())
    assert torch.equal(reference.ws, s.ws)


def test_sync_interval_defaults():
    assert DragParams().sync_every == 0 and DragParams().precision == "fp32"


def test_sync_interval_is_one_on_cpu_and_explicit_values_win(tiny_G):
    s, _ = run(tiny_G, steps=1)
    assert s.sync_interval() == 1
    s, _ = run(tiny_G, steps=1, sync_every=4)
    assert s.sync_interval() == 4
    s, _ = run(tiny_G, steps=1, sync_every=4, mode="reference")
    assert s.sync_interval() == 1


def test_precision_validation_and_auto_resolution(tiny_G, monkeypatch):
    with pytest.raises(ValueError, match="params.precision"):
        DragParams(precision="fp16").validate()
    with pytest.raises(ValueError, match="params.sync_every"):
        DragParams(sync_every=-1).validate()
    assert precision.resolve_precision("fp32", "cpu") == torch.float32
    assert precision.resolve_precision("bf16", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == torch.float32
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == torch.bfloat16
    s, _ = run(tiny_G, steps=1, precision="bf16", mode="reference")
    assert s.precision == torch.float32  # the official step is always float32


def test_cpu_bf16_probe_is_guarded(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert precision.cpu_has_fast_bf16() is False

    def broken():
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert precision.cpu_has_fast_bf16() is False


# bfloat16 keeps 8 bits of mantissa: one rounding to bf16 changes a value by at most u = 2^-9 of itself.
BF16_UNIT_ROUNDOFF = 2.0 ** -9
# Under autocast every convolution and matrix product of the truncated synthesis (tiny G up to block 2:
# 5 modulated 3x3 convolutions, each with its style affine) rounds its two operands to bf16 (4 roundings
# per layer pair forward) and the backward pass rounds the incoming gradient of each product again (2
# more): 5 x 6 = 30 roundings on the longest path. To first order their relative errors add up.
BF16_ROUNDINGS_TO_BLOCK_2 = 30


def adam_step_bound(betas: tuple[float, float], step: int) -> float:
    """The largest |update| / lr of bias-corrected Adam at ``step`` (1-based) for ANY gradients.

    m_hat = sum_i a_i g_i and v_hat = sum_i b_i g_i^2 with weights a_i = (1-b1) b1^(t-i) / (1-b1^t),
    b_i = (1-b2) b2^(t-i) / (1-b2^t); by Cauchy-Schwarz |m_hat| <= sqrt(sum_i a_i^2 / b_i) sqrt(v_hat)."""
    b1, b2 = betas
    total = 0.0
    for i in range(1, step + 1):
        a = (1 - b1) * b1 ** (step - i) / (1 - b1 ** step)
        b = (1 - b2) * b2 ** (step - i) / (1 - b2 ** step)
        total += a * a / b
    return total ** 0.5


def first_step_gradient(G, precision_name: str) -> torch.Tensor:
    s = DragSession(G, tiny_latent(G), HANDLES, TARGETS, params=DragParams(max_steps=1, precision=precision_name,
                                                                           **TINY))
    ws = conventions.assemble_ws(s._w_opt, s._w0, s.optimize_ws)
    _, loss_motion, _, _ = s._fast_forward(ws)
    (grad,) = torch.autograd.grad(loss_motion, [s._w_opt])
    return grad


def test_bf16_fast_mode_tracks_close_to_fp32_and_renders_the_result_in_fp32(tiny_G):
    """Bounds from the arithmetic, not from one CPU's output (native AVX512-BF16 / AMX kernels and
    emulated ones round differently, so their runs differ from each other as much as from fp32):

    * the first step's gradient: 30 roundings of at most u = 2^-9 each give ~0.06 to first order; 0.1
      allows for the convolutions amplifying their operands' errors (measured 0.03 on an AVX512-BF16 CPU);
    * the loss is a forward quantity (20 of those roundings, ~0.04): within 5 %;
    * the latent: Adam normalises each coordinate's step, so a coordinate whose gradient lies within the
      rounding error of zero may move the other way in bf16 at full size. No gradient error can move a
      coordinate by more than ``lr * adam_step_bound`` per step, so the two runs differ by at most twice
      the sum of those over the steps (a 0.0078 difference was measured after 4 steps, bound 0.016);
    * tracked points are arg-mins over integer pixels: a rounding can only break a near-tie, 1 px at most
      here where no handle moved.
    """
    grad32 = first_step_gradient(tiny_G, "fp32")
    grad16 = first_step_gradient(tiny_G, "bf16")
    assert grad16.dtype == torch.float32
    relative = float((grad16 - grad32).norm() / grad32.norm())
    assert relative <= 0.1  # first order: BF16_ROUNDINGS_TO_BLOCK_2 * BF16_UNIT_ROUNDOFF = 0.059

    steps = 4
    fp32_session, fp32_steps = run(tiny_G, steps=steps)
    bf16_session, bf16_steps = run(tiny_G, steps=steps, precision="bf16", preview_every=2)
    assert bf16_session.precision == torch.bfloat16
    assert len(fp32_steps) == len(bf16_steps) == steps
    for a, b in zip(fp32_steps, bf16_steps):
        assert np.abs(np.array(a.points) - np.array(b.points)).max() <= 1
        assert np.isfinite(b.loss) and abs(a.loss - b.loss) <= 0.05 * abs(a.loss) + 1e-3
    assert bf16_steps[1].preview is not None and bf16_steps[1].preview.dtype == np.uint8
    params = fp32_session.params
    betas = fp32_session._optimizer.defaults["betas"]
    bound = 2 * sum(params.lr_at(k) * adam_step_bound(betas, k + 1) for k in range(steps))
    assert (fp32_session.ws - bf16_session.ws).abs().max() <= bound
    assert bf16_session.ws.dtype == torch.float32
    with torch.no_grad():
        expected = tiny_G.synthesis(bf16_session.ws, noise_mode="const")
    expected_uint8 = (expected[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(bf16_session.image(), expected_uint8)


def test_adam_step_bound_is_reached_by_the_worst_gradients_and_exceeds_one_after_the_first_step():
    betas, t = (0.9, 0.999), 4
    assert adam_step_bound(betas, 1) == pytest.approx(1.0)
    # Cauchy-Schwarz is an equality for g_i proportional to a_i / b_i: Adam then moves by the bound
    b1, b2 = betas
    worst = [((1 - b1) * b1 ** (t - i) / (1 - b1 ** t)) / ((1 - b2) * b2 ** (t - i) / (1 - b2 ** t))
             for i in range(1, t + 1)]
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=1.0, betas=betas)
    for g in worst:
        before = float(w)
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    moved = abs(float(w) - before)
    assert moved == pytest.approx(adam_step_bound(betas, t), rel=1e-6) and moved > 1.0


def test_cancel_from_another_thread_with_queued_steps(tiny_G):
    s = DragSession(tiny_G, tiny_latent(tiny_G), HANDLES, TARGETS,
                    params=DragParams(max_steps=200, sync_every=5, **TINY))
    seen = []
    with pytest.raises(EditCancelled):
        for step in s.run():
            seen.append(step.index)
            if step.index == 6:
                threading.Thread(target=s.cancel).start()
                threading.Event().wait(0.05)
    assert seen[-1] < 199 and seen == list(range(len(seen)))
