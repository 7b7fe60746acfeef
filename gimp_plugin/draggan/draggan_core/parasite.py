"""The session record a result layer carries, so that "drag again" can continue the session.

Stored as a GIMP parasite named PARASITE_NAME on the result layer: UTF-8 JSON, persistent (saved
in XCF) and undoable. It holds no pixels, only where the session lives and which crop it covers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .geometry import Rect

PARASITE_NAME = "draggan-session"
RECORD_VERSION = 1


@dataclass(frozen=True)
class SessionRecord:
    """address: backend address; session_id: the backend's session; crop: image coordinates;
    model: model name; model_size: (width, height); pti: whether the session was made with PTI;
    routing_id: the ZeroMQ routing id of the connection that owns the session on the backend."""

    address: str
    session_id: str
    crop: Rect
    model: str
    model_size: tuple[int, int]
    pti: bool = False
    routing_id: str = ""


def encode_record(record: SessionRecord) -> bytes:
    data = {
        "v": RECORD_VERSION,
        "address": record.address,
        "session_id": record.session_id,
        "crop": list(record.crop.as_tuple()),
        "model": record.model,
        "model_size": list(record.model_size),
        "pti": record.pti,
        "routing_id": record.routing_id,
    }
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
        routing_id = raw.get("routing_id", "")
        if not isinstance(routing_id, str):
            return None
        return SessionRecord(address, session_id, Rect(x, y, w, h), model, (mw, mh), bool(raw.get("pti")),
                             routing_id)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


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
