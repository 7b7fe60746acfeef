"""An edit in an aligned face frame: prepare the model-frame inputs from a native-resolution crop, and
paste the model's result back into the crop exactly, so the pixels outside the edit do not move.
Wire-independent: the server calls these once the protocol carries native crops (protocol 3); tests
call them directly.

* :func:`prepare` finds the face (a landmark function, by default MTCNN from alignment/landmarks.py;
  with several faces, the one whose quad holds the handles), builds the :class:`alignment.align.Alignment`
  for the model's alignment kind, and warps the crop, handles, targets and mask into the model's
  frame. No face -> :class:`NoFace` (the caller edits unaligned and says so). Drag again: pass the
  stored alignment (``PreparedEdit.alignment.to_dict()`` kept with the session) as ``reuse``.
* :func:`paste_back` warps a model-frame result into the crop's frame: an RGBA layer whose alpha is
  255 exactly on the produced area (crop pixels whose centre lies in the model frame) and 0 elsewhere;
  padded model pixels (outside the crop) never map onto crop pixels, so they are never pasted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignment.align import Alignment, FaceLandmarks, choose_face, faces_template_quad, ffhq_quad, quad_transform

__all__ = ["NoFace", "PreparedEdit", "prepare", "prepare_box", "prepare_whole", "box_alignment", "whole_alignment",
           "default_region", "map_points", "paste_back", "paste_back_cut", "progress_text"]

LandmarkFn = Callable[[np.ndarray], list[FaceLandmarks]]


class NoFace(LookupError):
    """No face was found in the crop; the message is for the user."""


@dataclass
class PreparedEdit:
    """Model-frame inputs: ``image`` uint8 [h, w, 3], ``valid`` bool [h, w] (False = padding),
    ``handles``/``targets`` [N, 2] model pixels, ``mask`` float [h, w] (1 = may move) or None;
    ``alignment`` and the crop's size for :func:`paste_back`; ``face``: the landmarks used (None when
    reused)."""

    image: np.ndarray
    valid: np.ndarray
    handles: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None
    alignment: Alignment
    crop_width: int
    crop_height: int
    face: FaceLandmarks | None


# MTCNN takes ~3 s on a 2048 px crop on a CPU, under 1 s at 1024: larger crops are searched at
# 1024 px (a face must then be >= 40 crop px wide at 2048, MTCNN's 20 px minimum, far below what
# is worth aligning) and the landmarks scaled back.
DETECT_MAX_SIDE = 1024


def _default_landmarks(image: np.ndarray) -> list[FaceLandmarks]:
    from alignment.landmarks import detect_faces

    H, W = image.shape[:2]
    scale = max(H, W) / DETECT_MAX_SIDE
    if scale <= 1.0:
        return detect_faces(image)
    from PIL import Image as PILImage

    small = np.asarray(PILImage.fromarray(np.ascontiguousarray(image[..., :3])).resize(
        (max(1, round(W / scale)), max(1, round(H / scale))), PILImage.Resampling.BOX))
    sx, sy = W / small.shape[1], H / small.shape[0]
    out = []
    for f in detect_faces(small):
        # pixel-centre coordinates: x_big + 0.5 = (x_small + 0.5) * s
        pts = (f.array() + 0.5) * np.array([sx, sy]) - 0.5
        box = None if f.box is None else (f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy)
        out.append(FaceLandmarks.from_array(pts, box, f.score))
    return out


def prepare(crop: np.ndarray, model_width: int, model_height: int, handles: Sequence[Sequence[float]],
            targets: Sequence[Sequence[float]], mask: np.ndarray | None = None,
            landmarks: LandmarkFn | None = None, template: np.ndarray | None = None,
            reuse: dict[str, Any] | None = None, kind: str = "ffhq") -> PreparedEdit:
    """Warp a native crop (uint8 [H, W, 3]) and its points/mask (crop pixels; mask 1 = may move) into
    the model's frame. ``kind`` (alignment/align.py ALIGNMENTS): "ffhq" maps the face's quad onto
    ``template`` (default: the whole frame, the FFHQ recipe); "faces" onto the procedural average
    face's quad, after refining the landmarks in that frame with the keypoint detector
    (alignment/landmarks.py ``refine_landmarks``). Raises :class:`NoFace`, or ValueError when a point
    falls outside the aligned frame."""
    if kind not in ("ffhq", "faces"):
        raise ValueError(f"alignment kind must be 'ffhq' or 'faces', got {kind!r}")
    crop = np.asarray(crop)
    H, W = crop.shape[:2]
    face = None
    if reuse is not None:
        al = Alignment.from_dict(reuse)
        if (al.width, al.height) != (model_width, model_height):
            raise ValueError("the stored alignment is for another model size")
    else:
        faces = (landmarks or _default_landmarks)(crop)
        face = choose_face(faces, handles)
        if face is None:
            raise NoFace("no face found in the crop: editing without alignment")
        if kind == "faces":
            face, template = refined_procedural_face(crop, face, model_width, model_height)
        al = quad_transform(ffhq_quad(face), model_width, model_height, template)
    return _warp_inputs(crop, al, handles, targets, mask, face)


def refined_procedural_face(crop: np.ndarray, face: FaceLandmarks, model_width: int, model_height: int
                             ) -> tuple[FaceLandmarks, np.ndarray]:
    """MTCNN's landmarks on a procedural face (5-19 px off at 128) refined in the average face's
    frame by the keypoint detector, twice (quad about 1.0-1.2 px off), then by the patch refiner in a
    256 px frame (0.19-0.26 px mean, within 1 px on 63 of 64 tilted faces, docs/alignment.md); and
    that template quad."""
    from alignment import landmarks as L

    if model_width != model_height:
        raise ValueError("the 'faces' alignment needs a square model")
    template = faces_template_quad(model_width)
    # The detector knows only procedural faces: on anything else its points are noise. A refinement
    # that fails, or moves the quad by more than a quarter of its side, is not one: keep MTCNN's face.
    try:
        refined = L.refine_landmarks(crop, face, L.procedural_face_predictor_at(model_width), template,
                                     model_width, iterations=REFINE_ITERATIONS)
        # the second stage: eye centres and mouth corners from patches of a finer frame
        refined = L.procedural_corner_refiner()(crop, refined)
        coarse_quad, refined_quad = ffhq_quad(face), ffhq_quad(refined)
    except ValueError:    # non-finite or degenerate points
        return face, template
    side = float(np.hypot(*(coarse_quad[3] - coarse_quad[0])))
    if not float(np.hypot(*(refined_quad - coarse_quad).T).max()) <= REFINE_MAX_SHIFT * side:
        return face, template
    return refined, template


#: Refinements of MTCNN's face (a second one from the first's better-aligned frame: quad error 1.38 ->
#: 1.22 px mean on 42 held-out tilted faces, docs/alignment.md).
REFINE_ITERATIONS = 2

#: Largest move of the quad's corners by the refinement, as a fraction of the quad's side.
REFINE_MAX_SHIFT = 0.25


# The unaligned path on a native crop mimics the plug-in's automatic crop (geometry.plan_crop):
# the points' bounding box with a margin of a quarter of its larger side (at least 16 px), grown to
# the model's aspect and at least the model's own size where the crop allows.
BOX_MARGIN_FRACTION = 0.25
BOX_MIN_MARGIN_PX = 16.0


def box_alignment(points: Any, crop_width: int, crop_height: int, model_width: int,
                  model_height: int) -> Alignment:
    """The unaligned transform for a native crop: an axis-aligned, model-shaped box around
    ``points`` ([N, 2], x then y, crop pixels) inside the crop, scaled to the model's size (no
    rotation). Used when no face is found, so the edit still runs on the same crop and pastes back exactly."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    x0, y0 = pts.min(0) + 0.5  # pixel-centre -> continuous coordinates (pixel i spans i..i+1)
    x1, y1 = pts.max(0) + 0.5
    margin = max(BOX_MIN_MARGIN_PX, BOX_MARGIN_FRACTION * max(x1 - x0, y1 - y0))
    aspect = model_width / model_height
    w = max(x1 - x0 + 2 * margin, (y1 - y0 + 2 * margin) * aspect, float(model_width))
    w = min(w, float(crop_width), crop_height * aspect)   # the largest model-shaped box in the crop
    h = w / aspect
    bx = min(max((x0 + x1) / 2 - w / 2, 0.0), crop_width - w)
    by = min(max((y0 + y1) / 2 - h / 2, 0.0), crop_height - h)
    s = w / model_width   # crop pixels per model pixel (the same on y: the box has the model's aspect)
    # model pixel-centre u -> continuous bx + (u + 0.5) s -> crop pixel-centre bx + (u + 0.5) s - 0.5
    matrix = np.array([[s, 0.0, bx + 0.5 * s - 0.5], [0.0, s, by + 0.5 * s - 0.5]])
    return Alignment(matrix, int(model_width), int(model_height))


