"""Procedural stylised faces with exact 2-D keypoints (numpy + Pillow only).

Every image is a deterministic function of a parameter vector ``p`` of length ``NUM_PARAMS``.
Each parameter is sampled as ``lo + (hi - lo) * u`` with ``u ~ U(0, 1)``, so its CDF is known
and ``params_to_z`` maps the sampling distribution exactly onto N(0, 1) per dimension
(``z = Phi^-1(u)``); ``z_to_params`` is the inverse. Discrete choices (hair style) are
quantised uniforms: the parameter stays continuous in ``[0, n_styles)`` and the renderer
uses its integer part, so the mapping stays invertible.

Coordinate convention (images and keypoints alike): pixel ``(row i, column j)`` covers the
area ``[j, j+1) x [i, i+1)``; a keypoint ``(x, y)`` names the continuous position whose
**pixel centre convention** is ``x = j`` at the centre of column ``j`` (and ``y = i`` at the
centre of row ``i``). So the top-left pixel's centre is ``(0, 0)`` and the image spans
``[-0.5, size - 0.5]`` in both axes. This is the sampling convention of the drag engine and
of ``torch.nn.functional.grid_sample(..., align_corners=True)``.

Geometry: features are placed in a canonical, isotropic face frame ``(u, v)`` (units: half the
face width; ``u`` to the image right, ``v`` down; the head spans ``u in [-1, 1]`` and
``v in [-aspect, aspect]``), each point with a depth on a rounded face surface. A point is
projected by a yaw/pitch rotation (so features slide and foreshorten as the head turns), then
scaled, rolled and translated into image pixels (``_Pose.project``). Keypoints are computed with
the same projection from the same parameters as the shapes that draw them; each keypoint is a
vertex of a drawn polygon (eye and mouth corners, lip centres, brow ends, chin) or the centre
of a drawn ellipse (pupils, nose tip). Shapes are rasterised with Pillow on a canvas
``SUPERSAMPLE`` times larger and box-filtered down, so edges are anti-aliased; Pillow rounds
polygon vertices to the super-sampled grid, so a drawn feature sits within
``0.5 / SUPERSAMPLE`` px of its keypoint.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from alignment.procedural_faces import KEYPOINT_NAMES as KEYPOINT_NAMES  # part of this module's API
from alignment.procedural_faces import NUM_KEYPOINTS

SUPERSAMPLE = 4
N_HAIR_STYLES = 5
HAIR_STYLE_NAMES = ["short", "long", "bob", "curly", "bun"]

# (name, low, high): every parameter is low + (high - low) * u with u ~ U(0, 1).
_PARAM_SPECS: list[tuple[str, float, float]] = [
    ("head_x", 0.46, 0.54),  # head centre x, fraction of the image width
    ("head_y", 0.47, 0.53),  # head centre y, fraction of the image height
    ("head_size", 0.225, 0.265),  # half face width, fraction of the image size
    ("face_aspect", 1.15, 1.36),  # half face height / half face width
    ("jaw_shape", 1.7, 3.0),  # superellipse exponent of the jaw: low = pointed chin, high = square
    ("yaw", -0.42, 0.42),  # radians, head turn (features slide sideways)
    ("pitch", -0.22, 0.22),  # radians, head tilt (features slide up/down)
    ("roll", -0.26, 0.26),  # radians, in-plane rotation
    ("eye_height", -0.08, 0.1),  # eye line v, fraction of aspect
    ("eye_spacing", 0.34, 0.45),  # eye centre |u|
    ("eye_size", 0.16, 0.22),  # eye half width (u units)
    ("eye_open", 0.5, 1.0),  # eye opening, fraction of the largest
    ("eye_tilt", -0.04, 0.06),  # outer corner raised by this (u units)
    ("gaze_x", -1.0, 1.0),
    ("gaze_y", -1.0, 1.0),
    ("iris_colour", 0.0, 1.0),  # along a palette blue -> green -> hazel -> brown
    ("brow_gap", 0.12, 0.22),  # brow centre line above the eye line (u units)
    ("brow_tilt", -0.07, 0.07),  # inner end raised (+) or lowered (-)
    ("brow_thickness", 0.045, 0.075),
    ("nose_length", 0.3, 0.44),  # nose tip v, fraction of aspect
    ("nose_size", 0.075, 0.115),
    ("mouth_height", 0.58, 0.7),  # mouth line v, fraction of aspect
    ("mouth_width", 0.24, 0.38),  # half width (u units)
    ("mouth_open", 0.0, 1.0),  # <= 0.45 closed, then opening grows
    ("smile", -0.35, 1.0),  # corners lifted (+) or lowered (-)
    ("lip_thickness", 0.04, 0.085),
    ("lip_colour", 0.0, 1.0),
    ("skin_tone", 0.0, 1.0),  # along a palette light -> dark
    ("blush", 0.0, 1.0),
    ("hair_style", 0.0, float(N_HAIR_STYLES)),  # integer part picks HAIR_STYLE_NAMES
    ("hair_colour", 0.0, 1.0),  # along a palette black -> brown -> auburn -> blonde -> grey
    ("hair_volume", 0.0, 1.0),
    ("hairline", 0.0, 1.0),  # forehead height
    ("ear_size", 0.8, 1.2),
    ("light_angle", -math.pi, math.pi),  # direction the light comes from, radians (0 = from the right)
    ("light_strength", 0.06, 0.26),
    ("background_hue", 0.0, 1.0),
    ("background_tone", 0.0, 1.0),
    ("shirt_hue", 0.0, 1.0),
    ("shirt_tone", 0.0, 1.0),
]

PARAM_NAMES: list[str] = [s[0] for s in _PARAM_SPECS]
NUM_PARAMS: int = len(PARAM_NAMES)
PARAM_LOW = np.array([s[1] for s in _PARAM_SPECS], dtype=np.float64)
PARAM_HIGH = np.array([s[2] for s in _PARAM_SPECS], dtype=np.float64)
_IDX = {name: i for i, name in enumerate(PARAM_NAMES)}

# The keypoint names (and their order) are alignment.procedural_faces' (the run time needs them).

# Palettes, interpolated piecewise-linearly by a parameter in [0, 1].
_SKIN = np.array(
    [[255, 226, 204], [246, 204, 175], [234, 184, 148], [210, 152, 112], [172, 114, 80], [124, 80, 56]],
    dtype=np.float64,
)
_HAIR = np.array(
    [[32, 26, 26], [66, 44, 32], [112, 72, 42], [150, 74, 38], [196, 120, 62], [226, 190, 120],
     [236, 224, 196], [168, 166, 170]],
    dtype=np.float64,
)
_IRIS = np.array(
    [[64, 122, 196], [104, 146, 170], [84, 150, 96], [138, 122, 62], [112, 70, 38], [62, 40, 28]],
    dtype=np.float64,
)
_LIPS = np.array([[214, 112, 112], [196, 92, 104], [178, 96, 86], [226, 128, 130]], dtype=np.float64)


def _palette(table: np.ndarray, t: float) -> np.ndarray:
    t = min(max(t, 0.0), 1.0) * (len(table) - 1)
    i = min(int(t), len(table) - 2)
    f = t - i
    return table[i] * (1.0 - f) + table[i + 1] * f


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    h = (h % 1.0) * 6.0
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(np.round(c), 0, 255).astype(int)
    return int(c[0]), int(c[1]), int(c[2])


# ----------------------------------------------------------------------------- sampling / codes


def sample_params(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` parameter vectors: float64 ``[n, NUM_PARAMS]``, each ``low + (high - low) * u``."""
    u = rng.random((int(n), NUM_PARAMS))
    return PARAM_LOW + (PARAM_HIGH - PARAM_LOW) * u


