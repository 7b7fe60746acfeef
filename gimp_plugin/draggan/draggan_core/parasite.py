"""The session record a result layer carries, so that "drag again" can continue the session.

Stored as a GIMP parasite named PARASITE_NAME on the result layer: UTF-8 JSON, persistent (saved
in XCF) and undoable. It holds no pixels and no secret: only where the session lives and which crop
it covers. Who may use the session is the user's identity token, kept in GIMP's config folder
(identity.py), never in the image: whoever receives the .xcf cannot take the session over.

Version 1 records also held the ZeroMQ routing id that owned the session (protocol 1); version 2
records are protocol-2 sessions (no alignment). Both are read as "outdated": a protocol-3 plug-in
cannot reach a protocol-2 backend, so the next drag on such a layer inverts anew and says why.

Version 3 (protocol 3, face alignment): ``frame`` "crop" marks a session made from a native crop
``region`` (image coordinates) whose transform the backend keeps; ``crop`` is then the result
layer's rectangle (the produced area's bounding box).

Version 4 (protocol 4): every session is made from a native crop (``frame`` "crop", ``region``);
``aligned`` says whether the backend aligned a face in it; ``pti`` is the PTI option ("auto", "on",
"off"). Versions 1-3 are read as "outdated" (their sessions live on protocol 1-3 backends).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .geometry import Rect

PARASITE_NAME = "draggan-session"
RECORD_VERSION = 4  # 2: no routing id; 3: frame + region (face alignment); 4: every edit a native crop
FRAME_MODEL = "model"   # the crop was scaled to the model's size (protocol 2's only way)
FRAME_CROP = "crop"     # a native crop, aligned (or boxed) by the backend


@dataclass(frozen=True)
class SessionRecord:
    """address: backend address; session_id: the backend's session; crop: the result layer's rectangle
    (image coordinates); model: model name; model_size: (width, height); pti: the PTI option the
    session was made with; region: the crop sent (image coordinates); aligned: a face alignment."""

    address: str
    session_id: str
    crop: Rect
    model: str
    model_size: tuple[int, int]
    pti: str = "auto"
    frame: str = FRAME_CROP
    region: Rect | None = None
    aligned: bool = False

    @property
    def native(self) -> bool:
        return self.frame == FRAME_CROP


def encode_record(record: SessionRecord) -> bytes:
    data = {
        "v": RECORD_VERSION,
        "address": record.address,
        "session_id": record.session_id,
        "crop": list(record.crop.as_tuple()),
        "model": record.model,
        "model_size": list(record.model_size),
        "pti": record.pti,
        "frame": record.frame,
        "aligned": record.aligned,
    }
    if record.region is not None:
        data["region"] = list(record.region.as_tuple())
    return json.dumps(data, sort_keys=True).encode("utf-8")


def decode_record(data: bytes | bytearray | list[int] | None) -> SessionRecord | None:
    """The record from parasite bytes; None when missing, from another version or malformed
    (a damaged record only means the next drag inverts anew)."""
    if data is None:
        return None
    try:
        raw = json.loads(bytes(data).decode("utf-8"))
        if not isinstance(raw, dict) or raw.get("v") != RECORD_VERSION:
            return None
        x, y, w, h = (int(v) for v in raw["crop"])
        mw, mh = (int(v) for v in raw["model_size"])
        if w <= 0 or h <= 0 or mw <= 0 or mh <= 0:
            return None
        address, session_id, model = raw["address"], raw["session_id"], raw["model"]
        if not all(isinstance(s, str) and s for s in (address, session_id, model)):
            return None
        frame = raw.get("frame", FRAME_MODEL)
        region = None
        if frame == FRAME_CROP:
            rx, ry, rw, rh = (int(v) for v in raw["region"])
            if rw <= 0 or rh <= 0:
                return None
            region = Rect(rx, ry, rw, rh)
        elif frame != FRAME_MODEL:
            return None
        pti = raw.get("pti")
        if frame != FRAME_CROP or region is None or pti not in ("auto", "on", "off"):
            return None
        return SessionRecord(address, session_id, Rect(x, y, w, h), model, (mw, mh), pti, frame, region,
                             bool(raw.get("aligned")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def is_outdated(data: bytes | bytearray | list[int] | None) -> bool:
    """True for a record an older plug-in wrote (version 1, with a routing id; version 2, protocol
    2): its session cannot be continued by this plug-in (a version-1 one is not trusted either:
    anyone with the .xcf had its routing id)."""
    if data is None:
        return False
    try:
        raw = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and isinstance(raw.get("v"), int) and not isinstance(raw.get("v"), bool) \
        and raw["v"] < RECORD_VERSION


def read_outdated(layer: Any) -> bool:
    """Whether the layer carries a session record of an older plug-in."""
    parasite = layer.get_parasite(PARASITE_NAME)
    return parasite is not None and is_outdated(parasite.get_data())


def read_record(layer: Any) -> SessionRecord | None:
    """The record on a Gimp.Layer (duck-typed get_parasite), or None."""
    parasite = layer.get_parasite(PARASITE_NAME)
    if parasite is None:
        return None
    return decode_record(parasite.get_data())


def attach_record(layer: Any, record: SessionRecord, Gimp: Any) -> None:
    """Attach the record to a Gimp.Layer (persistent, undoable)."""
    flags = Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE
    layer.attach_parasite(Gimp.Parasite.new(PARASITE_NAME, flags, encode_record(record)))
