"""An edit in an aligned face frame: prepare the model-frame inputs from a native-resolution crop, and
paste the model's result back into the crop exactly (issue 19). Wire-independent: the server calls
these once the protocol carries native crops (protocol 3); tests call them directly.

* :func:`prepare` finds the face (a landmark function, by default MTCNN from backend/landmarks.py;
  with several faces, the one whose quad holds the handles), builds the :class:`backend.align.Alignment`
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

from backend.align import Alignment, FaceLandmarks, choose_face, ffhq_quad, quad_transform

__all__ = ["NoFace", "PreparedEdit", "prepare", "paste_back", "progress_text"]

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


def _default_landmarks(image: np.ndarray) -> list[FaceLandmarks]:
    from backend.landmarks import detect_faces

    return detect_faces(image)


def prepare(crop: np.ndarray, model_width: int, model_height: int, handles: Sequence[Sequence[float]],
            targets: Sequence[Sequence[float]], mask: np.ndarray | None = None,
            landmarks: LandmarkFn | None = None, template: np.ndarray | None = None,
            reuse: dict[str, Any] | None = None) -> PreparedEdit:
    """Warp a native crop (uint8 [H, W, 3]) and its points/mask (crop pixels; mask 1 = may move) into
    the model's frame. ``template``: the quad the face maps onto in the model frame (default: the
    whole frame, the FFHQ recipe). Raises :class:`NoFace`, or ValueError when a point falls outside
    the aligned frame."""
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
        al = quad_transform(ffhq_quad(face), model_width, model_height, template)
    image, valid = al.warp_image(crop)
    h = al.to_model(handles)
    t = al.to_model(targets)
    for name, pts in (("handle", h), ("target", t)):
        bad = (pts[:, 0] < 0) | (pts[:, 0] > model_width - 1) | (pts[:, 1] < 0) | (pts[:, 1] > model_height - 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name} {i} lies outside the aligned face frame; move it onto the face "
                             "or turn alignment off")
    m = None if mask is None else al.warp_mask(np.asarray(mask) > 0.5).astype(np.float32)
    return PreparedEdit(image, valid, h, t, m, al, W, H, face)


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
