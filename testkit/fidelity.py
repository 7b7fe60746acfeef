"""Edit fidelity: does a drag land where the user asked? The paper's Table 1 protocol on our faces.

Protocol (Pan et al. 2023, "Drag Your GAN", Table 1, on the procedural face domain of
``training.faces``): sample pairs of generated images A and B, detect the 16 keypoints on both with
the committed keypoint detector, use A's keypoints as handles and B's as targets (1 point, 5 points,
all points), drag A, detect the keypoints on the result, and report the mean distance MD (pixels)
between the dragged keypoints and their targets. ``no edit`` is that distance before editing.

Rows (``--rows``):

* ``no edit``   — MD before any drag (always reported; costs nothing);
* ``reference`` — the official step (W+), ``DragParams(mode="reference")``;
* ``fast``      — our default fast mode (W+);
* ``fast w``    — fast mode optimising a single ``w`` (the paper's w vs w+ comparison);
* ``fast mask`` — fast W+ with an editable region: the box around handles and targets grown by
  ``--mask-margin`` px (everything outside it should stay);
* ``fast sched``— fast W+ with a learning-rate schedule (``--lr-schedule``, default ``warm``: larger
  first steps decaying to ``lr``), the engine's ``DragParams.lr_schedule`` hook.

Every edited row also reports the drift outside the editable region (for unmasked rows: the same box,
so masked and unmasked are comparable): the mean displacement of the keypoints of A that lie outside
it (detected after the drag vs detected on A, px) and the mean absolute RGB change of the pixels
outside it (0..255 levels); and the steps and wall time per edit. Steps = Adam updates made: the
stop rule ends a drag once every handle is within ``max(2/512*H, 2)`` px of its target (the official
rule; ``--drag-settings model``: the model's own stop distance, 1 px for faces-128), an
edit that never converges counts ``--max-steps`` (so the median is a lower bound when fewer than half
converge). Wall time per edit = building the session + all steps + rendering the final image
(detection excluded), on ``--threads`` intra-op threads.

Pairs: pair ``i`` is drawn from ``(seed, i)`` alone and the handle subset of ``k`` points from
``(seed, i, k)`` alone, so a pair is the same whatever rows, point counts or pair counts are chosen,
and row ``r`` with ``n`` pairs uses pairs ``0..n-1``: every row shares its first pairs with every
other row. The ``fast`` row at 1 and 5 points runs ``--pairs-fast`` pairs (default 100), every other
cell ``--pairs-other`` (default 30), to fit a CPU budget.

Engine settings (``--drag-settings``): ``paper`` (default) runs every row with the official code's
constant ``lr`` and stop rule; ``model`` with what the server adds for this model (its registry entry:
larger first steps and its stop distance), i.e. the edits users get; ``reference`` then still makes
the official step's computations, with the same settings, so check 2 compares like with like.

Figures are means over pairs ± the standard error of the mean (sd / sqrt(n)) unless marked median.
Two checks (does the fast mode keep the reference's accuracy?) are printed with verdicts:

1. 1 point: MD(fast) / MD(no edit) over the fast row's pairs ≤ 0.3 (paper: 2.44 / 12.93 = 0.19);
2. per point count: |MD(fast) − MD(reference)| ≤ max(0.5 px, SE), both over the pairs they share,
   SE = standard error of the per-pair difference (paired: the pairs' own spread cancels).

and, when ``fast sched`` ran, whether the schedule helps (fewer median steps at no measurable MD cost,
or a measurably lower MD; "measurably" = by more than max(0.5 px, SE of the paired difference)).

Usage::

    python benchmarks/fidelity.py --quick                                   # smoke run, ~2 min on 2 CPUs
    python benchmarks/fidelity.py --markdown fidelity.md --json fidelity.json   # the full table
    python benchmarks/fidelity.py --rows fast reference --points 1 --pairs 8

With ``--json``, the file is rewritten after every pair (``"complete": false`` until the end), so a
long run that is stopped still leaves its edits so far; the same command with ``--resume`` continues it
(edits already there are reused when the model, detector and protocol settings are the same), and
``--resume`` with larger pair counts grows a finished run. Timings of a resumed run come from several
processes: run it on a machine in the same state (load, threads) throughout.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from backend.engine import DragParams, DragSession
from backend.engine.session import to_uint8, warm_lr
from draggan_util.hashing import sha256_file

REPO = Path(__file__).resolve().parents[1]

DEFAULT_MODEL = REPO / "backend" / "data" / "faces-128.pt"
NO_EDIT = "no edit"
ROWS = ("reference", "fast", "fast w", "fast mask", "fast sched")
FAST_ROW = "fast"
FAST_POINT_COUNTS = (1, 5)  # the cells that get --pairs-fast pairs (>= 100, for a standard error well under a pixel)
PAIRS_FAST, PAIRS_OTHER = 100, 30
QUICK = dict(pairs_fast=2, pairs_other=2, max_steps=20)
RATIO_TARGET = 0.3  # check 1: MD(fast) / MD(no edit) at 1 point
PAPER_RATIO = 2.44 / 12.93  # DragGAN, Table 1, 1 point
MD_TOLERANCE_PX = 0.5  # check 2: |MD(fast) - MD(reference)| <= max(this, SE)
LR_SCHEDULES = ("constant", "warm")
LR_BOOST, LR_HALF_LIFE = 16.0, 20.0  # the ``warm`` schedule's defaults (see lr_schedule)

Cell = tuple[str, int]  # (row, number of points)


class KeypointModel(Protocol):
    """What the protocol needs from a detector (``alignment.detector.KeypointDetector`` is one)."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` -> float ``[N, K, 2]`` keypoints, (x, y) pixels."""
        ...