def whole_alignment(crop_width: int, crop_height: int, model_width: int, model_height: int) -> Alignment:
    """The whole crop as the model's frame: model pixel-centre ``u`` -> crop ``(u + 0.5) * W / w - 0.5``
    (and so on y; a crop of another aspect is stretched, as the plug-in's crops have the model's aspect
    up to rounding)."""
    sx, sy = crop_width / model_width, crop_height / model_height
    return Alignment(np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]]), int(model_width),
                     int(model_height))


def prepare_whole(crop: np.ndarray, model_width: int, model_height: int, handles: Sequence[Sequence[float]],
                  targets: Sequence[Sequence[float]], mask: np.ndarray | None = None) -> PreparedEdit:
    """:func:`prepare` for a model without alignment: the whole crop scaled to the model's frame."""
    crop = np.asarray(crop)
    H, W = crop.shape[:2]
    return _warp_inputs(crop, whole_alignment(W, H, model_width, model_height), handles, targets, mask, None)


#: The box the drag may change when there is no selection: around the handles and targets, with a margin
#: of half their spread and at least this share of the model's height (6 px at 128: on local drags of the
#: tuning cases a 12 px margin let the model's drift of nearby features (nose, jaw) into the result).
REGION_MIN_MARGIN = 6.0 / 128.0