_ACKLAM_A = [-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
             -3.066479806614716e01, 2.506628277459239e00]
_ACKLAM_B = [-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
             -1.328068155288572e01]
_ACKLAM_C = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
             4.374664141464968e00, 2.938163982698783e00]
_ACKLAM_D = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00]

_erfc = np.frompyfunc(math.erfc, 1, 1)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * _erfc(-np.asarray(z, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64)


def _norm_ppf(u: np.ndarray) -> np.ndarray:
    """Inverse standard-normal CDF (Acklam's rational approximation + one Halley refinement step)."""
    u = np.asarray(u, dtype=np.float64)
    a, b, c, d = _ACKLAM_A, _ACKLAM_B, _ACKLAM_C, _ACKLAM_D
    z = np.empty_like(u)
    low, high = u < 0.02425, u > 1 - 0.02425
    mid = ~(low | high)
    q = u[mid] - 0.5
    r = q * q
    z[mid] = ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
              / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1))
    for sel, sign, uu in ((low, 1.0, u[low]), (high, -1.0, 1 - u[high])):
        q = np.sqrt(-2 * np.log(uu))
        z[sel] = sign * (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    e = _norm_cdf(z) - u
    step = e * math.sqrt(2 * math.pi) * np.exp(z * z / 2)
    return z - step / (1 + z * step / 2)


_U_EPS = 1e-7  # keeps z finite (|z| <= 5.2) for u at the very ends of [0, 1]


def params_to_z(p: np.ndarray) -> np.ndarray:
    """Standard-normal code of parameters: ``[n, NUM_PARAMS]`` -> float32 ``[n, NUM_PARAMS]``.

    ``z = Phi^-1((p - low) / (high - low))``: the training distribution maps exactly onto N(0, I).
    """
    p = _check_params(p)
    u = np.clip((p - PARAM_LOW) / (PARAM_HIGH - PARAM_LOW), _U_EPS, 1 - _U_EPS)
    return _norm_ppf(u).astype(np.float32)


def z_to_params(z: np.ndarray) -> np.ndarray:
    """Inverse of ``params_to_z``: ``[n, NUM_PARAMS]`` -> float64 params (clipped to the valid range)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != NUM_PARAMS:
        raise ValueError(f"z must have shape [n, {NUM_PARAMS}], got {list(z.shape)}")
    if not np.all(np.isfinite(z)):
        raise ValueError("z contains NaN or inf")
    u = np.clip(_norm_cdf(z), 0.0, 1.0)
    return np.clip(PARAM_LOW + (PARAM_HIGH - PARAM_LOW) * u, PARAM_LOW, PARAM_HIGH)


def _check_params(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != NUM_PARAMS:
        raise ValueError(f"params must have shape [n, {NUM_PARAMS}], got {list(p.shape)}")
    if not np.all(np.isfinite(p)):
        raise ValueError("params contain NaN or inf")
    return p


# ----------------------------------------------------------------------------- geometry


class _Pose:
    """Canonical face frame -> image pixels (pixel-centre convention, see module docstring)."""

    def __init__(self, cx: float, cy: float, scale: float, yaw: float, pitch: float, roll: float,
                 aspect: float):
        self.cx, self.cy, self.scale, self.aspect = cx, cy, scale, aspect
        self.cyaw, self.syaw = math.cos(yaw), math.sin(yaw)
        self.cpitch, self.spitch = math.cos(pitch), math.sin(pitch)
        self.croll, self.sroll = math.cos(roll), math.sin(roll)

    def surface_depth(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Depth (toward the viewer, u units) of the rounded face surface at (u, v)."""
        r = 1.0 - (np.asarray(u) / 1.08) ** 2 - (np.asarray(v) / (1.35 * self.aspect)) ** 2
        return 0.85 * np.sqrt(np.maximum(r, 0.0))

    def _depth1(self, u: float, v: float) -> float:
        r = 1.0 - (u / 1.08) ** 2 - (v / (1.35 * self.aspect)) ** 2
        return 0.85 * math.sqrt(r) if r > 0 else 0.0

    def project1(self, u: float, v: float, depth: float | None = None) -> tuple[float, float]:
        """Scalar ``project`` (same arithmetic)."""
        d = self._depth1(u, v) if depth is None else depth
        px = self.scale * (u * self.cyaw + d * self.syaw)
        py = self.scale * (v * self.cpitch + d * self.spitch)
        return self.cx + self.croll * px - self.sroll * py, self.cy + self.sroll * px + self.croll * py

    def project(self, u: np.ndarray, v: np.ndarray, depth: np.ndarray | float | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        d = self.surface_depth(u, v) if depth is None else np.asarray(depth, dtype=np.float64)
        xf = u * self.cyaw + d * self.syaw
        yf = v * self.cpitch + d * self.spitch
        px, py = self.scale * xf, self.scale * yf
        return self.cx + self.croll * px - self.sroll * py, self.cy + self.sroll * px + self.croll * py

    def project_ellipse(self, cu: float, cv: float, ru: float, rv: float, depth: float | None = None,
                        n: int = 28, angle: float = 0.0) -> tuple[np.ndarray, np.ndarray, float, float]:
        """An ellipse of radii (ru, rv) on the surface at (cu, cv), mapped by the projection's local
        affine map so that its drawn centre is exactly the projected centre. Returns xs, ys, cx, cy."""
        # the projection is linear in (u, v, depth): J = d(x, y)/d(u, v) along the surface (or at a
        # fixed depth when one is given)
        if depth is None:
            d0 = self._depth1(cu, cv)
            h = 1e-5
            dd_du = (self._depth1(cu + h, cv) - self._depth1(cu - h, cv)) / (2 * h)
            dd_dv = (self._depth1(cu, cv + h) - self._depth1(cu, cv - h)) / (2 * h)
        else:
            d0, dd_du, dd_dv = depth, 0.0, 0.0
        x0, y0 = self.project1(cu, cv, d0)
        s, cr, sr = self.scale, self.croll, self.sroll
        # d(xf, yf)/du and /dv
        xfu, yfu = self.cyaw + dd_du * self.syaw, dd_du * self.spitch
        xfv, yfv = dd_dv * self.syaw, self.cpitch + dd_dv * self.spitch
        j = s * np.array([[cr * xfu - sr * yfu, cr * xfv - sr * yfv],
                          [sr * xfu + cr * yfu, sr * xfv + cr * yfv]], dtype=np.float64)
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        ca, sa = math.cos(angle), math.sin(angle)
        eu, ev = ru * np.cos(t), rv * np.sin(t)
        local = np.stack([ca * eu - sa * ev, sa * eu + ca * ev])
        off = j @ local
        return x0 + off[0], y0 + off[1], float(x0), float(y0)


def _bezier(p0: np.ndarray, mid: np.ndarray, p2: np.ndarray, n: int) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 passing through ``mid`` at t = 0.5: [n, 2]; mid is point n//2
    when n is odd (exactly)."""
    ctrl = 2 * mid - (p0 + p2) / 2
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t * t * p2


# ----------------------------------------------------------------------------- rasterisation


class _Canvas:
    """A super-sampled Pillow canvas addressed in final-image pixel coordinates (centre convention)."""

    def __init__(self, size: int, background: Image.Image):
        self.size, self.ss = size, SUPERSAMPLE
        self.img = background
        self.draw = ImageDraw.Draw(self.img)

    def to_ss(self, xs: np.ndarray, ys: np.ndarray) -> list[tuple[int, int]]:
        # final centre x = j  <->  super-sampled centres ss*j .. ss*j + ss-1, mean ss*j + (ss-1)/2;
        # Pillow fills the pixels whose integer centres lie inside, with vertices rounded: round here.
        s = self.ss
        xi = np.floor(np.asarray(xs) * s + (s - 1) / 2 + 0.5).astype(np.int64)
        yi = np.floor(np.asarray(ys) * s + (s - 1) / 2 + 0.5).astype(np.int64)
        return list(zip(xi.tolist(), yi.tolist()))

    def poly(self, xs: np.ndarray, ys: np.ndarray, colour: np.ndarray | tuple[int, int, int],
             draw: ImageDraw.ImageDraw | None = None, offset: tuple[int, int] = (0, 0)) -> None:
        pts = self.to_ss(xs, ys)
        if offset != (0, 0):
            pts = [(x - offset[0], y - offset[1]) for x, y in pts]
        fill = colour if isinstance(colour, tuple) else _rgb(colour)
        (draw or self.draw).polygon(pts, fill=fill)

    def line(self, xs: np.ndarray, ys: np.ndarray, colour: np.ndarray, width_px: float) -> None:
        w = max(1, int(round(width_px * self.ss)))
        self.draw.line(self.to_ss(xs, ys), fill=_rgb(colour), width=w, joint="curve")

    def clipped(self, clip_xs: np.ndarray, clip_ys: np.ndarray,
                paint: Callable[[ImageDraw.ImageDraw, tuple[int, int]], None]) -> None:
        """Run ``paint(draw, offset)`` on a patch and paste it back only inside the clip polygon."""
        pts = self.to_ss(clip_xs, clip_ys)
        x0 = max(min(p[0] for p in pts) - 1, 0)
        y0 = max(min(p[1] for p in pts) - 1, 0)
        x1 = min(max(p[0] for p in pts) + 2, self.img.width)
        y1 = min(max(p[1] for p in pts) + 2, self.img.height)
        if x1 <= x0 or y1 <= y0:
            return
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in pts], fill=255)
        patch = self.img.crop((x0, y0, x1, y1))
        paint(ImageDraw.Draw(patch), (x0, y0))
        self.img.paste(patch, (x0, y0), mask)


# ----------------------------------------------------------------------------- the face


def _shade(c: np.ndarray, k: float) -> np.ndarray:
    return np.clip(c * k, 0, 255)


def _mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a * (1 - t) + b * t


def render(p_row: np.ndarray, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Render one face: ``p_row`` float ``[NUM_PARAMS]`` -> (uint8 ``[size, size, 3]`` RGB,
    float32 ``[NUM_KEYPOINTS, 2]`` keypoints as (x, y) pixels, pixel-centre convention)."""
    p_row = np.asarray(p_row, dtype=np.float64)
    if p_row.shape != (NUM_PARAMS,):
        raise ValueError(f"p_row must have shape [{NUM_PARAMS}], got {list(p_row.shape)}")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    img, kps, _ = _render(_check_params(p_row[None])[0], int(size))
    return img, kps


def render_batch(p: np.ndarray, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Render ``[n, NUM_PARAMS]`` params -> (uint8 ``[n, size, size, 3]``, float32 ``[n, K, 2]`` (x, y))."""
    p = _check_params(p)
    imgs = np.empty((len(p), size, size, 3), dtype=np.uint8)
    kps = np.empty((len(p), NUM_KEYPOINTS, 2), dtype=np.float32)
    for i, row in enumerate(p):
        imgs[i], kps[i] = render(row, size)
    return imgs, kps


def dataset(seed: int, n: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic dataset: ``n`` faces from ``np.random.default_rng(seed)``:
    (uint8 ``[n, size, size, 3]``, float32 ``[n, K, 2]`` (x, y) pixels)."""
    return render_batch(sample_params(np.random.default_rng(seed), n), size)


def _render(p_row: np.ndarray, size: int, debug_colours: dict[str, tuple[int, int, int]] | None = None
            ) -> tuple[np.ndarray, np.ndarray, _Pose]:
    """The renderer. ``debug_colours`` (tests) overrides the colour of named parts with flat colours
    and turns off lighting/blush so parts can be located exactly."""
    P = {name: float(p_row[i]) for i, name in enumerate(PARAM_NAMES)}
    dbg = debug_colours or {}
    S = SUPERSAMPLE
    aspect = P["face_aspect"]
    a = P["head_size"] * size
    pose = _Pose(P["head_x"] * size - 0.5, P["head_y"] * size - 0.5, a, P["yaw"], P["pitch"], P["roll"],
                 aspect)
    kp = np.zeros((NUM_KEYPOINTS, 2), dtype=np.float64)

    # --- colours
    skin = _palette(_SKIN, P["skin_tone"])
    hair = _palette(_HAIR, P["hair_colour"])
    iris = _palette(_IRIS, P["iris_colour"])
    lips = _mix(_palette(_LIPS, P["lip_colour"]), skin, 0.35)
    bg_hue = P["background_hue"]
    bg_top = _hsv(bg_hue, 0.18 + 0.22 * P["background_tone"], 0.97 - 0.12 * P["background_tone"])
    bg_bottom = _hsv(bg_hue + 0.04, 0.28 + 0.25 * P["background_tone"], 0.82 - 0.2 * P["background_tone"])
    shirt = _hsv(P["shirt_hue"], 0.35 + 0.35 * P["shirt_tone"], 0.85 - 0.45 * P["shirt_tone"])
    brow_colour = _shade(hair, 0.72) if P["hair_colour"] < 0.75 else _mix(hair, np.array([90, 70, 55.0]), 0.5)
    col = {
        "skin": skin, "ear": _shade(skin, 0.96), "neck": _shade(skin, 0.82), "hair": hair,
        "brow": brow_colour, "eye_white": np.array([250, 250, 248.0]), "iris": iris,
        "pupil": np.array([18, 16, 20.0]), "lips": lips, "mouth": np.array([92, 30, 40.0]),
        "teeth": np.array([246, 244, 238.0]), "nose": _shade(skin, 0.88), "nostril": _shade(skin, 0.45),
        "lid": _shade(skin, 0.38) * 0.6, "shirt": shirt,
    }
    if dbg:  # flat colours: every part black unless named, so a part's coverage can be measured
        col = {k: np.array(dbg.get(k, (0, 0, 0)), dtype=np.float64) for k in col}
    if dbg:
        bg_top = bg_bottom = np.array(dbg.get("background", (0, 0, 0)), dtype=np.float64)

    # --- background: vertical gradient at super-sampled resolution
    ss_size = size * S
    t = np.linspace(0.0, 1.0, ss_size)[:, None]
    column = np.clip(np.round(bg_top * (1 - t) + bg_bottom * t), 0, 255).astype(np.uint8)
    bg = Image.fromarray(np.ascontiguousarray(column[:, None, :]), "RGB").resize((ss_size, ss_size),
                                                                               Image.Resampling.NEAREST)
    cv = _Canvas(size, bg)

    style = min(int(P["hair_style"]), N_HAIR_STYLES - 1)
    vol = P["hair_volume"]
    ev = P["eye_height"] * aspect
    es, ew = P["eye_spacing"], P["eye_size"]

    # --- shirt and shoulders (not rolled: the head rolls on the neck)
    base_x = P["head_x"] * size - 0.5
    chin_y = pose.cy + a * aspect
    sy = min(chin_y + 0.35 * a, size - 0.12 * size)
    sw = 1.85 * a
    top = np.array([base_x, sy])
    left = np.array([base_x - sw, sy + 0.55 * a])
    right = np.array([base_x + sw, sy + 0.55 * a])
    arc_l = _bezier(left, np.array([base_x - 0.75 * sw, sy + 0.08 * a]), top, 9)
    arc_r = _bezier(top, np.array([base_x + 0.75 * sw, sy + 0.08 * a]), right, 9)
    sh = np.concatenate([[[base_x - sw * 1.1, size + 4]], arc_l, arc_r, [[base_x + sw * 1.1, size + 4]]])
    # back hair first when it falls on the shoulders
    if style in (1, 2):
        _back_hair(cv, pose, style, vol, col["hair"], aspect)
    cv.poly(sh[:, 0], sh[:, 1], col["shirt"])

    # --- neck: from under the jaw (moves with the head) to the collar (fixed)
    nx_top, ny_top = pose.project(np.array([-0.42, 0.42]), np.array([0.55, 0.55]) * aspect, 0.0)
    neck_w = 0.44 * a
    collar = _bezier(np.array([base_x - neck_w, sy + 0.1 * a]), np.array([base_x, sy + 0.42 * a]),
                     np.array([base_x + neck_w, sy + 0.1 * a]), 9)
    neck = np.concatenate([[[nx_top[0], ny_top[0]]], collar, [[nx_top[1], ny_top[1]]]])
    cv.poly(neck[:, 0], neck[:, 1], col["neck"])

    # --- ears: at the sides, behind the face plane (the far ear hides as the head turns)
    er = 0.17 * P["ear_size"]
    for side in (-1, 1):
        xs, ys, _, _ = pose.project_ellipse(side * 1.0, ev + 0.16 * aspect, er, er * 1.55, depth=-0.25)
        cv.poly(xs, ys, col["ear"])
        xs, ys, _, _ = pose.project_ellipse(side * 1.03, ev + 0.16 * aspect, er * 0.5, er * 0.95, depth=-0.2)
        cv.poly(xs, ys, _shade(col["ear"], 0.86))

    # --- head outline: cranium half-ellipse on top, superellipse jaw to the chin below
    k = P["jaw_shape"]
    tt = np.linspace(math.pi, 0.0, 25)  # left cheek -> over the top -> right cheek
    top_u, top_v = np.cos(tt), -np.sin(tt) * aspect
    s = np.linspace(0.0, 1.0, 19)[1:]
    jaw_w = (1.0 - s**k) ** (1.0 / k)
    jaw_w[-1] = 0.0
    jaw_u = np.concatenate([jaw_w, -jaw_w[::-1][1:]])  # right side down to chin, then up the left side
    jaw_v = np.concatenate([s, s[::-1][1:]]) * aspect
    hu = np.concatenate([top_u, jaw_u])
    hv = np.concatenate([top_v, jaw_v])
    # the outline is a silhouette (depth 0) except the chin, which juts forward and swings with yaw
    hdepth = 0.55 * np.clip(hv / aspect, 0, None) ** 2 * (1 - np.abs(hu))
    hx, hy = pose.project(hu, hv, hdepth)
    cv.poly(hx, hy, col["skin"])
    chin_index = len(top_u) + len(s) - 1
    kp[15] = hx[chin_index], hy[chin_index]

    # --- hair in front of the head
    _front_hair(cv, pose, style, vol, P["hairline"], col["hair"], aspect, ev, es, ew, P["brow_gap"],
                highlight=not dbg)

    # --- eyebrows: tapered strokes; keypoints are the centre-line ends
    for side, (ko, ki) in ((-1, (6, 7)), (1, (9, 8))):
        bv = ev - P["brow_gap"] - 0.02
        inner = np.array([side * (es - 0.75 * ew), bv - P["brow_tilt"]])
        outer = np.array([side * (es + 1.15 * ew), bv + 0.03])
        mid = (inner + outer) / 2 + np.array([0.0, -0.05])
        c = _bezier(inner, mid, outer, 11)
        tang = np.gradient(c, axis=0)
        nrm = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        th = P["brow_thickness"] * np.linspace(1.0, 0.3, len(c))[:, None]
        band = np.concatenate([c + nrm * th, (c - nrm * th)[::-1]])
        bx, by = pose.project(band[:, 0], band[:, 1])
        cv.poly(bx, by, col["brow"])
        ix, iy = pose.project(inner[0], inner[1])
        ox, oy = pose.project(outer[0], outer[1])
        kp[ki] = ix, iy
        kp[ko] = ox, oy

    # --- eyes: pointed almond (parabolic lids), iris + pupil clipped to it
    eh_top = 0.7 * ew * P["eye_open"]
    eh_bot = 0.5 * ew * P["eye_open"]
    r_iris = 0.56 * ew
    for side, (k_out, k_in, k_pup) in ((-1, (0, 1, 4)), (1, (3, 2, 5))):
        ecu = side * es
        sq = np.linspace(-1.0, 1.0, 17)
        lift = P["eye_tilt"] * (sq * side)  # outer corner (sq * side = 1) raised
        up_u, up_v = ecu + ew * sq, ev - eh_top * (1 - sq**2) - lift
        lo_u, lo_v = ecu + ew * sq[::-1], ev + eh_bot * (1 - sq[::-1] ** 2) - lift[::-1]
        eu = np.concatenate([up_u, lo_u[1:-1]])
        evv = np.concatenate([up_v, lo_v[1:-1]])
        ex, ey = pose.project(eu, evv)
        cv.poly(ex, ey, col["eye_white"])
        gx = P["gaze_x"] * (ew - r_iris) * 0.55
        gy = P["gaze_y"] * 0.25 * eh_bot
        iris_xy = pose.project_ellipse(ecu + gx, ev + gy, r_iris, r_iris, n=32)
        pupil_xy = pose.project_ellipse(ecu + gx, ev + gy, 0.45 * r_iris, 0.45 * r_iris, n=24)
        glint_xy = pose.project_ellipse(ecu + gx - 0.3 * r_iris, ev + gy - 0.32 * r_iris, 0.16 * r_iris,
                                        0.16 * r_iris, n=12)
        kp[k_pup] = pupil_xy[2], pupil_xy[3]

        def paint(d: ImageDraw.ImageDraw, off: tuple[int, int], iris_xy=iris_xy, pupil_xy=pupil_xy,
                  glint_xy=glint_xy) -> None:
            cv.poly(iris_xy[0], iris_xy[1], col["iris"], draw=d, offset=off)
            cv.poly(pupil_xy[0], pupil_xy[1], col["pupil"], draw=d, offset=off)
            if not dbg:
                cv.poly(glint_xy[0], glint_xy[1], (255, 255, 255), draw=d, offset=off)

        cv.clipped(ex, ey, paint)
        if not dbg:
            lx, ly = pose.project(up_u, up_v)
            cv.line(lx, ly, col["lid"], max(0.9, size / 128 * 1.1))
        kp[k_out] = pose.project(ecu + side * ew, ev - P["eye_tilt"])
        kp[k_in] = pose.project(ecu - side * ew, ev + P["eye_tilt"])

    # --- nose: a soft ball at the tip (protrudes: slides further with yaw) and two nostrils
    nv = P["nose_length"] * aspect
    nr = P["nose_size"]
    tip_depth = float(pose.surface_depth(0.0, nv)) + 0.35
    nx, ny, tx, ty = pose.project_ellipse(0.0, nv, nr * 1.1, nr * 0.85, depth=tip_depth)
    if not dbg:
        for side in (-1, 1):
            wx, wy, _, _ = pose.project_ellipse(side * nr * 0.95, nv + 0.25 * nr, nr * 0.62, nr * 0.5,
                                                depth=tip_depth - 0.12)
            cv.poly(wx, wy, _shade(col["nose"], 0.97))
    cv.poly(nx, ny, col["nose"])
    kp[10] = tx, ty
    if not dbg:
        for side in (-1, 1):
            sx, sy2, _, _ = pose.project_ellipse(side * nr * 0.62, nv + 0.62 * nr, nr * 0.26, nr * 0.16,
                                                 depth=tip_depth - 0.05, angle=side * 0.35)
            cv.poly(sx, sy2, col["nostril"])

    # --- mouth: lips as Bezier lenses through the keypoints, opening with teeth
    mv = P["mouth_height"] * aspect
    mw = P["mouth_width"]
    gap = 0.13 * max(0.0, P["mouth_open"] - 0.45) / 0.55
    lift = 0.09 * P["smile"]
    lt = P["lip_thickness"]
    c_l, c_r = np.array([-mw, mv - lift]), np.array([mw, mv - lift])
    n_pts = 15  # odd: the middle point of each curve is its keypoint, exactly
    up_outer = _bezier(c_l, np.array([0.0, mv - lt * 0.9]), c_r, n_pts)
    up_inner = _bezier(c_l, np.array([0.0, mv]), c_r, n_pts)
    lo_inner = _bezier(c_l, np.array([0.0, mv + gap]), c_r, n_pts)
    lo_outer = _bezier(c_l, np.array([0.0, mv + gap + lt * 1.15]), c_r, n_pts)
    lip_poly = np.concatenate([up_outer, lo_outer[::-1][1:-1]])
    x, y = pose.project(lip_poly[:, 0], lip_poly[:, 1])
    cv.poly(x, y, col["lips"])
    if not dbg:  # the upper lip a little darker than the lower
        upper = np.concatenate([up_outer, up_inner[::-1][1:-1]])
        x, y = pose.project(upper[:, 0], upper[:, 1])
        cv.poly(x, y, _shade(col["lips"], 0.9))
    if gap > 0.012:
        inner = np.concatenate([up_inner, lo_inner[::-1][1:-1]])
        ix, iy = pose.project(inner[:, 0], inner[:, 1])
        cv.poly(ix, iy, col["mouth"])
        if not dbg:
            teeth = np.concatenate([up_inner, (up_inner + np.array([0.0, min(0.05, gap * 0.45)]))[::-1]])
            tx2, ty2 = pose.project(teeth[:, 0], teeth[:, 1])
            cv.clipped(ix, iy, lambda d, off: cv.poly(tx2, ty2, col["teeth"], draw=d, offset=off))
    elif not dbg:
        lx, ly = pose.project(up_inner[:, 0], up_inner[:, 1])
        cv.line(lx, ly, _shade(col["lips"], 0.55), max(0.8, size / 128 * 0.9))
    kp[11] = pose.project(c_l[0], c_l[1])
    kp[12] = pose.project(c_r[0], c_r[1])
    kp[13] = pose.project(up_outer[n_pts // 2, 0], up_outer[n_pts // 2, 1])
    kp[14] = pose.project(lo_outer[n_pts // 2, 0], lo_outer[n_pts // 2, 1])

    out = cv.img.reduce(S)  # box filter: each final pixel is the mean of its S x S block
    img = np.asarray(out, dtype=np.uint8)
    if not dbg:
        img = _light(img, hx, hy, pose, P, col["skin"], size, es, ev)
    return img, kp.astype(np.float32), pose


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _light(img: np.ndarray, hx: np.ndarray, hy: np.ndarray, pose: _Pose, P: dict[str, float],
           skin: np.ndarray, size: int, es: float, ev: float) -> np.ndarray:
    """Soft directional light and cheek blush on the face (final resolution, numpy)."""
    mask_img = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    s = SUPERSAMPLE
    ImageDraw.Draw(mask_img).polygon(
        list(zip(np.floor(hx * s + (s - 1) / 2 + 0.5).astype(int).tolist(),
                 np.floor(hy * s + (s - 1) / 2 + 0.5).astype(int).tolist())), fill=255)
    mask = np.asarray(mask_img.reduce(s), dtype=np.float32) / 255.0
    yy, xx = _pixel_grid(size)
    dx, dy = (xx - pose.cx) / (pose.scale * 1.2), (yy - pose.cy) / (pose.scale * 1.2 * pose.aspect)
    la = P["light_angle"]
    directional = dx * math.cos(la) + dy * math.sin(la)
    rim = dx * dx + dy * dy
    shade = 1.0 + P["light_strength"] * directional - 0.1 * rim
    out = img.astype(np.float32)
    out *= (1.0 + mask * (shade - 1.0))[..., None]
    if P["blush"] > 0.05:
        blush_rgb = np.array([236, 110, 120], dtype=np.float32)
        sigma = 0.16 * pose.scale
        alpha = np.zeros((size, size), dtype=np.float32)
        for side in (-1, 1):
            bx, by = pose.project(side * (es + 0.08), ev + 0.42 * pose.aspect)
            alpha += np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sigma * sigma))
        alpha = np.clip(alpha, 0, 1) * mask * 0.32 * P["blush"]
        out = out * (1 - alpha[..., None]) + blush_rgb * alpha[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _cranium(hx_scale: float, hy_scale: float, aspect: float, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return hx_scale * np.cos(t), -hy_scale * aspect * np.sin(t)


def _back_hair(cv: _Canvas, pose: _Pose, style: int, vol: float, colour: np.ndarray, aspect: float) -> None:
    """Hair behind the head: long (to the shoulders) or bob (to the jaw)."""
    w = 1.18 + 0.2 * vol
    bottom = (1.55 + 0.3 * vol) * aspect if style == 1 else (0.72 + 0.12 * vol) * aspect
    t = np.linspace(math.pi, 0.0, 21)
    u, v = _cranium(w, 1.12 + 0.1 * vol, aspect, t)
    side = np.linspace(0.0, bottom, 8)[1:]
    flare = w + (0.12 if style == 1 else 0.06) * (side / bottom)
    ru, rv = flare, side
    ends = np.linspace(w + 0.1, -(w + 0.1), 9)
    end_v = bottom + 0.06 * np.cos(np.linspace(0, 8 * math.pi, 9)) * (style == 1)
    uu = np.concatenate([-flare[::-1], u, ru, ends[1:-1]])
    vv = np.concatenate([rv[::-1], v, rv, end_v[1:-1]])
    x, y = pose.project(uu, vv, -0.3)
    cv.poly(x, y, colour)


def _front_hair(cv: _Canvas, pose: _Pose, style: int, vol: float, hairline: float, colour: np.ndarray,
                aspect: float, ev: float, es: float, ew: float, brow_gap: float, highlight: bool = True
                ) -> None:
    """Hair cap over the cranium with a style-dependent hairline (always above the brows)."""
    brow_top = ev - brow_gap - 0.14  # the hairline never comes below this v
    hv = -aspect * (0.5 + 0.22 * hairline)
    hv = min(hv, brow_top - 0.06)
    if style == 2:  # bob: a straight fringe just above the brows
        hv = brow_top - 0.04 - 0.08 * hairline
    if style == 4:  # bun: pulled back
        hv = -aspect * (0.62 + 0.15 * hairline)
    w = 1.06 + 0.12 * vol if style != 4 else 1.03
    hh = 1.08 + 0.14 * vol if style != 4 else 1.04
    side_v = ev - 0.05  # the cap reaches down the sides to just above the eye line
    t = np.linspace(math.pi, 0.0, 25)
    ou, ov = _cranium(w, hh, aspect, t)
    # outer: from the left side (down at side_v) over the top to the right side
    outer_u = np.concatenate([[-w * 0.99], ou, [w * 0.99]])
    outer_v = np.concatenate([[side_v], ov, [side_v]])
    outer_d = np.zeros_like(outer_u)
    # hairline, right to left, on the face surface
    hl_u = np.linspace(0.97, -0.97, 23)
    if style == 0:  # side parting: sweeps low on one side
        hl_v = hv + 0.28 * np.abs(hl_u) ** 2.5 * aspect * 0.4 + 0.1 * (hl_u + 1) / 2 * (1 - np.abs(hl_u))
    elif style == 2:  # fringe: straight with small scallops
        hl_v = hv + 0.025 * np.cos(hl_u * 11 * math.pi / 2) + 0.06 * np.abs(hl_u) ** 4
    elif style == 3:  # curly: rounded hairline
        hl_v = hv + 0.25 * hl_u**2
    else:  # long / bun: centre parting, a small widow's peak
        hl_v = hv + 0.2 * hl_u**2 * 0.8 - 0.04 * np.exp(-(hl_u / 0.12) ** 2)
    hl_v = np.minimum(hl_v, side_v)
    hl_v[0] = hl_v[-1] = side_v
    hl_d = pose.surface_depth(hl_u, hl_v)
    uu = np.concatenate([outer_u, hl_u])
    vv = np.concatenate([outer_v, hl_v])
    dd = np.concatenate([outer_d, hl_d])
    if style == 4:  # the bun sits on top, behind the cap's front edge
        bx, by, _, _ = pose.project_ellipse(0.0, -hh * aspect - 0.12, 0.36, 0.3, depth=-0.1)
        cv.poly(bx, by, colour)
    x, y = pose.project(uu, vv, dd)
    cv.poly(x, y, colour)
    if style == 3:  # curls along the outer edge
        for tc in np.linspace(math.pi * 0.98, math.pi * 0.02, 11):
            cu, cvv = _cranium(w * 1.02, hh * 1.02, aspect, np.array([tc]))
            r = 0.2 + 0.1 * vol
            xs, ys, _, _ = pose.project_ellipse(float(cu[0]), float(cvv[0]), r, r, depth=0.0, n=18)
            cv.poly(xs, ys, colour)
    if not highlight:
        return
    # a soft highlight arc, lighter hair colour
    ht = np.linspace(math.pi * 0.72, math.pi * 0.42, 9)
    hu2, hv2 = _cranium(w * 0.8, hh * 0.86, aspect, ht)
    lx, ly = pose.project(hu2, hv2, 0.2)
    highlight = np.clip(colour * 1.25 + 22, 0, 255)
    cv.line(lx, ly, highlight, max(1.0, cv.size / 128 * 1.6))


# ----------------------------------------------------------------------------- CLI: sample grid


def save_grid(path: str, seed: int = 0, n: int = 64, size: int = 128, keypoints: bool = False,
              columns: int = 8) -> float:
    """Write a grid of ``faces.dataset(seed, n, size)`` to ``path`` (keypoints drawn as rings when
    asked; drawn on a 2x copy so the rings stay visible). Returns the render time per image (s)."""
    import time

    t0 = time.perf_counter()
    imgs, kps = dataset(seed, n, size)
    per_image = (time.perf_counter() - t0) / max(1, n)
    rows = (n + columns - 1) // columns
    grid = Image.new("RGB", (columns * size, rows * size), (255, 255, 255))
    for i, (im, kp) in enumerate(zip(imgs, kps)):
        tile = Image.fromarray(im)
        if keypoints:
            big = tile.resize((size * 2, size * 2), Image.Resampling.NEAREST)
            d = ImageDraw.Draw(big)
            for j, (x, y) in enumerate(kp):
                bx, by = (x + 0.5) * 2, (y + 0.5) * 2  # centre convention -> area coordinates, 2x
                colour = (255, 40, 40) if j < 10 else (40, 200, 255)
                d.ellipse([bx - 2.5, by - 2.5, bx + 2.5, by + 2.5], outline=colour)
            tile = big.resize((size, size), Image.Resampling.LANCZOS)
        grid.paste(tile, ((i % columns) * size, (i // columns) * size))
    grid.save(path)
    return per_image


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Render a grid of procedural faces (and time the renderer).")
    ap.add_argument("--out", default="faces_grid.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--keypoints", action="store_true", help="draw the keypoints")
    args = ap.parse_args(argv)
    per_image = save_grid(args.out, args.seed, args.n, args.size, args.keypoints)
    print(f"wrote {args.out}: {args.n} faces at {args.size}x{args.size}, {per_image * 1000:.1f} ms per image "
          f"(render incl. keypoints, this process, 1 thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