def lr_schedule(name: str, lr: float, boost: float = LR_BOOST, half_life: float = LR_HALF_LIFE
                ) -> Callable[[int], float] | None:
    """A ``DragParams.lr_schedule`` by name. ``"constant"``: ``None`` (the engine keeps ``lr``).

    ``"warm"``: the engine's :func:`~backend.engine.session.warm_lr`, ``lr * (1 + (boost - 1) * 0.5 **
    (step / half_life))`` — ``boost x lr`` at step 0, halfway back to ``lr`` after ``half_life`` steps. Why:
    a drag's first steps move the handles far from their targets, where a larger step only speeds things
    up; near the targets the constant ``lr`` keeps the official code's precision (the stop rule needs every
    handle within 2 px). Defaults 16x / 20 steps: on 8 pairs of the 69335 weights (200 steps, 1 point)
    4x / 10 left the mean MD as it was (2.35 px) with median steps 123 -> 82; 8x / 20 gave 2.06 px, 16x /
    20 1.78 px in a median 10 steps (training/docs/faces-128-history.md, session 13).
    """
    if name == "constant":
        return None
    if name != "warm":
        raise ValueError(f"lr schedule: expected one of {LR_SCHEDULES}, got {name!r}")
    if not (boost >= 1 and half_life > 0):
        raise ValueError(f"lr schedule warm: boost must be >= 1 and half_life > 0, got {boost}, {half_life}")

    def warm(step: int) -> float:
        return warm_lr(lr, step, boost, half_life)

    return warm


# --------------------------------------------------------------------------- pairs and edits


@dataclass
class EditResult:
    """One edit of one pair. Distances in pixels of the generator's image."""

    distance_before: float  # MD before: mean |handle - target| over the dragged keypoints
    distance_after: float  # MD after: mean |keypoint detected after the drag - target|
    outside_moved: float | None  # mean displacement of A's keypoints outside the region (None: none there)
    steps: int  # Adam updates made (the stop step makes none)
    converged: bool  # the stop rule was reached within max_steps
    seconds: float  # wall time of the edit (session, steps, final image)
    pair: int = 0
    outside_pixels: float | None = None  # mean |RGB change| outside the region, 0..255 levels
    points_before: list[float] = field(default_factory=list)  # per dragged keypoint, px
    points_after: list[float] = field(default_factory=list)


def editable_region(handles: np.ndarray, targets: np.ndarray, height: int, width: int, margin: float) -> np.ndarray:
    """Mask ``[H, W]`` float32, 1 inside the box around handles and targets (``[P, 2]`` x, y px) grown
    by ``margin`` px, 0 outside."""
    points = np.concatenate([handles, targets])
    x0, y0 = points.min(axis=0) - margin
    x1, y1 = points.max(axis=0) + margin
    yy, xx = np.mgrid[:height, :width]
    return ((xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)).astype(np.float32)


