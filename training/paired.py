"""Drag edits with exact answers: the procedural renderer draws a face before and after a change of one
geometric parameter, so the correct result of dragging the "before" keypoints onto the "after" ones is
known exactly, at any size.

A :class:`PairedCase` is a base parameter vector and the same vector with one geometric parameter
changed (within the training range), plus the keypoints that move (1-4 of them, each at least
``MIN_MOVE_PX`` pixels at 128 px): handles = those keypoints before, targets = after. Cases are drawn
from ``(seed, index)`` alone, so case ``i`` of a seed is the same whatever else is asked for.

*Local* parameters change one feature (mouth, eyes, brows, nose); *global* ones the pose or position
of the whole head. Every case alternates between the two kinds (even index local, odd global) and
cycles through each kind's parameters, so any prefix of cases is balanced.

Also here: what a case's moving parts are (the pixels the change touches, for selections and for
"pixels changed outside"), the *warp only* baseline (the layer's own pixels moved by a smooth
interpolation of handle -> target alone, no model), and the image figures (PSNR, keypoint errors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from training import faces

# (parameter, the keypoints that may serve as handles: the ones it moves)
LOCAL_PARAMETERS: tuple[str, ...] = ("mouth_width", "mouth_open", "smile", "gaze_x", "brow_tilt", "brow_gap",
                                     "mouth_height", "nose_length", "eye_height")
GLOBAL_PARAMETERS: tuple[str, ...] = ("yaw", "pitch", "roll", "head_x", "head_y", "head_size")
KINDS = ("local", "global")

#: A handle must move at least this far (pixels at 128 px), so that a drag is a real request.
MIN_MOVE_PX = 2.0
#: ... and its feature must show: some pixel within ``VISIBLE_RADIUS_PX`` of the handle or of its target
#: changes by more than ``VISIBLE_LEVELS`` (a brow under the fringe or a dark brow on dark skin moves
#: nothing a person could drag).
VISIBLE_RADIUS_PX = 1.5
VISIBLE_LEVELS = 40
#: Global changes are drawn so their largest keypoint move stays a drag a person would make (px at 128).
MAX_GLOBAL_MOVE_PX = 10.0
MAX_HANDLES = 4
BASE_SIZE = 128

#: New content appears (a mouth opens, the far side of a head turns into view).
NEW_CONTENT_PARAMETERS = ("mouth_open", "yaw")


@dataclass(frozen=True)
class PairedCase:
    """One drag with its exact answer. ``before``/``after``: renderer parameters ``[NUM_PARAMS]``;
    ``keypoints``: indices into ``faces.KEYPOINT_NAMES`` of the handles."""

    seed: int
    index: int
    kind: str
    parameter: str
    before: np.ndarray
    after: np.ndarray
    keypoints: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"s{self.seed}-{self.index:03d}-{self.parameter}"

    @property
    def new_content(self) -> bool:
        return self.parameter in NEW_CONTENT_PARAMETERS

    def render(self, size: int = BASE_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """(the picture before, the exact answer), uint8 ``[size, size, 3]`` each."""
        return faces.render(self.before, size)[0], faces.render(self.after, size)[0]

    def points(self, size: int = BASE_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """(handles, targets): float64 ``[N, 2]`` (x, y) pixels at ``size``, pixel-centre convention."""
        _, kb = faces.render(self.before, size)
        _, ka = faces.render(self.after, size)
        idx = list(self.keypoints)
        return kb[idx].astype(np.float64), ka[idx].astype(np.float64)

    def moves(self, size: int = BASE_SIZE) -> np.ndarray:
        """Each handle's distance to its target, pixels at ``size``."""
        h, t = self.points(size)
        return np.hypot(*(t - h).T)

    def moving_parts(self, size: int = BASE_SIZE, grow_px: float | None = None) -> np.ndarray:
        """bool ``[size, size]``: the pixels the change touches (before and exact answer differ by more
        than 8 levels in some channel), grown by ``grow_px`` (default 3 px at 128, scaled)."""
        a, b = self.render(size)
        changed = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > 8
        grow = 3.0 * size / BASE_SIZE if grow_px is None else grow_px
        return grow_mask(changed, grow)

    def selection(self, size: int = BASE_SIZE, margin_px: float | None = None) -> np.ndarray:
        """uint8 ``[size, size]`` (255 = may move): the box around the moving parts and the points, grown by
        ``margin_px`` (default 6 px at 128, scaled), as a person would select the part to edit."""
        moving = self.moving_parts(size)
        h, t = self.points(size)
        pts = np.concatenate([h, t])
        ys, xs = np.nonzero(moving)
        margin = 6.0 * size / BASE_SIZE if margin_px is None else margin_px
        x0 = min(xs.min(), pts[:, 0].min()) - margin
        x1 = max(xs.max(), pts[:, 0].max()) + margin
        y0 = min(ys.min(), pts[:, 1].min()) - margin
        y1 = max(ys.max(), pts[:, 1].max()) + margin
        out = np.zeros((size, size), np.uint8)
        rows = slice(max(0, math.floor(y0)), math.ceil(y1) + 1)
        cols = slice(max(0, math.floor(x0)), math.ceil(x1) + 1)
        out[rows, cols] = 255
        return out