#: The box's margin over the points' spread when the points move as one (a rigid move, e.g. a head put
#: elsewhere): the part they lie on reaches well beyond them (tuning cases: the head's outline and
#: hair needed 1.5x; 0.5x left them behind).
RIGID_MARGIN_SPREAD = 1.5


#: The margin of each point's own box (:func:`point_boxes`) over that point's move, and at least
#: REGION_MIN_MARGIN: on the tuning cases' smiles, gazes and brows the model moved the whole face between
#: the points (the middle of the mouth rose with its corners), and a box per point of 1.5x its move kept
#: that still (smiles 0.94-1.49x -> 0.21-0.27x no edit's ST-LPIPS); 2x took the eyes along with tilted
#: brows (2.85x -> 5.0x).
POINT_MARGIN_MOVE = 1.5


def _mark_box(region: np.ndarray, points: np.ndarray, margin: float) -> None:
    """Set to 1 the pixels of ``region`` [h, w] in the box around ``points`` [N, 2] (model pixels) grown by
    ``margin`` pixels, clipped to the frame."""
    x0, y0 = np.floor(points.min(0) - margin).astype(int)
    x1, y1 = np.ceil(points.max(0) + margin).astype(int)
    region[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = 1.0


def default_region(handles: Any, targets: Any, model_width: int, model_height: int, wide: bool = False) -> np.ndarray:
    """float32 [h, w] (1 = may move) in the model's frame: the box around ``handles`` and ``targets``
    ([N, 2] model pixels) grown by max(REGION_MIN_MARGIN * height, half the points' spread), or by
    RIGID_MARGIN_SPREAD times their spread for a ``wide`` one (points that move or turn as one)."""
    pts = np.concatenate([np.asarray(handles, np.float64).reshape(-1, 2),
                          np.asarray(targets, np.float64).reshape(-1, 2)])
    spread = float((pts.max(0) - pts.min(0)).max())
    region = np.zeros((model_height, model_width), np.float32)
    _mark_box(region, pts, max(REGION_MIN_MARGIN * model_height, (RIGID_MARGIN_SPREAD if wide else 0.5) * spread))
    return region


def point_boxes(handles: Any, targets: Any, model_width: int, model_height: int) -> np.ndarray:
    """float32 [h, w] (1 = may move) in the model's frame: the union of one box per point around its
    handle and target ([N, 2] model pixels each), grown by max(REGION_MIN_MARGIN * height,
    POINT_MARGIN_MOVE * that point's move). For points in a row or a cluster: each feature moves, the
    face between them is not carried along."""
    h = np.asarray(handles, np.float64).reshape(-1, 2)
    t = np.asarray(targets, np.float64).reshape(-1, 2)
    region = np.zeros((model_height, model_width), np.float32)
    for a, b in zip(h, t):
        _mark_box(region, np.stack([a, b]),
                  max(REGION_MIN_MARGIN * model_height, POINT_MARGIN_MOVE * float(np.hypot(*(b - a)))))
    return region


def prepare_box(crop: np.ndarray, model_width: int, model_height: int, handles: Sequence[Sequence[float]],
                targets: Sequence[Sequence[float]], mask: np.ndarray | None = None) -> PreparedEdit:
    """:func:`prepare` without a face: the model-shaped box of :func:`box_alignment` around the
    points (``face`` None). The box lies inside the crop, so nothing is padded."""
    crop = np.asarray(crop)
    H, W = crop.shape[:2]
    al = box_alignment(np.concatenate([np.asarray(handles, np.float64).reshape(-1, 2),
                                       np.asarray(targets, np.float64).reshape(-1, 2)]),
                       W, H, model_width, model_height)
    return _warp_inputs(crop, al, handles, targets, mask, None)


def _warp_inputs(crop: np.ndarray, al: Alignment, handles: Sequence[Sequence[float]],
                 targets: Sequence[Sequence[float]], mask: np.ndarray | None,
                 face: FaceLandmarks | None) -> PreparedEdit:
    H, W = crop.shape[:2]
    image, valid = al.warp_image(crop)
    h, t = map_points(al, handles, targets)
    m = None if mask is None else al.warp_mask(np.asarray(mask) > 0.5).astype(np.float32)
    return PreparedEdit(image, valid, h, t, m, al, W, H, face)


def map_points(al: Alignment, handles: Sequence[Sequence[float]],
               targets: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Crop-pixel handles and targets -> model pixels [N, 2] each; ValueError (naming the point)
    when one falls outside the model's frame."""
    h = al.to_model(handles)
    t = al.to_model(targets)
    for name, pts in (("handle", h), ("target", t)):
        bad = (pts[:, 0] < 0) | (pts[:, 0] > al.width - 1) | (pts[:, 1] < 0) | (pts[:, 1] > al.height - 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name} {i} lies outside the aligned face frame; move it onto the face "
                             "or turn alignment off")
    return h, t


def paste_back_cut(al: Alignment, crop_width: int, crop_height: int,
                   result: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`paste_back` (the model-frame ``result`` uint8 [h, w, 3] through ``al`` into a crop of
    ``crop_width x crop_height``) cut to the produced area's bounding box: (uint8 [bh, bw, 4], (x, y)
    crop pixels of its top-left pixel). Alpha is 255 exactly on the produced area. Only the box is
    resampled, so a 2048 px crop costs no more than the face in it."""
    produced = al.produced_area(crop_width, crop_height)
    ys, xs = np.nonzero(produced)
    if len(xs) == 0:
        raise ValueError("the aligned face frame covers no pixel of the crop")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    m = al.matrix.copy()
    m[:, 2] -= (x0, y0)   # the same transform into the box's own pixel grid
    box = Alignment(m, al.width, al.height)
    rgb, area = box.unwarp_image(result, x1 - x0, y1 - y0)
    alpha = np.where(area, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=2), (x0, y0)


def cut_to_produced_area(al: Alignment, crop_rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A crop-frame picture (uint8 [H, W, 3]) as :func:`paste_back_cut` answers: RGBA cut to the
    bounding box of the area the model's frame covers, alpha 255 exactly there; and the box's offset."""
    H, W = crop_rgb.shape[:2]
    produced = al.produced_area(W, H)
    ys, xs = np.nonzero(produced)
    if len(xs) == 0:
        raise ValueError("the model's frame covers no pixel of the crop")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    alpha = np.where(produced[y0:y1, x0:x1], 255, 0).astype(np.uint8)
    return np.concatenate([crop_rgb[y0:y1, x0:x1, :3], alpha[..., None]], axis=2), (x0, y0)


def paste_back(prepared: PreparedEdit, result: np.ndarray) -> np.ndarray:
    """The model-frame ``result`` (uint8 [h, w, 3]) as an RGBA layer in the crop's frame (uint8
    [H, W, 4]): alpha 255 on the produced area, 0 elsewhere (colour 0 there too)."""
    rgb, produced = prepared.alignment.unwarp_image(result, prepared.crop_width, prepared.crop_height)
    alpha = np.where(produced, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=2)


def progress_text(prepared: PreparedEdit | None) -> str:
    """The progress line's alignment note."""
    if prepared is None:
        return "no face found: editing without alignment"
    al = prepared.alignment
    return f"face aligned (rotated {al.angle_degrees:+.0f} deg, {al.scale:.2f} crop px per model px)"