def pair_latents(G: Any, seed: int, pair: int, truncation_psi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair ``pair``'s latents ``ws_a, ws_b`` (``[1, num_ws, w_dim]`` each), from ``(seed, pair)`` alone."""
    z = np.random.default_rng([seed, pair, 0]).standard_normal((2, G.z_dim))
    with torch.no_grad():
        ws = G.mapping(torch.from_numpy(z).float(), None, truncation_psi=truncation_psi)
    return ws[0:1], ws[1:2]


def choose_subset(seed: int, pair: int, count: int, num_keypoints: int) -> np.ndarray:
    """Sorted indices of the ``count`` keypoints dragged in pair ``pair``, from ``(seed, pair, count)``
    alone (independent of the other counts run); all of them when ``count >= num_keypoints``."""
    if count >= num_keypoints:
        return np.arange(num_keypoints)
    rng = np.random.default_rng([seed, pair, 1, count])
    return np.sort(rng.choice(num_keypoints, size=count, replace=False))


def row_params(row: str, max_steps: int, base: DragParams,
               schedule: Callable[[int], float] | None = None) -> DragParams:
    """The engine settings of ``row``: ``base``'s lr, radii, block..., with the row's mode and latent;
    ``schedule`` is used by ``fast sched`` (the other rows keep ``base.lr_schedule``)."""
    if row not in ROWS:
        raise ValueError(f"row: expected one of {ROWS}, got {row!r}")
    mode = "reference" if row == "reference" else "fast"
    latent = "w" if row == "fast w" else "w+"
    return DragParams(max_steps=max_steps, lr=base.lr, latent=latent, optimize_ws=base.optimize_ws,
                      lambda_mask=base.lambda_mask, r1=base.r1, r2=base.r2, feature_block=base.feature_block,
                      preview_every=0, mode=mode, precision=base.precision, lr_boost=base.lr_boost,
                      lr_half_life=base.lr_half_life, stop_distance=base.stop_distance,
                      lr_schedule=schedule if row == "fast sched" else base.lr_schedule)


def drag_once(G: Any, detector: KeypointModel, ws: torch.Tensor, keypoints_a: np.ndarray, keypoints_b: np.ndarray,
              subset: np.ndarray, params: DragParams, mask_margin: float, masked: bool,
              image_a: np.ndarray | None = None, pair: int = 0) -> EditResult:
    """One edit: drag A's keypoints ``subset`` (``[K, 2]`` x, y px) onto B's; measure with the detector.

    The region (box around handles and targets + ``mask_margin`` px) is the engine's editable mask
    when ``masked``; for every edit it is where the outside drift is measured. ``image_a``: uint8
    ``[H, W, 3]`` render of ``ws`` (rendered here when None)."""
    height, width = G.img_height, G.img_width
    if image_a is None:
        with torch.no_grad():
            image_a = to_uint8(G.synthesis(ws, noise_mode="const"))
    # the engine needs points inside the image; detector outputs can sit a fraction of a pixel outside
    handles = np.clip(keypoints_a[subset], 0, [width - 1, height - 1])
    targets = np.clip(keypoints_b[subset], 0, [width - 1, height - 1])
    region = editable_region(handles, targets, height, width, mask_margin)
    started = time.perf_counter()
    session = DragSession(G, ws, [tuple(p) for p in handles], [tuple(p) for p in targets],
                          mask=region if masked else None, params=params)
    steps = list(session.run())
    image = session.image()
    seconds = time.perf_counter() - started
    after = detector.predict(image[None])[0]

    others = np.setdiff1d(np.arange(len(keypoints_a)), subset)
    outside = [k for k in others
               if region[int(np.clip(round(float(keypoints_a[k, 1])), 0, height - 1)),
                         int(np.clip(round(float(keypoints_a[k, 0])), 0, width - 1))] == 0]
    outside_moved = (float(np.linalg.norm(after[outside] - keypoints_a[outside], axis=1).mean())
                     if outside else None)
    fixed = region == 0
    outside_pixels = (float(np.abs(image.astype(np.float32) - image_a.astype(np.float32))[fixed].mean())
                      if fixed.any() else None)
    before_each = np.linalg.norm(keypoints_a[subset] - keypoints_b[subset], axis=1)
    after_each = np.linalg.norm(after[subset] - keypoints_b[subset], axis=1)
    converged = bool(steps and steps[-1].done)
    return EditResult(
        distance_before=float(before_each.mean()), distance_after=float(after_each.mean()),
        outside_moved=outside_moved, steps=len(steps) - (1 if converged else 0), converged=converged,
        seconds=seconds, pair=pair, outside_pixels=outside_pixels,
        points_before=[float(d) for d in before_each], points_after=[float(d) for d in after_each])


def plan(rows: Sequence[str], point_counts: Sequence[int], pairs_fast: int, pairs_other: int) -> dict[Cell, int]:
    """Pairs per cell ``(row, points)``: ``fast`` at 1 and 5 points gets ``pairs_fast``, every other edited
    cell ``pairs_other``; ``no edit`` covers the most pairs any row uses at that count."""
    cells: dict[Cell, int] = {}
    for count in point_counts:
        edited = {row: (pairs_fast if row == FAST_ROW and count in FAST_POINT_COUNTS else pairs_other)
                  for row in rows}
        cells[(NO_EDIT, count)] = max([pairs_other, *edited.values()])
        cells.update({(row, count): n for row, n in edited.items()})
    return cells


def resolve_counts(point_counts: Iterable[int | str], num_keypoints: int) -> list[int]:
    """Point counts as given (``"all"`` or anything above ``num_keypoints`` = all), deduplicated, in order."""
    counts: list[int] = []
    for count in point_counts:
        value = num_keypoints if count == "all" else min(int(count), num_keypoints)
        if value < 1:
            raise ValueError(f"point count: expected >= 1 or 'all', got {count!r}")
        if value not in counts:
            counts.append(value)
    return counts


def run_fidelity(G: Any, detector: KeypointModel, pairs: int | None = None,
                 point_counts: Sequence[int | str] = (1, 5, "all"), rows: Sequence[str] = ROWS,
                 max_steps: int = 200, base: DragParams | None = None, seed: int = 0, truncation_psi: float = 0.7,
                 mask_margin: float = 12.0, progress: Callable[[int, str, int, EditResult], None] | None = None,
                 pairs_fast: int = PAIRS_FAST, pairs_other: int = PAIRS_OTHER,
                 schedule: Callable[[int], float] | None = None,
                 after_pair: Callable[[int, dict[Cell, list[EditResult]]], None] | None = None,
                 warmup: bool = True, previous: dict[Cell, list[EditResult]] | None = None,
                 ) -> dict[Cell, list[EditResult]]:
    """All edits: ``{(row, points): [EditResult per pair, in pair order]}``, ``no edit`` included.

    ``pairs`` (when given) sets both ``pairs_fast`` and ``pairs_other``. ``schedule`` is the ``fast
    sched`` row's ``lr_schedule`` (default: ``lr_schedule("warm", base.lr)``). ``after_pair(pair, results)``
    runs after each pair (the CLI writes its JSON there). ``warmup``: one untimed 2-step drag per engine
    mode before the first timed edit. ``previous``: edits of an earlier run with the same protocol
    settings (see :func:`load_edits`); a cell's edit of a pair found there is reused instead of rerun,
    so a stopped run continues, or a finished one grows to more pairs."""
    base = base or DragParams()
    if pairs is not None:
        pairs_fast = pairs_other = pairs
    for row in rows:
        row_params(row, max_steps, base)  # validates the row name before any work
    if schedule is None and "fast sched" in rows:
        schedule = lr_schedule("warm", base.lr)
    if warmup and rows and not previous:
        # one short untimed drag per engine mode first: the first drag in a process pays one-time costs
        # (allocator, kernel selection) that would otherwise land in pair 0's wall time
        ws = pair_latents(G, seed, 0, truncation_psi)[0]
        point = ((G.img_width - 1) / 2, (G.img_height - 1) / 2)
        for row in dict.fromkeys("reference" if r == "reference" else FAST_ROW for r in rows):
            params = row_params(row, 2, base)
            list(DragSession(G, ws, [point], [(point[0] + 4, point[1])], params=params).run())
    results: dict[Cell, list[EditResult]] = {}
    cells: dict[Cell, int] | None = None
    pair = 0
    while cells is None or pair < max(cells.values()):
        ws_a, ws_b = pair_latents(G, seed, pair, truncation_psi)
        with torch.no_grad():
            images = np.stack([to_uint8(G.synthesis(w, noise_mode="const")) for w in (ws_a, ws_b)])
        keypoints_a, keypoints_b = detector.predict(images)
        if cells is None:  # the detector's keypoint count is known once it has run
            counts = resolve_counts(point_counts, len(keypoints_a))
            cells = plan(rows, counts, pairs_fast, pairs_other)
        for count in counts:
            subset = choose_subset(seed, pair, count, len(keypoints_a))
            if pair < cells[(NO_EDIT, count)]:
                each = np.linalg.norm(keypoints_a[subset] - keypoints_b[subset], axis=1)
                results.setdefault((NO_EDIT, count), []).append(EditResult(
                    float(each.mean()), float(each.mean()), None, 0, False, 0.0, pair=pair,
                    points_before=[float(d) for d in each], points_after=[float(d) for d in each]))
            for row in rows:
                if pair >= cells[(row, count)]:
                    continue
                earlier = next((e for e in (previous or {}).get((row, count), []) if e.pair == pair), None)
                if earlier is not None:
                    results.setdefault((row, count), []).append(earlier)
                    continue
                params = row_params(row, max_steps, base, schedule)
                result = drag_once(G, detector, ws_a, keypoints_a, keypoints_b, subset, params, mask_margin,
                                   masked=row == "fast mask", image_a=images[0], pair=pair)
                results.setdefault((row, count), []).append(result)
                if progress is not None:
                    progress(pair, row, count, result)
        if after_pair is not None:
            after_pair(pair, results)
        pair += 1
    return results


# --------------------------------------------------------------------------- statistics and checks


@dataclass(frozen=True)
class Summary:
    """Mean, standard error of the mean (sd / sqrt(n); nan for n < 2) and median of ``n`` values."""

    n: int
    mean: float
    se: float
    median: float


def summarize(values: Iterable[float | None]) -> Summary:
    """Summary of the values that are not None (nan fields when there are none)."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return Summary(0, math.nan, math.nan, math.nan)
    se = statistics.stdev(kept) / math.sqrt(len(kept)) if len(kept) > 1 else math.nan
    return Summary(len(kept), statistics.fmean(kept), se, statistics.median(kept))


def paired(results: dict[Cell, list[EditResult]], a: Cell, b: Cell) -> tuple[list[EditResult], list[EditResult]]:
    """The edits of cells ``a`` and ``b`` on the pairs both ran, matched by pair index."""
    by_pair = {e.pair: e for e in results.get(b, [])}
    common = [e for e in results.get(a, []) if e.pair in by_pair]
    return common, [by_pair[e.pair] for e in common]


@dataclass
class Check:
    """One verdict line. ``passed`` is None when the rows it needs were not run."""

    name: str
    points: int
    value: float
    se: float
    threshold: float
    passed: bool | None
    detail: str


def ratio_check(results: dict[Cell, list[EditResult]]) -> Check:
    """Check 1: MD(fast) / MD(no edit) at 1 point over the fast row's pairs <= RATIO_TARGET.

    SE of the ratio of means R = mean(a) / mean(b) over paired values: sd(a - R b) / (sqrt(n) mean(b))
    (first-order delta method)."""
    name = "MD(fast) / MD(no edit)"
    edits = results.get((FAST_ROW, 1), [])
    if not edits:
        return Check(name, 1, math.nan, math.nan, RATIO_TARGET, None, "not run (needs the fast row at 1 point)")
    after = np.array([e.distance_after for e in edits])
    before = np.array([e.distance_before for e in edits])
    ratio = float(after.mean() / before.mean())
    se = (float(np.std(after - ratio * before, ddof=1) / (math.sqrt(len(edits)) * before.mean()))
          if len(edits) > 1 else math.nan)
    detail = (f"{after.mean():.2f} / {before.mean():.2f} px over {len(edits)} pairs; target <= {RATIO_TARGET} "
              f"(paper 2.44 / 12.93 = {PAPER_RATIO:.2f})")
    return Check(name, 1, ratio, se, RATIO_TARGET, ratio <= RATIO_TARGET, detail)


def difference(results: dict[Cell, list[EditResult]], row: str, other: str, count: int) -> tuple[int, float, float]:
    """``(n, mean, se)`` of the per-pair MD difference ``row - other`` at ``count`` points on shared pairs."""
    a, b = paired(results, (row, count), (other, count))
    s = summarize([x.distance_after - y.distance_after for x, y in zip(a, b)])
    return s.n, s.mean, s.se


def reference_checks(results: dict[Cell, list[EditResult]], point_counts: Sequence[int]) -> list[Check]:
    """Check 2 per point count: |MD(fast) - MD(reference)| <= max(0.5 px, SE of the paired difference)."""
    checks = []
    for count in point_counts:
        n, mean, se = difference(results, FAST_ROW, "reference", count)
        name = "|MD(fast) - MD(reference)|"
        if n == 0:
            checks.append(Check(name, count, math.nan, math.nan, MD_TOLERANCE_PX, None,
                                "not run (needs the fast and reference rows)"))
            continue
        threshold = max(MD_TOLERANCE_PX, se) if not math.isnan(se) else MD_TOLERANCE_PX
        checks.append(Check(name, count, abs(mean), se, threshold, abs(mean) <= threshold,
                            f"fast - reference = {mean:+.2f} ± {se:.2f} px over {n} shared pairs; "
                            f"tolerance max({MD_TOLERANCE_PX}, SE) = {threshold:.2f}"))
    return checks


def schedule_comparison(results: dict[Cell, list[EditResult]], point_counts: Sequence[int]) -> list[Check]:
    """Does ``fast sched`` help over ``fast``, per point count, on shared pairs? ``value`` = median steps
    ratio sched / fast; helps = fewer median steps with |ΔMD| <= max(0.5, SE), or ΔMD < -max(0.5, SE)."""
    checks = []
    for count in point_counts:
        a, b = paired(results, ("fast sched", count), (FAST_ROW, count))
        if not a:
            continue
        n, mean, se = difference(results, "fast sched", FAST_ROW, count)
        tolerance = max(MD_TOLERANCE_PX, se) if not math.isnan(se) else MD_TOLERANCE_PX
        steps_sched = statistics.median(e.steps for e in a)
        steps_fast = statistics.median(e.steps for e in b)
        seconds_sched = statistics.median(e.seconds for e in a)
        seconds_fast = statistics.median(e.seconds for e in b)
        fewer = steps_sched < steps_fast
        helps = (fewer and abs(mean) <= tolerance) or mean < -tolerance
        ratio = steps_sched / steps_fast if steps_fast else math.nan
        checks.append(Check(
            "lr schedule helps", count, ratio, se, tolerance, helps,
            f"median steps {steps_sched:g} vs {steps_fast:g} (converged {sum(e.converged for e in a)} vs "
            f"{sum(e.converged for e in b)} of {n}), median s/edit {seconds_sched:.2f} vs {seconds_fast:.2f}, "
            f"MD sched - fast = {mean:+.2f} ± {se:.2f} px"))
    return checks


# --------------------------------------------------------------------------- output


def _fmt(value: float, se: float | None = None, digits: int = 2) -> str:
    if math.isnan(value):
        return "-"
    if se is None or math.isnan(se):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def row_summary(results: dict[Cell, list[EditResult]], cell: Cell) -> dict[str, Any]:
    """The figures of one table row (JSON-ready: nan -> None happens in :func:`to_json`)."""
    edits = results[cell]
    md = summarize(e.distance_after for e in edits)
    before = summarize(e.distance_before for e in edits)
    edited = cell[0] != NO_EDIT
    return {
        "row": cell[0], "points": cell[1], "pairs": len(edits),
        "md": asdict(md), "md_no_edit_same_pairs": asdict(before),
        "ratio_to_no_edit": md.mean / before.mean if before.mean else math.nan,
        "outside_keypoints_moved": asdict(summarize(e.outside_moved for e in edits)) if edited else None,
        "outside_pixels": asdict(summarize(e.outside_pixels for e in edits)) if edited else None,
        "steps": asdict(summarize(e.steps for e in edits)) if edited else None,
        "converged": sum(e.converged for e in edits) if edited else None,
        "seconds": asdict(summarize(e.seconds for e in edits)) if edited else None,
    }


def ordered_cells(results: dict[Cell, list[EditResult]], point_counts: Sequence[int],
                  rows: Sequence[str]) -> list[Cell]:
    """Table order: per point count (``point_counts`` first, then any other count in ``results``),
    ``no edit`` then ``rows`` as given; cells not run are left out."""
    present = sorted({count for _, count in results})
    counts = [c for c in point_counts if c in present] + [c for c in present if c not in point_counts]
    return [(row, count) for count in counts for row in [NO_EDIT, *rows] if (row, count) in results]


def format_table(results: dict[Cell, list[EditResult]], point_counts: Sequence[int], rows: Sequence[str]) -> str:
    """The Table-1-style table as Markdown (readable as plain text too)."""
    header = ("| row | points | pairs | MD px (± SE) | MD / no edit | median steps | converged | median s/edit "
              "| keypoints outside moved px | pixels outside changed (0-255) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for cell in ordered_cells(results, point_counts, rows):
        s = row_summary(results, cell)
        md = s["md"]
        if cell[0] == NO_EDIT:
            lines.append(f"| {cell[0]} | {cell[1]} | {s['pairs']} | {_fmt(md['mean'], md['se'])} | 1.00 "
                         "| - | - | - | - | - |")
            continue
        steps, seconds = s["steps"], s["seconds"]
        kp, px = s["outside_keypoints_moved"], s["outside_pixels"]
        lines.append(f"| {cell[0]} | {cell[1]} | {s['pairs']} | {_fmt(md['mean'], md['se'])} "
                     f"| {_fmt(s['ratio_to_no_edit'])} | {_fmt(steps['median'], digits=0)} "
                     f"| {s['converged']}/{s['pairs']} | {_fmt(seconds['median'])} "
                     f"| {_fmt(kp['mean'], kp['se'])} | {_fmt(px['mean'], px['se'])} |")
    return "\n".join(lines)


def verdict(check: Check) -> str:
    return "n/a" if check.passed is None else ("PASS" if check.passed else "FAIL")


def format_checks(checks: Sequence[Check], schedule: Sequence[Check] = ()) -> str:
    """The verdict lines (Markdown list)."""
    lines = []
    for c in checks:
        value = _fmt(c.value, c.se)
        lines.append(f"- **{verdict(c)}** {c.name}, {c.points} pt: {value} (threshold {c.threshold:.2f}) — {c.detail}")
    for c in schedule:
        word = "helps" if c.passed else "does not help"
        lines.append(f"- lr schedule, {c.points} pt: **{word}** — {c.detail}")
    return "\n".join(lines)


def time_summary(results: dict[Cell, list[EditResult]], point_counts: Sequence[int]) -> str:
    """Time per edit, reference vs fast (median steps and median wall time over the pairs both ran), per
    point count."""
    lines = []
    for count in point_counts:
        # on the pairs both ran: the fast row's extra pairs would compare other drags
        fast, ref = paired(results, (FAST_ROW, count), ("reference", count))
        if not ref:
            continue
        ref_s, fast_s = statistics.median(e.seconds for e in ref), statistics.median(e.seconds for e in fast)
        lines.append(f"- time per edit, {count} pt: reference {statistics.median(e.steps for e in ref):g} steps / "
                     f"{ref_s:.2f} s ({len(ref)} pairs), fast {statistics.median(e.steps for e in fast):g} steps / "
                     f"{fast_s:.2f} s ({len(fast)} pairs), medians; fast is {ref_s / fast_s:.2f}x")
    return "\n".join(lines)


def report(results: dict[Cell, list[EditResult]], point_counts: Sequence[int], rows: Sequence[str],
           config: dict[str, Any] | None = None) -> str:
    """The whole Markdown report: config line, table, checks, time per edit, legend."""
    counts = list(dict.fromkeys(count for _, count in ordered_cells(results, point_counts, rows)))
    parts = []
    if config:
        # hashes shortened to 12 hex digits here (the JSON keeps them whole)
        parts.append("fidelity: " + ", ".join(f"{k} {str(v)[:12] if k.endswith('sha256') else v}"
                                              for k, v in config.items()))
        parts.append("")
    parts.append(format_table(results, counts, rows))
    parts.append("")
    parts.append(format_checks([ratio_check(results), *reference_checks(results, counts)],
                               schedule_comparison(results, counts)))
    times = time_summary(results, counts)
    if times:
        parts.append(times)
    parts.append("")
    parts.append("MD: mean distance (px) between the dragged keypoints, detected after the drag, and their targets "
                 "(the other image's keypoints), mean ± standard error over pairs; steps: Adam updates (an edit that "
                 "never converged counts max_steps); outside: the box around handles and targets grown by the "
                 "mask margin (the fast mask row's editable region), keypoints displacement and mean |RGB change|.")
    return "\n".join(parts)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def to_json(results: dict[Cell, list[EditResult]], point_counts: Sequence[int], rows: Sequence[str],
            config: dict[str, Any] | None = None, complete: bool = True) -> dict[str, Any]:
    """Everything as one JSON-ready dict: config, row summaries, checks, and every edit (nan -> null)."""
    counts = sorted({count for _, count in results})
    return _json_safe({
        "config": dict(config or {}),
        "complete": complete,
        "rows": [row_summary(results, cell) for cell in ordered_cells(results, point_counts, rows)],
        "checks": [asdict(c) | {"verdict": verdict(c)}
                   for c in [ratio_check(results), *reference_checks(results, counts)]],
        "lr_schedule": [asdict(c) for c in schedule_comparison(results, counts)],
        "edits": {f"{row}|{count}": [asdict(e) for e in edits] for (row, count), edits in results.items()},
    })


def load_edits(data: dict[str, Any]) -> dict[Cell, list[EditResult]]:
    """The edits of a :func:`to_json` dict, as :func:`run_fidelity` returns them."""
    edits: dict[Cell, list[EditResult]] = {}
    for key, values in data["edits"].items():
        row, count = key.rsplit("|", 1)
        edits[(row, int(count))] = [EditResult(**value) for value in values]
    return edits


# settings that change what an edit measures: a run is continued only when they are all the same
PROTOCOL_KEYS = ("model_sha256", "detector_sha256", "max_steps", "lr", "r1", "r2", "lr_schedule", "mask_margin",
                 "truncation_psi", "seed", "drag_settings")
PROTOCOL_DEFAULTS = {"drag_settings": "paper"}  # what a run written before the key existed used


def protocol_mismatch(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every protocol setting that differs between two runs' configs."""
    def get(config: dict[str, Any], key: str) -> Any:
        return config.get(key, PROTOCOL_DEFAULTS.get(key))

    return [f"{key}: {get(old, key)!r} -> {get(new, key)!r}" for key in PROTOCOL_KEYS if get(old, key) != get(new, key)]


# --------------------------------------------------------------------------- command line


def parse_points(value: str) -> int | str:
    if value == "all":
        return value
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of points or 'all', got {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 point, got {count}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--detector", type=Path, default=None, help="default: alignment.detector.DEFAULT_PATH")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['pairs_fast']} pairs everywhere, {QUICK['max_steps']} max steps "
                             "(explicit --pairs-*/--max-steps still win)")
    parser.add_argument("--pairs-fast", type=int, default=None,
                        help=f"pairs for the fast row at 1 and 5 points (default {PAIRS_FAST})")
    parser.add_argument("--pairs-other", type=int, default=None,
                        help=f"pairs for every other cell (default {PAIRS_OTHER})")
    parser.add_argument("--pairs", type=int, default=None,
                        help="both pair counts at once (an explicit --pairs-fast / --pairs-other wins)")
    parser.add_argument("--points", type=parse_points, nargs="+", default=[1, 5, "all"],
                        help="numbers of dragged keypoints per edit; 'all' = every keypoint (16)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--max-steps", type=int, default=None, help="default 200 (--quick: 20)")
    parser.add_argument("--lr", type=float, default=DragParams.lr)
    parser.add_argument("--r1", type=float, default=DragParams.r1)
    parser.add_argument("--r2", type=float, default=DragParams.r2)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="warm",
                        help="the fast sched row's schedule (warm: boost x lr at step 0, decaying to lr)")
    parser.add_argument("--drag-settings", choices=["paper", "model"], default="paper",
                        help="every row's engine settings: the official code's (paper), or the server's for this "
                             "model (model: its larger first steps and stop distance, backend/models.py)")
    parser.add_argument("--lr-boost", type=float, default=LR_BOOST)
    parser.add_argument("--lr-half-life", type=float, default=LR_HALF_LIFE, help="steps")
    parser.add_argument("--mask-margin", type=float, default=12.0, help="px")
    parser.add_argument("--truncation-psi", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", type=Path, default=None, help="write the report (table + checks) here")
    parser.add_argument("--json", type=Path, default=None,
                        help="write summaries, checks and every edit here (rewritten after every pair)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the --json file when it exists: its edits are reused (the protocol "
                             "settings must match); also grows a finished run to larger pair counts")
    return parser


def run_settings(args: argparse.Namespace) -> tuple[int, int, int]:
    """``(pairs_fast, pairs_other, max_steps)`` from the command line: explicit values win over
    ``--pairs``, which wins over the ``--quick`` or full-run defaults."""
    defaults = QUICK if args.quick else dict(pairs_fast=PAIRS_FAST, pairs_other=PAIRS_OTHER, max_steps=200)
    pairs_fast = args.pairs_fast if args.pairs_fast is not None else args.pairs
    pairs_other = args.pairs_other if args.pairs_other is not None else args.pairs
    return (defaults["pairs_fast"] if pairs_fast is None else pairs_fast,
            defaults["pairs_other"] if pairs_other is None else pairs_other,
            defaults["max_steps"] if args.max_steps is None else args.max_steps)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    pairs_fast, pairs_other, max_steps = run_settings(args)

    import stylegan2
    from alignment.detector import DEFAULT_PATH, load_detector

    if args.resume and args.json is None:
        raise SystemExit("--resume continues the --json file: give --json")
    torch.set_num_threads(args.threads)
    G = stylegan2.load_generator(args.model)
    detector_path = args.detector or DEFAULT_PATH
    detector = load_detector(detector_path)
    base, drag_settings = base_params(args.drag_settings, args.model, args.lr, args.r1, args.r2)
    schedule = lr_schedule(args.lr_schedule, args.lr, args.lr_boost, args.lr_half_life)
    config: dict[str, Any] = {
        "model": args.model.name, "pairs_fast": pairs_fast, "pairs_other": pairs_other, "max_steps": max_steps,
        "lr": args.lr, "r1": args.r1, "r2": args.r2,
        "lr_schedule": f"{args.lr_schedule} (boost {args.lr_boost}, half-life {args.lr_half_life} steps)",
        "mask_margin": args.mask_margin, "drag_settings": drag_settings, "truncation_psi": args.truncation_psi,
        "seed": args.seed,
        "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
        "model_sha256": sha256_file(args.model), "detector_sha256": sha256_file(detector_path),
    }
    previous = None
    if args.resume and args.json.is_file():
        data = json.loads(args.json.read_text())
        mismatch = protocol_mismatch(data.get("config", {}), config)
        if mismatch:
            raise SystemExit(f"--resume: {args.json} was made with other settings: " + "; ".join(mismatch))
        previous = load_edits(data)
        reused = sum(len(edits) for (row, _), edits in previous.items() if row != NO_EDIT)
        print(f"resuming from {args.json}: up to {reused} edits reused", file=sys.stderr)
    counts = resolve_counts(args.points, 16)  # display order; run_fidelity resolves against the detector

    def progress(pair: int, row: str, count: int, result: EditResult) -> None:
        print(f"pair {pair} {row:<10} {count:>2} pts: {result.distance_before:6.2f} -> {result.distance_after:6.2f} px "
              f"in {result.steps} steps, {result.seconds:.1f} s", file=sys.stderr, flush=True)

    def after_pair(pair: int, results: dict[Cell, list[EditResult]]) -> None:
        if args.json is not None:
            write_json(args.json, to_json(results, counts, args.rows, config, complete=False))

    started = time.perf_counter()
    results = run_fidelity(G, detector, None, args.points, args.rows, max_steps, base=base, seed=args.seed,
                           truncation_psi=args.truncation_psi, mask_margin=args.mask_margin, progress=progress,
                           pairs_fast=pairs_fast, pairs_other=pairs_other, schedule=schedule, after_pair=after_pair,
                           previous=previous)
    config["wall_minutes_this_process"] = round((time.perf_counter() - started) / 60, 1)
    text = report(results, counts, args.rows, config)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    if args.json is not None:
        write_json(args.json, to_json(results, counts, args.rows, config, complete=True))


def base_params(settings: str, model: Path, lr: float, r1: float, r2: float) -> tuple[DragParams, str]:
    """The rows' common engine settings and their description for the config. ``"paper"``: the official
    code's (constant ``lr``, stop within ``max(2 / 512 * H, 2)`` px); ``"model"``: what the server adds
    for this model (``backend.models.model_drag_defaults`` of the file's stem: larger first steps, stop
    distance), so the table measures the edits users get; the ``fast mask`` row keeps the paper's mask
    weight 20 either way (the server's per-model weight is compared with others by
    ``benchmarks/mask_strength.py``)."""
    if settings == "paper":
        return DragParams(lr=lr, r1=r1, r2=r2), "paper"
    if settings != "model":
        raise ValueError(f"drag settings: expected 'paper' or 'model', got {settings!r}")
    from backend.models import model_drag_defaults

    d = model_drag_defaults(Path(model).stem)
    text = (f"model {Path(model).stem}: lr_boost {d.lr_boost:g}, lr_half_life {d.lr_half_life:g}, "
            f"stop_distance {d.stop_distance:g}")
    return DragParams(lr=lr, r1=r1, r2=r2, lr_boost=d.lr_boost, lr_half_life=d.lr_half_life,
                      stop_distance=d.stop_distance), text


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write (a long run's file is never half-written when it is stopped)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