def grow_mask(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """``mask`` grown by ``radius_px`` (a max filter of odd size ``2 * ceil(radius) + 1``)."""
    r = int(math.ceil(radius_px))
    if r <= 0:
        return mask.copy()
    img = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.MaxFilter(2 * r + 1))) > 0


def parameter_index(name: str) -> int:
    return faces.PARAM_NAMES.index(name)


def _moves_at_base(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(keypoints before, after, each one's move in px, whether its change shows), at 128 px."""
    ib, kb = faces.render(before, BASE_SIZE)
    ia, ka = faces.render(after, BASE_SIZE)
    change = np.abs(ib.astype(np.int16) - ia.astype(np.int16)).max(axis=2)
    ys, xs = np.mgrid[0:BASE_SIZE, 0:BASE_SIZE]
    shows = np.zeros(len(kb), bool)
    for i in range(len(kb)):
        near = np.zeros((BASE_SIZE, BASE_SIZE), bool)
        for x, y in (kb[i], ka[i]):
            near |= (xs - x) ** 2 + (ys - y) ** 2 <= VISIBLE_RADIUS_PX ** 2
        shows[i] = bool((change[near] > VISIBLE_LEVELS).any())
    return kb, ka, np.hypot(*(ka - kb).T), shows


def _spread(points: np.ndarray, candidates: list[int], count: int, rng: np.random.Generator) -> list[int]:
    """``count`` of ``candidates`` spread over the face (farthest-point order from a random start)."""
    chosen = [int(rng.choice(candidates))]
    while len(chosen) < count:
        rest = [c for c in candidates if c not in chosen]
        dist = [min(np.hypot(*(points[c] - points[k])) for k in chosen) for c in rest]
        chosen.append(rest[int(np.argmax(dist))])
    return chosen


def make_case(seed: int, index: int, max_tries: int = 200) -> PairedCase:
    """Case ``index`` of ``seed`` (see the module docstring)."""
    kind = KINDS[index % 2]
    names = LOCAL_PARAMETERS if kind == "local" else GLOBAL_PARAMETERS
    parameter = names[(index // 2) % len(names)]
    k = parameter_index(parameter)
    lo, hi = float(faces.PARAM_LOW[k]), float(faces.PARAM_HIGH[k])
    rng = np.random.default_rng([seed, index])
    for _ in range(max_tries):
        before = faces.sample_params(rng, 1)[0]
        after = before.copy()
        if kind == "local":
            # local features move 2-4 px over their whole range at 128: use most of it
            a, b = (lo, hi) if rng.random() < 0.5 else (hi, lo)
            span = rng.uniform(0.8, 1.0)
            before[k] = a + (b - a) * (1 - span) * rng.random()
            after[k] = before[k] + (b - a) * span
            after[k] = min(max(after[k], lo), hi)
        else:
            before[k] = rng.uniform(lo, hi)
            after[k] = rng.uniform(lo, hi)
        kb, ka, move, shows = _moves_at_base(before, after)
        movers = [int(i) for i in np.flatnonzero((move >= MIN_MOVE_PX) & shows)]
        if not movers or (kind == "global" and move.max() > MAX_GLOBAL_MOVE_PX):
            continue
        if kind == "local":
            count = min(len(movers), MAX_HANDLES)
            chosen = sorted(movers, key=lambda i: -move[i])[:count]
        else:
            count = min(len(movers), int(rng.integers(2, MAX_HANDLES + 1)))
            chosen = _spread(kb, movers, count, rng)
        return PairedCase(seed, index, kind, parameter, before, after, tuple(sorted(chosen)))
    raise RuntimeError(f"no case {index} of seed {seed} for {parameter} after {max_tries} tries")


def make_cases(seed: int, count: int) -> list[PairedCase]:
    return [make_case(seed, i) for i in range(count)]


# ------------------------------------------------------------------------------------------- figures


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 pictures of one size (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> ``[size, size, C]``: box filter down, bicubic up (what an editor does)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    method = Image.Resampling.BOX if size < image.shape[0] else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(image).resize((size, size), method))


def mean_change_outside(result: np.ndarray, original: np.ndarray, moving: np.ndarray) -> float:
    """Mean absolute RGB change (0..255 levels) of the pixels outside ``moving`` (bool [H, W])."""
    outside = ~moving
    if not outside.any():
        return 0.0
    diff = np.abs(result.astype(np.float64) - original.astype(np.float64)).mean(axis=2)
    return float(diff[outside].mean())


# ----------------------------------------------------------------------------------------- warp only


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r2 > 0, 0.5 * r2 * np.log(r2), 0.0)


def warp_only(image: np.ndarray, handles: np.ndarray, targets: np.ndarray, kind: str = "rbf",
              radius_factor: float = 2.0, anchors_per_side: int = 8) -> np.ndarray:
    """The baseline without a model: ``image`` (uint8 [H, W, 3]) resampled so that the content at each
    handle lands exactly on its target (points: (x, y) pixels in ``image``), bilinear sampling.

    ``kind="rbf"`` (default): a local warp, as a liquify brush: Gaussian radial basis functions at the
    targets, width ``radius_factor`` times the longest move, solved so each target samples its handle;
    the picture away from the points stays still. ``kind="tps"``: a thin-plate spline through the pairs
    with the layer's border held still (``anchors_per_side`` fixed points a side), which bends the
    whole face."""
    H, W = image.shape[:2]
    t = np.asarray(targets, np.float64).reshape(-1, 2)
    h = np.asarray(handles, np.float64).reshape(-1, 2)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    if kind == "rbf":
        sigma = max(radius_factor * float(np.hypot(*(h - t).T).max()), 1.0)
        gram = np.exp(-((t[:, None] - t[None]) ** 2).sum(-1) / (2 * sigma ** 2))
        coef = np.linalg.solve(gram + 1e-9 * np.eye(len(t)), h - t)
        offset_x = np.zeros((H, W))
        offset_y = np.zeros((H, W))
        for (cx, cy), (ax, ay) in zip(t, coef):
            g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
            offset_x += ax * g
            offset_y += ay * g
        return bilinear_sample(image, xs + offset_x, ys + offset_y)
    if kind != "tps":
        raise ValueError(f"kind must be 'rbf' or 'tps', got {kind!r}")
    border = []
    for s in np.linspace(0, 1, anchors_per_side, endpoint=False):
        border += [(s * (W - 1), 0.0), ((W - 1), s * (H - 1)), ((1 - s) * (W - 1), H - 1.0), (0.0, (1 - s) * (H - 1))]
    ctrl = np.concatenate([t, np.array(border)])
    disp = np.concatenate([h - t, np.zeros((len(border), 2))])  # backward map: output -> source offset
    n = len(ctrl)
    scale = max(H, W)
    c = ctrl / scale
    K = _tps_kernel(((c[:, None] - c[None]) ** 2).sum(-1))
    P = np.concatenate([np.ones((n, 1)), c], axis=1)
    A = np.zeros((n + 3, n + 3))
    A[:n, :n] = K + 1e-9 * np.eye(n)
    A[:n, n:] = P
    A[n:, :n] = P.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = disp
    coef = np.linalg.solve(A, rhs)
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    offset = np.empty_like(grid)
    for start in range(0, len(grid), 65536):  # the kernel matrix in slices: [chunk, n]
        g = grid[start:start + 65536] / scale
        k = _tps_kernel(((g[:, None] - c[None]) ** 2).sum(-1))
        offset[start:start + 65536] = k @ coef[:n] + coef[n] + g @ coef[n + 1:]
    src = grid + offset
    return bilinear_sample(image, src[:, 0].reshape(H, W), src[:, 1].reshape(H, W))


def bilinear_sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``image`` (uint8 [H, W, C]) sampled at float pixel positions ``x``, ``y`` (any equal shape),
    edges clamped; rounded back to uint8."""
    H, W = image.shape[:2]
    x = np.clip(x, 0, W - 1)
    y = np.clip(y, 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2 if W > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2 if H > 1 else 0)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    img = image.astype(np.float64)
    x1 = np.minimum(x0 + 1, W - 1)
    y1 = np.minimum(y0 + 1, H - 1)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)
