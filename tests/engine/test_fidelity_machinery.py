"""The fidelity protocol's machinery (testkit/fidelity.py, run by benchmarks/fidelity.py) on a tiny
random generator and a stand-in detector: pair determinism, per-cell pair counts, statistics, the
checks' verdicts, Markdown/JSON output. None of this needs the default model; what the figures
*mean* is test_fidelity_short.py's job."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from backend.engine import DragParams
from testkit import fidelity

from .conftest import make_tiny_generator

EditResult = fidelity.EditResult

# 32 px tiny generator: r1 = 12 -> 1 px, r2 = 40 -> 2 px at 32 px (see test_session.py)
TINY = DragParams(r1=12.0, r2=40.0, feature_block=3, preview_every=0)


class CentroidDetector:
    """Stand-in keypoint detector: 16 keypoints = the brightness-weighted centroids of a 4 x 4 grid of
    cells, (x, y) px, their offset from the cell centre magnified ``GAIN`` times (the tiny generator's
    centroids differ by a fraction of a pixel between pairs; magnified, the drags have work to do).
    Deterministic, cheap, and it moves when the image content moves."""

    GAIN = 8.0

    def predict(self, images: np.ndarray) -> np.ndarray:
        n, height, width, _ = images.shape
        grey = images.astype(np.float64).mean(axis=-1) + 1.0  # + 1: an all-black cell still has a centre
        out = np.zeros((n, 16, 2), np.float32)
        ch, cw = height // 4, width // 4
        yy, xx = np.mgrid[:ch, :cw]
        for k in range(16):
            r, c = divmod(k, 4)
            cell = grey[:, r * ch:(r + 1) * ch, c * cw:(c + 1) * cw]
            total = cell.sum(axis=(1, 2))
            centre_x, centre_y = (cw - 1) / 2, (ch - 1) / 2
            dx = (cell * xx).sum(axis=(1, 2)) / total - centre_x
            dy = (cell * yy).sum(axis=(1, 2)) / total - centre_y
            out[:, k, 0] = np.clip(c * cw + centre_x + self.GAIN * dx, 0, width - 1)
            out[:, k, 1] = np.clip(r * ch + centre_y + self.GAIN * dy, 0, height - 1)
        return out


@pytest.fixture(scope="module")
def G():
    return make_tiny_generator()


def run(G, **kwargs):
    options = dict(point_counts=[1, 5, "all"], rows=[], max_steps=3, base=TINY, seed=3, mask_margin=4.0,
                   pairs_fast=3, pairs_other=2)
    options.update(kwargs)
    return fidelity.run_fidelity(G, CentroidDetector(), **options)


def no_edit(results, count):
    return [(e.pair, e.distance_before, tuple(e.points_before)) for e in results[("no edit", count)]]


def test_pairs_are_the_same_whatever_rows_points_and_pair_counts(G):
    everything = run(G, rows=["fast", "fast w"])
    only_five = run(G, point_counts=[5], rows=[], pairs_fast=3, pairs_other=3)
    assert set(everything) == {(row, n) for row in ("no edit", "fast", "fast w") for n in (1, 5, 16)}
    # "no edit" covers the most pairs any row runs at that count; pairs are a shared prefix
    assert [e.pair for e in everything[("no edit", 5)]] == [0, 1, 2]
    assert no_edit(everything, 5) == no_edit(only_five, 5)
    for row in ("fast", "fast w"):
        for count in (1, 5, 16):
            edits = everything[(row, count)]
            assert [(e.pair, e.distance_before) for e in edits] == \
                [(p, d) for p, d, _ in no_edit(everything, count)][:len(edits)]
    # another seed gives other pairs; the same seed again the same ones
    assert no_edit(run(G, point_counts=[5], seed=4), 5) != no_edit(only_five, 5)
    assert no_edit(run(G, point_counts=[5]), 5) == no_edit(only_five, 5)[:2]  # rows=[]: pairs_other pairs


def test_subsets_and_latents_depend_on_seed_pair_and_count_only():
    subsets = {count: fidelity.choose_subset(7, 2, count, 16) for count in (1, 5, 16, 40)}
    assert len(subsets[1]) == 1 and len(subsets[5]) == 5 and list(subsets[5]) == sorted(set(subsets[5]))
    assert list(subsets[16]) == list(range(16)) == list(subsets[40])
    assert np.array_equal(fidelity.choose_subset(7, 2, 5, 16), subsets[5])
    assert fidelity.resolve_counts([1, "all", 5, 16, 99], 16) == [1, 16, 5]


def test_plan_gives_the_fast_row_more_pairs_at_one_and_five_points():
    cells = fidelity.plan(["reference", "fast", "fast mask"], [1, 5, 16], pairs_fast=100, pairs_other=30)
    assert cells[("fast", 1)] == cells[("fast", 5)] == 100
    assert cells[("fast", 16)] == cells[("reference", 1)] == cells[("fast mask", 5)] == 30
    assert cells[("no edit", 1)] == cells[("no edit", 5)] == 100 and cells[("no edit", 16)] == 30
    assert fidelity.plan([], [1], 100, 30) == {("no edit", 1): 30}


def test_summary_mean_standard_error_median():
    s = fidelity.summarize([1.0, 2.0, None, 4.0, 3.0])
    assert s.n == 4 and s.mean == 2.5 and s.median == 2.5
    assert s.se == pytest.approx(statistics.stdev([1, 2, 3, 4]) / 2)
    one = fidelity.summarize([5.0])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.se)
    assert fidelity.summarize([None]).n == 0 and math.isnan(fidelity.summarize([]).mean)


def edits(pairs, after, before=10.0, steps=50, converged=True):
    """Synthetic EditResults: ``after`` per pair (a list) or one value for all."""
    values = after if isinstance(after, list) else [after] * len(pairs)
    return [EditResult(before, a, None, steps, converged, 1.0, pair=p) for p, a in zip(pairs, values)]


def test_ratio_check_verdict_and_its_standard_error():
    results = {("fast", 1): edits(range(4), [1.0, 2.0, 3.0, 2.0]), ("no edit", 1): edits(range(4), 10.0)}
    check = fidelity.ratio_check(results)
    assert check.passed is True and check.value == pytest.approx(0.2) and fidelity.verdict(check) == "PASS"
    # before is constant, so SE(ratio) = SE(after) / before
    assert check.se == pytest.approx(fidelity.summarize([1.0, 2.0, 3.0, 2.0]).se / 10)
    results[("fast", 1)] = edits(range(4), 4.0)
    assert fidelity.ratio_check(results).passed is False
    assert fidelity.verdict(fidelity.ratio_check({})) == "n/a"


def test_reference_check_uses_shared_pairs_and_max_of_half_a_pixel_and_the_standard_error():
    # fast ran 6 pairs, reference the first 3: compared on pairs 0..2 only (pairs 3..5 are far off)
    results = {("fast", 1): edits(range(6), [2.0, 2.2, 2.4, 9.0, 9.0, 9.0]),
               ("reference", 1): edits(range(3), [2.1, 2.0, 2.3])}
    (check,) = fidelity.reference_checks(results, [1])
    assert check.passed is True and check.value == pytest.approx(abs(statistics.mean([-0.1, 0.2, 0.1])))
    assert check.threshold == 0.5
    # a 1 px gap with a small spread fails ...
    results[("reference", 1)] = edits(range(3), [1.0, 1.2, 1.4])
    assert fidelity.reference_checks(results, [1])[0].passed is False
    # ... and passes when the pairs disagree so much that the standard error exceeds it
    results = {("fast", 1): edits(range(3), [1.0, 9.0, 2.0]), ("reference", 1): edits(range(3), [1.0, 1.0, 7.0])}
    (check,) = fidelity.reference_checks(results, [1])
    assert check.value == pytest.approx(1.0) and check.threshold == pytest.approx(check.se) and check.passed
    assert fidelity.reference_checks({("fast", 5): edits([0], 1.0)}, [5])[0].passed is None


def test_schedule_comparison_helps_only_when_faster_at_no_cost_or_more_accurate():
    fast = edits(range(3), [2.0, 2.5, 3.0], steps=60)
    faster_same = {("fast", 1): fast, ("fast sched", 1): edits(range(3), [2.1, 2.4, 3.0], steps=30)}
    faster_worse = {("fast", 1): fast, ("fast sched", 1): edits(range(3), [4.0, 4.1, 4.2], steps=30)}
    slower_same = {("fast", 1): fast, ("fast sched", 1): edits(range(3), [2.0, 2.5, 3.0], steps=80)}
    assert fidelity.schedule_comparison(faster_same, [1])[0].passed is True
    assert fidelity.schedule_comparison(faster_same, [1])[0].value == pytest.approx(0.5)
    assert fidelity.schedule_comparison(faster_worse, [1])[0].passed is False
    assert fidelity.schedule_comparison(slower_same, [1])[0].passed is False
    assert fidelity.schedule_comparison({("fast", 1): fast}, [1]) == []


def test_warm_lr_schedule_starts_large_and_decays_to_lr():
    warm = fidelity.lr_schedule("warm", 0.002, boost=4.0, half_life=10.0)
    assert warm(0) == pytest.approx(0.008) and warm(10) == pytest.approx(0.005)
    assert all(warm(i) > warm(i + 1) > 0.002 for i in range(100)) and warm(1000) == pytest.approx(0.002)
    assert fidelity.lr_schedule("constant", 0.002) is None
    default = fidelity.lr_schedule("warm", 0.002)  # 16x, half-life 20 steps
    assert default(0) == pytest.approx(0.032) and default(20) == pytest.approx(0.017)
    with pytest.raises(ValueError, match="lr schedule"):
        fidelity.lr_schedule("cosine", 0.002)
    params = fidelity.row_params("fast sched", 10, TINY, warm)
    assert params.lr_schedule is warm and fidelity.row_params("fast", 10, TINY, warm).lr_schedule is None
    assert fidelity.row_params("reference", 10, TINY).mode == "reference"
    assert fidelity.row_params("fast w", 10, TINY).latent == "w"


def test_every_row_runs_and_the_report_and_json_say_so(G, tmp_path):
    results = run(G, rows=list(fidelity.ROWS), point_counts=[1, "all"], pairs_fast=2, pairs_other=2, max_steps=4)
    for row in fidelity.ROWS:
        for count in (1, 16):
            cell = results[(row, count)]
            assert len(cell) == 2 and all(0 <= e.steps <= 4 and e.seconds > 0 for e in cell)
        assert all(e.outside_pixels is not None and e.outside_pixels >= 0 for e in results[(row, 1)])
        assert all(e.outside_moved is not None for e in results[(row, 1)])
    # 16 of 16 points: no keypoint is outside, and here the box + margin covers the whole 32 px image:
    # no figure rather than a zero
    assert all(e.outside_moved is None and e.outside_pixels is None for e in results[("fast", 16)])
    config = {"model": "tiny", "pairs_fast": 2}
    text = fidelity.report(results, [1, 16], list(fidelity.ROWS), config)
    table = text.split("\n\n")[1].splitlines()
    assert table[0].startswith("| row | points | pairs | MD px")
    assert [line.split(" | ")[0].lstrip("| ") for line in table[2:]] == ["no edit", *fidelity.ROWS] * 2
    assert "MD(fast) / MD(no edit), 1 pt" in text and "|MD(fast) - MD(reference)|, 16 pt" in text
    assert "lr schedule, 1 pt" in text and "time per edit, 1 pt: reference" in text
    assert text.startswith("fidelity: model tiny, pairs_fast 2")

    path = tmp_path / "fidelity.json"
    fidelity.write_json(path, fidelity.to_json(results, [1, 16], list(fidelity.ROWS), config))
    data = json.loads(path.read_text())  # nan became null: strict JSON
    assert data["complete"] is True and data["config"] == config
    assert [(r["row"], r["points"]) for r in data["rows"]] == [
        (row, n) for n in (1, 16) for row in ("no edit", *fidelity.ROWS)]
    assert data["rows"][0]["steps"] is None and data["rows"][1]["md"]["n"] == 2
    assert {c["verdict"] for c in data["checks"]} <= {"PASS", "FAIL", "n/a"} and len(data["checks"]) == 3
    assert len(data["edits"]["fast mask|1"]) == 2 and data["edits"]["fast|16"][0]["outside_moved"] is None


def test_a_run_continues_from_its_json_and_grows_to_more_pairs(G, tmp_path):
    config = {"model_sha256": "abc", "seed": 3, "max_steps": 3}
    first = run(G, rows=["fast", "reference"], point_counts=[1], pairs_fast=2, pairs_other=1)
    path = tmp_path / "f.json"
    fidelity.write_json(path, fidelity.to_json(first, [1], ["fast", "reference"], config, complete=False))
    previous = fidelity.load_edits(json.loads(path.read_text()))
    assert previous == first
    ran: list[tuple[int, str]] = []
    grown = run(G, rows=["fast", "reference"], point_counts=[1], pairs_fast=3, pairs_other=2, previous=previous,
                progress=lambda pair, row, count, result: ran.append((pair, row)))
    assert ran == [(1, "reference"), (2, "fast")]  # only the edits the first run lacked
    assert grown[("fast", 1)][:2] == first[("fast", 1)] and grown[("reference", 1)][0] == first[("reference", 1)][0]
    fresh = run(G, rows=["fast", "reference"], point_counts=[1], pairs_fast=3, pairs_other=2)
    assert [e.distance_after for e in fresh[("fast", 1)]] == [e.distance_after for e in grown[("fast", 1)]]
    assert fidelity.protocol_mismatch(config, {**config, "pairs_fast": 100}) == []
    assert fidelity.protocol_mismatch(config, {**config, "max_steps": 200}) == ["max_steps: 3 -> 200"]


def test_command_line_pair_counts_quick_mode_and_points():
    parse = fidelity.build_parser().parse_args
    assert fidelity.run_settings(parse([])) == (100, 30, 200)
    assert fidelity.run_settings(parse(["--quick"])) == (2, 2, 20)
    assert fidelity.run_settings(parse(["--pairs", "8", "--pairs-fast", "12"])) == (12, 8, 200)
    assert fidelity.run_settings(parse(["--quick", "--max-steps", "50"])) == (2, 2, 50)
    assert parse([]).points == [1, 5, "all"] and parse(["--points", "1", "all"]).points == [1, "all"]
    assert parse([]).rows == list(fidelity.ROWS)
    with pytest.raises(SystemExit):
        parse(["--points", "0"])


def test_drag_settings_paper_or_the_models_own():
    paper, text = fidelity.base_params("paper", fidelity.DEFAULT_MODEL, 0.002, 3.0, 12.0)
    assert text == "paper" and (paper.lr_boost, paper.stop_distance) == (1.0, 0.0)
    model, text = fidelity.base_params("model", fidelity.DEFAULT_MODEL, 0.002, 3.0, 12.0)
    assert model.lr_boost == 16.0 and model.stop_distance == 1.0 and "faces-128" in text
    # every row takes the base's settings; fast sched's schedule replaces the lr fields only
    for row in fidelity.ROWS:
        assert fidelity.row_params(row, 10, model).stop_distance == 1.0
    with pytest.raises(ValueError, match="drag settings"):
        fidelity.base_params("fastest", fidelity.DEFAULT_MODEL, 0.002, 3.0, 12.0)
    # a run written before the setting existed used the paper's: it resumes under "paper" only
    assert fidelity.protocol_mismatch({}, {"drag_settings": "paper"}) == []
    assert fidelity.protocol_mismatch({}, {"drag_settings": text}) != []
