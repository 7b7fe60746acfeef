"""Drag again: continue the backend session, or invert the layer anew?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .geometry import Point, Rect
from .parasite import SessionRecord


@dataclass(frozen=True)
class Decision:
    """continue_session: send `continue` with record.session_id (no inversion);
    reason: a short text for the progress bar saying why."""

    continue_session: bool
    reason: str
    record: SessionRecord | None = None


def normalise_address(address: str) -> str:
    """Addresses compare without surrounding blanks, case of the scheme/host, and 'localhost'."""
    a = address.strip().lower()
    return a.replace("://localhost:", "://127.0.0.1:")


OUTDATED = ("inverting anew: this layer's DragGAN session was made by an older plug-in, whose sessions "
            "cannot be continued; drag again on the new result continues it")


def decide(record: SessionRecord | None, layer: Rect, address: str, model: str, pti: str,
           points: Sequence[Point], outdated: bool = False) -> Decision:
    """Continue when the layer carries a session of the same backend and model, still covers the
    session's crop exactly (not moved or resized), and every new point lies inside that crop.

    model: the model asked for ("" = keep the session's model); points: image coordinates;
    outdated: the layer carries a record of an older plug-in (protocol 1), never continued.
    """
    if record is None and outdated:
        return Decision(False, OUTDATED)
    if record is None:
        return Decision(False, "new edit: inverting the photo")
    if normalise_address(record.address) != normalise_address(address):
        return Decision(False, f"inverting anew: this layer's session lives on {record.address}, "
                               f"not on {address}")
    if model and model != record.model:
        return Decision(False, f"inverting anew: model '{model}' differs from the session's '{record.model}'")
    if pti != record.pti:
        return Decision(False, "inverting anew: the PTI setting changed")
    if layer != record.crop:
        return Decision(False, "inverting anew: the layer was moved or resized since the last drag")
    for p in points:
        if not record.crop.contains_point(p):
            return Decision(False, f"inverting anew: point ({p[0]:.0f}, {p[1]:.0f}) lies outside the "
                                   "previous drag's crop")
    return Decision(True, "continuing the previous drag (no re-inversion)", record)
