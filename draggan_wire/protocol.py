"""The DragGAN wire protocol: the one definition shared by the GIMP plug-in and the backend server.

Standard library ONLY: GIMP's Python loads this file (staged as ``draggan_wire/protocol.py``), and it
has neither numpy nor torch nor (necessarily) zmq. Nothing here touches a socket.

Transport
---------
ZeroMQ, server ROUTER, client DEALER. Every message is a multipart message::

    frame 0      header: UTF-8 JSON object {"v": PROTOCOL_VERSION, "type": str, "id": str,
                 "token": str (requests only), "fields": {...}}
    frame 1..n   binary payloads (images, masks, previews), referenced from ``fields`` by index

Identity (protocol 2): every request carries ``token``, the client's identity secret (64 lower-case
hex digits: 32 random bytes, made once per user and kept private, see ``client.load_or_create_token``).
The server files jobs, photos, sessions and cached latents under the *owner*: the client's CURVE
public key when CURVE is on, else a hash of the token. The ZeroMQ routing id is only an address:
it can be guessed or chosen by a peer, so it never grants anything (see docs/remote.md).

A binary payload is described in the header by an *image spec*::

    {"frame": k, "format": "raw", "shape": [H, W, C]}   raw uint8, row-major H x W x C, C in (1, 3, 4)
    {"frame": k, "format": "png"}                        8-bit PNG (gray, RGB, RGBA; non-interlaced)

The spec checks (frame references, sizes read from the raw shape or the PNG header, channels) are
the same on both sides and cheap. Decoding a PNG payload is separate: ``decode(..., defer_png=True)``
returns :class:`PendingImage` placeholders, and the server decodes them with Pillow (a C decoder,
with its decompression-bomb limits) in its worker, never on the socket loop. The plug-in's side uses
the pure-Python :func:`decode_png` (the server sends raw frames, so it rarely needs it).

Every binary frame must be referenced exactly once. No pickle anywhere. Replies (``progress``,
``result``, ``error``, ...) carry the ``id`` of the request they answer.

Message table (client -> server)
--------------------------------
=========  =====================================================================================
hello      client (str), protocol (int)                       -> ``welcome`` or ``error``
edit       model (name), image (spec: the native crop) | image_id (str), handles, targets
           ([[x, y], ...] float crop pixels), mask (spec, uint8 H x W, 255 = may move; optional),
           params (EditParams), align ("auto"|"off", default "off"), result ("detail"|"model",
           default "detail"; protocol 4)
                                                              -> ``progress``* then ``result``/``error``
continue   session_id, handles, targets, mask (optional), params (optional), result (optional: as
           the session's last); points and mask in the session's crop frame
                                                              -> ``progress``* then ``result``/``error``
cancel     job (request id of an edit/continue/undo; null = all of this client's jobs) -> ``cancel_ok``
stop       job (request id of a running edit/continue; protocol 4): end its drag at the next step and
           answer it with the result so far (``result.stopped``) -> ``stop_ok``
undo       session_id, result (optional: as the session's last; protocol 4): back to the state before
           the session's last drag                            -> ``progress``* then ``result``/``error``
ping       (no fields)                                        -> ``pong``  (the heartbeat)
purge      (no fields): forget this client's cached images and sessions -> ``purged``
=========  =====================================================================================

Message table (server -> client)
--------------------------------
=========  =====================================================================================
welcome    server, protocol, device, memory_total, memory_used (bytes; 0 = unknown), models
           [{name, width, height, loaded, alignment ("none"|"ffhq"|"faces"), framing ("any"|"whole")}],
           heartbeat_s,
           instance (random per server start),
           auth ("curve"|"none"), cache (bool), queue_limit, running, waiting (jobs now),
           limits {max_message_bytes, max_frame_bytes, max_image_side, max_points, max_peers},
           stores {photos, sessions, owners, queue, peers, ... and their *_max caps} (optional)
progress   phase (queued|loading|inversion|drag), step, total, points, loss, position (in queue),
           inversion {psnr, stlpips, from_cache} (optional), preview (spec, optional), text,
           preview_frame ("model"|"crop"), preview_offset ([x, y] crop pixels; protocol 4)
result     image (spec), points, session_id, image_id, inversion (optional), steps, seconds,
           frame ("crop"), offset ([x, y] crop pixels), alignment ("none"|"ffhq"|"faces"), note,
           landed ([bool] per handle; protocol 4), stopped (bool), history (int; protocol 4)
error      code (ErrorCode), message (for a person), field (offending field or ""), trace_id
pong       instance, jobs (request ids of this connection's queued/running jobs)
cancel_ok  cancelled (int) / purged: images, sessions (ints)
stop_ok    stopping (int: the jobs that will end with their result so far)
=========  =====================================================================================

Live drags (protocol 4): ``params.preview_frame="crop"`` asks for previews already placed in the crop's
frame: each ``progress.preview`` is then RGBA in the sent crop's pixels, cut to the area the model's
frame covers (alpha 255 there) at ``progress.preview_offset``, exactly as a ``result`` is placed (the
server applies the crop <-> model transform it keeps, face alignment included), so a client paints it
where the result will go without knowing the transform; it holds the model's pixels (the result of a
"detail" drag is the picture's own pixels moved: the preview is the quick look, the result the full
quality). ``"model"`` (default): the model's frame, RGB, as before. ``stop`` ends a running drag early
and keeps it: the job answers ``result`` (``stopped`` true) with the state at the step it reached,
which the session continues from; a job stopped before its drag began (queued, loading, inverting)
has nothing to keep and ends with ``error`` ``cancelled``. A ``cancel``led drag leaves the session as
it was before that drag. Every session keeps the states before its last drags (at least 8: the
first is the inversion's, before any drag); ``undo`` restores the newest and answers its picture as a
``result`` (the same bytes the drag before it answered; ``points`` are that state's handles) whose
``history`` says how many more undos the session holds; with none left it answers ``error``
``bad_request``.

Native crops and the picture's own pixels (protocol 4): every ``edit`` carries the crop at its own
resolution (any size up to MAX_IMAGE_SIDE a side); handles, targets and mask are in its pixels. The
server maps the crop into the model's frame (the whole crop scaled to the model's size, or a face
alignment, below), inverts and drags there, and answers ``frame="crop"``: RGBA in the crop's frame,
alpha 255 on the area the model's frame covers, cut to that area's bounding box at ``offset``.
``result="detail"`` (default): the crop's own pixels moved by the motion the drag made, the model's
pixels only where the drag made new content, every pixel outside the moved region (and outside the
mask) exactly the crop's; ``"model"``: the model's output resampled into the crop (protocol 3's
result). ``result.landed`` says, per handle, whether the drag's dense motion carries the handle's
content to its target (False: the drag stopped short there, whatever the point tracker reported).
Without a mask, ``params.region="points"`` (default) lets the drag move only a box around the points;
``"whole"`` lets it move the whole crop.

Face alignment (protocol 3): an ``edit`` with ``align="auto"`` for a model whose ``alignment`` is
not "none" ("ffhq"; or "faces", added on 2026-11-28: a protocol-3 peer from before that rejects a
welcome that lists it) carries a *native-resolution* crop of any size up to MAX_IMAGE_SIDE (2048)
per side instead of a model-sized one (2048 x 2048 RGB is 12 MiB, its mask 4 MiB: inside MAX_MESSAGE_BYTES, and each
frame inside MAX_FRAME_BYTES = ZMQ_MAXMSGSIZE); handles, targets and mask are in that crop's pixels.
The server finds the face (the one holding the handles), warps everything into the model's frame,
inverts and drags there, and answers ``frame="crop"``: an RGBA image in the crop's frame whose alpha
is 255 exactly on the area the model produced, cut to that area's bounding box, at ``offset`` in
the crop; ``points`` are crop pixels. No face: the server edits a model-shaped box around the points
of the same crop (``alignment="none"``) and says so in ``note`` and the progress text. ``continue``
on such a session reuses the stored transform. Any other edit is as in protocol 2 (model-sized image,
``frame="model"``).

Heartbeats: while it waits for a job, the client sends ``ping`` at least twice per ``heartbeat_s``
(from ``welcome``); the server aborts the jobs of a client it has not heard from for two intervals. The
server answers every ping with ``pong`` (its instance id and the connection's jobs), so the client's
timeouts are about inactivity, never total duration, and a restarted server (new instance) or a
lost job is noticed at the next heartbeat.

Every validation failure raises :class:`ProtocolError` with an :class:`ErrorCode` and a message naming
the field, e.g. ``fields.handles[2]: expected [x, y] with two finite numbers, got [1, 'a']``.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

# 2: identity token in every request header; routing ids grant nothing.
# 3: face alignment: ``edit.align``; for a model whose ``alignment`` (welcome) is not "none", an
#    ``align="auto"`` edit sends a native-resolution crop (any size up to MAX_IMAGE_SIDE) and gets back
#    ``result.frame="crop"`` (RGBA in that crop's frame at ``result.offset``).
# 4: every edit sends its native crop and gets RGBA in the crop's frame; ``edit.result`` ("detail":
#    the picture's own pixels moved; "model"), ``params.region``, ``params.pti`` may be absent (the
#    model's own), ``result.landed``; live drags: ``stop``, ``undo``, ``params.preview_frame``,
#    ``progress.preview_frame``/``preview_offset``, ``result.stopped``/``history``.
PROTOCOL_VERSION = 4

# ---------------------------------------------------------------------------------------------
# Limits, checked before any work is done. Both sides set zmq.MAXMSGSIZE to MAX_FRAME_BYTES so that
# a larger *frame* is dropped by libzmq before it is buffered.
MAX_IMAGE_SIDE = 2048  # pixels, per side (models are at most 1024; alignment crops are capped here)
MAX_HEADER_BYTES = 64 * 1024
# One frame: a 2048 x 2048 RGBA raw image (16 MiB), or its PNG (a PNG of noise is slightly larger
# than the raw pixels: zlib's stored blocks and one filter byte per row, hence the 1/64 margin).
MAX_FRAME_BYTES = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 4 + (MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 4) // 64
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES + MAX_IMAGE_SIDE * MAX_IMAGE_SIDE + MAX_HEADER_BYTES  # image + mask + header
MAX_FRAMES = 3  # header + image + mask
MAX_POINTS = 64  # handle/target pairs per edit
MAX_ID_LENGTH = 64
MAX_STEPS = 5000
MAX_TEXT = 1000  # characters in free text fields (client name, messages)
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")  # 64 = MAX_ID_LENGTH; always used with fullmatch
TOKEN_PATTERN = re.compile(r"[0-9a-f]{64}")  # the identity token: 32 bytes as lower-case hex (fullmatch)
# Integers beyond this are refused before any float conversion (a 400-digit integer overflows it).
_MAX_ABS_NUMBER = 1e300

PHASES = ("queued", "loading", "inversion", "drag")
LATENT_SPACES = ("w", "w+")
INVERSION_PRESETS = ("fast", "quality")
IMAGE_FORMATS = ("raw", "png")
ALIGN_OPTIONS = ("auto", "off")  # edit.align: auto = the model's registry alignment; off = none
ALIGNMENTS = ("none", "ffhq", "faces")  # a model's alignment kind (alignment/align.py ALIGNMENTS)
# what a model draws, for the client's automatic crop: "any" = any part of a scene (crop around the
# points), "whole" = whole subjects framed as in its training data (send the whole layer)
FRAMINGS = ("any", "whole")
RESULT_FRAMES = ("model", "crop")  # result.frame: protocol 4 servers answer "crop" (RGBA in the sent crop's frame)
PREVIEW_FRAMES = ("model", "crop")  # params.preview_frame: the model's frame (RGB) or placed in the crop (RGBA)
RESULT_MODES = ("detail", "model")  # edit.result: the picture's own pixels moved, or the model's pixels
REGIONS = ("points", "whole")  # params.region without a mask: a box around the points, or the whole crop


class ErrorCode:
    """Error codes on the wire (``error.code``). Strings, stable across versions."""

    BAD_REQUEST = "bad_request"  # a field is missing, of the wrong type or out of range
    TOO_LARGE = "too_large"  # message, frame, image or point count over a limit
    UNKNOWN_TYPE = "unknown_type"  # message type not in this protocol
    VERSION_MISMATCH = "version_mismatch"  # client and server speak different PROTOCOL_VERSIONs
    UNKNOWN_MODEL = "unknown_model"  # model name not installed / not served
    UNKNOWN_IMAGE = "unknown_image"  # image_id not cached for this client (expired, purged, other client)
    UNKNOWN_SESSION = "unknown_session"  # session_id not held for this client
    BUSY = "busy"  # queue full; retry later
    CANCELLED = "cancelled"  # the job was cancelled (by the client, a lost heartbeat or shutdown)
    OUT_OF_MEMORY = "out_of_memory"  # GPU/host memory exhausted; memory was freed
    SHUTTING_DOWN = "shutting_down"  # server is stopping
    INTERNAL = "internal"  # a bug; the server log has the trace id
    # client-side only (never sent by the server)
    TIMEOUT = "timeout"  # no message from the server for too long
    UNAVAILABLE = "unavailable"  # no server answers at the endpoint
    AUTH = "auth"  # CURVE keys missing or wrong


class ProtocolError(Exception):
    """A message (or a reply) violates the protocol, or the server reported an error.

    ``code`` is one of :class:`ErrorCode`; ``field`` names the offending field ("" when none);
    ``trace_id`` is set for server errors that were logged.
    """

    def __init__(self, code: str, message: str, field: str = "", trace_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.trace_id = trace_id

    def __str__(self) -> str:
        suffix = f" (trace id {self.trace_id})" if self.trace_id else ""
        return f"[{self.code}] {self.message}{suffix}"


def _bad(field_name: str, what: str, code: str = ErrorCode.BAD_REQUEST) -> ProtocolError:
    return ProtocolError(code, f"{field_name}: {what}", field=field_name)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------
# Images


@dataclass
class Image:
    """Raw 8-bit pixels, row-major ``height x width x channels`` (channels 1, 3 or 4)."""

    width: int
    height: int
    channels: int
    data: bytes

    def __post_init__(self) -> None:
        if self.channels not in (1, 3, 4):
            raise ValueError(f"channels must be 1, 3 or 4, got {self.channels}")
        if len(self.data) != self.width * self.height * self.channels:
            raise ValueError(
                f"image data has {len(self.data)} bytes, expected {self.height}x{self.width}x{self.channels}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_png(self, level: int = 6) -> bytes:
        return encode_png(self, level)

    @classmethod
    def from_png(cls, data: bytes) -> Image:
        return decode_png(data)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: 1, 2: 3, 6: 4}  # PNG colour type -> channels
_PNG_CHANNEL_TYPES = {v: k for k, v in _PNG_COLOR_TYPES.items()}


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode_png(image: Image, level: int = 6) -> bytes:
    """PNG bytes for ``image`` (8-bit, filter type 0 on every row; zlib only)."""
    row = image.width * image.channels
    raw = b"".join(b"\x00" + image.data[y * row : (y + 1) * row] for y in range(image.height))
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, _PNG_CHANNEL_TYPES[image.channels], 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, level))
        + _png_chunk(b"IEND", b"")
    )


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes, field_name: str = "png", max_side: int = MAX_IMAGE_SIDE) -> Image:
    """Decode an 8-bit, non-interlaced gray/RGB/RGBA PNG. Raises ProtocolError naming ``field_name``.

    Pure Python (filters Sub/Up/Average/Paeth are reconstructed per byte): slow (seconds for a
    2048 px Paeth image), so only the plug-in's side uses it. The server never calls it: it reads
    the size with :func:`png_info` and decodes with Pillow off its socket loop.
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise _bad(field_name, "not a PNG (bad signature)")
    pos = len(_PNG_SIGNATURE)
    width = height = channels = 0
    idat: list[bytes] = []
    seen_header = False
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        if len(payload) != length:
            raise _bad(field_name, "truncated PNG chunk")
        pos += 12 + length
        if kind == b"IHDR":
            if length != 13:
                raise _bad(field_name, "bad PNG header")
            width, height, depth, color, _comp, _filt, interlace = struct.unpack(">IIBBBBB", payload)
            if depth != 8 or color not in _PNG_COLOR_TYPES or interlace != 0:
                raise _bad(field_name, "only 8-bit non-interlaced gray, RGB or RGBA PNGs are accepted")
            channels = _PNG_COLOR_TYPES[color]
            seen_header = True
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            break
    if not seen_header:
        raise _bad(field_name, "PNG has no header chunk")
    _check_side(field_name, width, height, max_side)
    row = width * channels
    expected = (row + 1) * height
    try:
        decompressor = zlib.decompressobj()
        raw = decompressor.decompress(b"".join(idat), expected + 1)  # bounded: no zip bombs
    except zlib.error as exc:
        raise _bad(field_name, f"corrupt PNG data ({exc})") from None
    if len(raw) != expected:
        raise _bad(field_name, f"PNG data has {len(raw)} bytes after inflating, expected {expected}")
    out = bytearray(row * height)
    prev = bytearray(row)
    bpp = channels
    for y in range(height):
        filter_type = raw[y * (row + 1)]
        line = bytearray(raw[y * (row + 1) + 1 : (y + 1) * (row + 1)])
        if filter_type == 1:
            for i in range(bpp, row):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif filter_type == 2:
            for i in range(row):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif filter_type == 3:
            for i in range(row):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif filter_type == 4:
            for i in range(row):
                left = line[i - bpp] if i >= bpp else 0
                up_left = prev[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, prev[i], up_left)) & 0xFF
        elif filter_type != 0:
            raise _bad(field_name, f"bad PNG filter type {filter_type} on row {y}")
        out[y * row : (y + 1) * row] = line
        prev = line
    return Image(width, height, channels, bytes(out))


def png_info(data: bytes, field_name: str = "png", max_side: int = MAX_IMAGE_SIDE) -> tuple[int, int, int]:
    """(width, height, channels) from a PNG's signature and IHDR chunk alone: no decompression.

    Enforces what :func:`decode_png` accepts (8-bit, non-interlaced gray/RGB/RGBA) and the side
    limit, so a payload can be refused before anyone spends time decoding it."""
    if not data.startswith(_PNG_SIGNATURE):
        raise _bad(field_name, "not a PNG (bad signature)")
    head = data[len(_PNG_SIGNATURE) : len(_PNG_SIGNATURE) + 8 + 13]
    if len(head) != 21 or head[4:8] != b"IHDR" or struct.unpack(">I", head[:4])[0] != 13:
        raise _bad(field_name, "PNG has no header chunk (IHDR must come first)")
    width, height, depth, color, _comp, _filt, interlace = struct.unpack(">IIBBBBB", head[8:])
    if depth != 8 or color not in _PNG_COLOR_TYPES or interlace != 0:
        raise _bad(field_name, "only 8-bit non-interlaced gray, RGB or RGBA PNGs are accepted")
    _check_side(field_name, width, height, max_side)
    return width, height, _PNG_COLOR_TYPES[color]


@dataclass
class PendingImage:
    """A PNG payload whose spec was checked (size and channels from its header) but which is not
    decoded yet: the server decodes it in its worker (``backend.worker.decode_pending``)."""

    width: int
    height: int
    channels: int
    png: bytes
    field: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def _check_side(field_name: str, width: int, height: int, max_side: int = MAX_IMAGE_SIDE) -> None:
    if not (1 <= width <= max_side and 1 <= height <= max_side):
        raise _bad(
            field_name,
            f"image is {width}x{height}; each side must be 1..{max_side} pixels",
            ErrorCode.TOO_LARGE if max(width, height) > max_side else ErrorCode.BAD_REQUEST,
        )


# ---------------------------------------------------------------------------------------------
# Field validators: each returns the clean value or raises ProtocolError naming the field.


def is_finite_number(value: Any) -> bool:
    """A JSON number that is finite as a float (not a bool; integers too large for a float are not:
    math.isfinite would raise OverflowError on them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return -_MAX_ABS_NUMBER <= value <= _MAX_ABS_NUMBER
    return math.isfinite(value)


def is_unicode_text(value: str) -> bool:
    """Whether every character is a Unicode scalar value. JSON's ``\\ud800`` escapes decode to lone
    surrogates, which cannot be encoded as UTF-8: such a string would break whatever writes it
    later (a log line, a reply), so it is refused where it enters."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int(fields: dict[str, Any], name: str, path: str, lo: int, hi: int, default: int | None = None) -> int:
    value = fields.get(name, default)
    if value is None:
        raise _bad(f"{path}.{name}", "missing (an integer is required)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{path}.{name}", f"expected an integer, got {_show(value)}")
    if not lo <= value <= hi:
        raise _bad(f"{path}.{name}", f"must be in {lo}..{hi}, got {value}")
    return value


def _float(
    fields: dict[str, Any],
    name: str,
    path: str,
    lo: float,
    hi: float,
    default: float | None = None,
    lo_open: bool = False,
) -> float:
    value = fields.get(name, default)
    if value is None:
        raise _bad(f"{path}.{name}", "missing (a number is required)")
    if not is_finite_number(value):
        raise _bad(f"{path}.{name}", f"expected a finite number, got {_show(value)}")
    if value < lo or value > hi or (lo_open and value == lo):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise _bad(f"{path}.{name}", f"must be in {interval}, got {value}")
    return float(value)


def _bool(fields: dict[str, Any], name: str, path: str, default: bool | None = None) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise _bad(f"{path}.{name}", f"expected true or false, got {_show(value)}")
    return value


def _str(
    fields: dict[str, Any],
    name: str,
    path: str,
    default: str | None = None,
    choices: Sequence[str] | None = None,
    pattern: re.Pattern[str] | None = None,
    max_len: int = MAX_TEXT,
) -> str:
    value = fields.get(name, default)
    if not isinstance(value, str):
        raise _bad(f"{path}.{name}", f"expected a string, got {_show(value)}")
    if len(value) > max_len:
        raise _bad(f"{path}.{name}", f"longer than {max_len} characters")
    if not is_unicode_text(value):
        raise _bad(f"{path}.{name}", "is not valid Unicode text (it holds a lone surrogate escape such as \\ud800)")
    if choices is not None and value not in choices:
        raise _bad(f"{path}.{name}", f"must be one of {', '.join(choices)}; got {_show(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _bad(
            f"{path}.{name}",
            f"must be 1..{MAX_ID_LENGTH} characters of A-Z a-z 0-9 _ . : -; got {_show(value)}",
        )
    return value


def _opt_id(fields: dict[str, Any], name: str, path: str) -> str | None:
    if fields.get(name) is None:
        return None
    return _str(fields, name, path, pattern=ID_PATTERN)


Point = tuple[float, float]


def validate_points(value: Any, field_name: str, max_points: int = MAX_POINTS) -> list[Point]:
    """``[[x, y], ...]`` of finite numbers (pixels, x then y) -> list of float tuples."""
    if not isinstance(value, list):
        raise _bad(field_name, f"expected a list of [x, y] points, got {_show(value)}")
    if not value:
        raise _bad(field_name, "needs at least one point")
    if len(value) > max_points:
        raise _bad(field_name, f"{len(value)} points; at most {max_points} are allowed", ErrorCode.TOO_LARGE)
    points: list[Point] = []
    for i, p in enumerate(value):
        if (
            not isinstance(p, (list, tuple))
            or len(p) != 2
            or not all(is_finite_number(c) for c in p)
        ):
            raise _bad(f"{field_name}[{i}]", f"expected [x, y] with two finite numbers, got {_show(p)}")
        points.append((float(p[0]), float(p[1])))
    return points


def _points(fields: dict[str, Any], name: str, path: str) -> list[Point]:
    if name not in fields:
        raise _bad(f"{path}.{name}", "missing (a list of [x, y] points is required)")
    return validate_points(fields[name], f"{path}.{name}")


def _handles_targets(fields: dict[str, Any], path: str) -> tuple[list[Point], list[Point]]:
    handles = _points(fields, "handles", path)
    targets = _points(fields, "targets", path)
    if len(handles) != len(targets):
        raise _bad(
            f"{path}.targets",
            f"{len(targets)} targets for {len(handles)} handles; every handle needs exactly one target",
        )
    return handles, targets


def _points_out(points: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[float(p[0]), float(p[1])] for p in points]


# ---------------------------------------------------------------------------------------------
# Message types. Each has TYPE, to_fields(add_frame) -> JSON fields, from_fields(fields, frames).

FrameAdder = Any  # Callable[[Image, str], dict]: stores an image in a frame and returns its spec


class _Frames:
    """The binary frames of one message being decoded: resolves image specs, checks each is used once."""

    def __init__(self, frames: Sequence[bytes], defer_png: bool = False) -> None:
        self.frames = frames
        self.used: set[int] = set()
        self.defer_png = defer_png

    def image(self, spec: Any, field_name: str, channels: Sequence[int] = (1, 3, 4)) -> Image:
        image = self.any_image(spec, field_name, channels)
        if isinstance(image, PendingImage):  # only request fields may stay encoded
            return decode_png(image.png, field_name)
        return image

    def any_image(self, spec: Any, field_name: str, channels: Sequence[int] = (1, 3, 4)) -> Image | PendingImage:
        """The image a spec names: decoded, or (``defer_png``) a checked but undecoded PNG."""
        if not isinstance(spec, dict):
            raise _bad(field_name, f"expected an image spec {{frame, format, shape}}, got {_show(spec)}")
        index = spec.get("frame")
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index < len(self.frames) + 1:
            raise _bad(
                f"{field_name}.frame",
                f"must name one of the {len(self.frames)} binary frames (1..{len(self.frames)}), got {_show(index)}",
            )
        if index in self.used:
            raise _bad(f"{field_name}.frame", f"frame {index} is referenced twice")
        self.used.add(index)
        data = bytes(self.frames[index - 1])  # frames may be memoryviews of zmq frames
        fmt = spec.get("format", "raw")
        image: Image | PendingImage
        if fmt == "png" and self.defer_png:
            width, height, depth = png_info(data, field_name)
            image = PendingImage(width, height, depth, data, field_name)
        elif fmt == "png":
            image = decode_png(data, field_name)
        elif fmt == "raw":
            shape = spec.get("shape")
            if (
                not isinstance(shape, list)
                or len(shape) not in (2, 3)
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
            ):
                raise _bad(f"{field_name}.shape", f"expected [H, W] or [H, W, C] integers, got {_show(shape)}")
            height, width = shape[0], shape[1]
            depth = shape[2] if len(shape) == 3 else 1
            _check_side(f"{field_name}.shape", width, height)
            if depth not in (1, 3, 4):
                raise _bad(f"{field_name}.shape", f"channels must be 1, 3 or 4, got {depth}")
            if spec.get("dtype", "uint8") != "uint8":
                raise _bad(f"{field_name}.dtype", f"only uint8 is accepted, got {_show(spec.get('dtype'))}")
            if len(data) != width * height * depth:
                raise _bad(
                    field_name,
                    f"frame {index} has {len(data)} bytes; shape {shape} of uint8 needs {width * height * depth}",
                )
            image = Image(width, height, depth, bytes(data))
        else:
            raise _bad(f"{field_name}.format", f"must be one of {', '.join(IMAGE_FORMATS)}, got {_show(fmt)}")
        if image.channels not in channels:
            raise _bad(field_name, f"has {image.channels} channels; allowed: {', '.join(map(str, channels))}")
        return image

    def check_all_used(self) -> None:
        unused = sorted(set(range(1, len(self.frames) + 1)) - self.used)
        if unused:
            raise _bad("frames", f"binary frame(s) {unused} are not referenced by any field")


def _decoded(image: Image | PendingImage) -> Image:
    return decode_png(image.png, image.field) if isinstance(image, PendingImage) else image


class _Encoder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def image(self, image: Image, fmt: str = "raw") -> dict[str, Any]:
        if fmt == "png":
            self.frames.append(encode_png(image))
            return {"frame": len(self.frames), "format": "png"}
        self.frames.append(image.data)
        return {"frame": len(self.frames), "format": "raw", "shape": list(image.shape), "dtype": "uint8"}


@dataclass
class EditParams:
    """Drag and inversion settings (defaults = the engine's, as the DragGAN paper). ``lr``: Adam step
    size on the latent; ``latent``: optimise ``w`` (one vector) or ``w+`` (per layer);
    ``lambda_mask``: weight of the keep-the-unmasked-region loss (None, sent as no field: the model's
    own, which the server takes from its registry: 20, the paper's, unless measured otherwise);
    radii ``r1`` (motion supervision) and ``r2`` (tracking search) in pixels *at 512 px*, scaled to
    the model's height as the official code does (so a 128 px model needs r1 >= 2.5); ``inversion``:
    projection preset;
    ``pti``: pivotal tuning (better likeness, slower; None, sent as no field: the model's own);
    ``preview_every``: steps between preview images (0 = none); ``region``: what may move when there
    is no mask ("points": a box around the points; "whole": everything); ``preview_frame``: previews in
    the model's frame ("model", RGB) or placed in the crop's ("crop", RGBA at progress.preview_offset)."""

    max_steps: int = 300
    lr: float = 0.002
    latent: str = "w+"
    lambda_mask: float | None = None
    r1: float = 3.0
    r2: float = 12.0
    inversion: str = "fast"
    pti: bool | None = None
    preview_every: int = 10
    region: str = "points"
    preview_frame: str = "model"

    def to_fields(self) -> dict[str, Any]:
        # no field for "the model's own" mask weight and PTI
        return {k: v for k, v in vars(self).items() if not (k in ("lambda_mask", "pti") and v is None)}

    @classmethod
    def from_fields(cls, value: Any, path: str = "fields.params") -> EditParams:
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise _bad(path, f"expected an object, got {_show(value)}")
        known = set(vars(cls()))
        extra = sorted(set(value) - known)
        if extra:
            raise _bad(f"{path}.{extra[0]}", f"unknown parameter; known: {', '.join(sorted(known))}")
        d = cls()
        return cls(
            max_steps=_int(value, "max_steps", path, 1, MAX_STEPS, d.max_steps),
            lr=_float(value, "lr", path, 0.0, 1.0, d.lr, lo_open=True),
            latent=_str(value, "latent", path, d.latent, choices=LATENT_SPACES),
            lambda_mask=(None if value.get("lambda_mask") is None
                         else _float(value, "lambda_mask", path, 0.0, 1e4)),
            r1=_float(value, "r1", path, 0.0, 512.0, d.r1, lo_open=True),
            r2=_float(value, "r2", path, 0.0, 1024.0, d.r2),
            inversion=_str(value, "inversion", path, d.inversion, choices=INVERSION_PRESETS),
            pti=None if value.get("pti") is None else _bool(value, "pti", path),
            preview_every=_int(value, "preview_every", path, 0, MAX_STEPS, d.preview_every),
            region=_str(value, "region", path, d.region, choices=REGIONS),
            preview_frame=_str(value, "preview_frame", path, d.preview_frame, choices=PREVIEW_FRAMES),
        )


@dataclass
class Hello:
    TYPE: ClassVar[str] = "hello"
    client: str = ""
    protocol: int = PROTOCOL_VERSION

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {"client": self.client, "protocol": self.protocol}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Hello:
        # protocol numbers start at 1: 0 or less is no protocol this server could ever speak
        return cls(client=_str(f, "client", "fields", ""), protocol=_int(f, "protocol", "fields", 1, 1 << 30))


@dataclass
class Edit:
    """Drag ``handles`` to ``targets`` on ``image`` (or the cached ``image_id``) with model ``model``.

    ``image`` is the native crop, RGB (3), RGBA (4, alpha ignored) or gray (1), any size up to
    MAX_IMAGE_SIDE a side; ``mask`` is one channel at the same size, 255 = may move, 0 = keep (values in
    between are soft); points are the crop's pixels. ``result``: RESULT_MODES."""

    TYPE: ClassVar[str] = "edit"
    model: str
    handles: list[Point]
    targets: list[Point]
    image: Image | PendingImage | None = None  # PendingImage only on the server, until its worker decodes it
    image_id: str | None = None
    mask: Image | PendingImage | None = None
    params: EditParams = field(default_factory=EditParams)
    image_format: str = "raw"  # how to send ``image`` (raw or png); not itself on the wire
    # "auto": align the face as the model's training data was (models whose alignment is not "none");
    # "off": the whole crop is scaled to the model's frame
    align: str = "off"
    result: str = "detail"

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "handles": _points_out(self.handles),
            "targets": _points_out(self.targets),
            "params": self.params.to_fields(),
            "align": self.align,
            "result": self.result,
        }
        if self.image is not None:
            out["image"] = enc.image(_decoded(self.image), self.image_format)
        if self.image_id is not None:
            out["image_id"] = self.image_id
        if self.mask is not None:
            out["mask"] = enc.image(_decoded(self.mask), self.image_format)
        return out

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Edit:
        model = _str(f, "model", "fields", pattern=ID_PATTERN)
        handles, targets = _handles_targets(f, "fields")
        image_id = _opt_id(f, "image_id", "fields")
        image = frames.any_image(f["image"], "fields.image") if f.get("image") is not None else None
        if (image is None) == (image_id is None):
            raise _bad("fields.image", "give exactly one of image (a frame) or image_id (a cached image)")
        mask = frames.any_image(f["mask"], "fields.mask", channels=(1,)) if f.get("mask") is not None else None
        if mask is not None and image is not None and (mask.width, mask.height) != (image.width, image.height):
            raise _bad("fields.mask", f"mask is {mask.width}x{mask.height}, image is {image.width}x{image.height}")
        return cls(
            model=model,
            handles=handles,
            targets=targets,
            image=image,
            image_id=image_id,
            mask=mask,
            params=EditParams.from_fields(f.get("params")),
            align=_str(f, "align", "fields", "off", choices=ALIGN_OPTIONS),
            result=_str(f, "result", "fields", "detail", choices=RESULT_MODES),
        )


@dataclass
class Continue:
    """Drag again from a session's current latent (no new inversion). ``params`` / ``result`` None =
    keep the session's."""

    TYPE: ClassVar[str] = "continue"
    session_id: str
    handles: list[Point]
    targets: list[Point]
    mask: Image | PendingImage | None = None
    params: EditParams | None = None
    result: str | None = None

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        out: dict[str, Any] = {
            "session_id": self.session_id,
            "handles": _points_out(self.handles),
            "targets": _points_out(self.targets),
        }
        if self.mask is not None:
            out["mask"] = enc.image(_decoded(self.mask))
        if self.params is not None:
            out["params"] = self.params.to_fields()
        if self.result is not None:
            out["result"] = self.result
        return out

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Continue:
        session_id = _str(f, "session_id", "fields", pattern=ID_PATTERN)
        handles, targets = _handles_targets(f, "fields")
        mask = frames.any_image(f["mask"], "fields.mask", channels=(1,)) if f.get("mask") is not None else None
        params = EditParams.from_fields(f["params"]) if f.get("params") is not None else None
        result = None if f.get("result") is None else _str(f, "result", "fields", choices=RESULT_MODES)
        return cls(session_id=session_id, handles=handles, targets=targets, mask=mask, params=params,
                   result=result)


@dataclass
class Cancel:
    TYPE: ClassVar[str] = "cancel"
    job: str | None = None  # request id of the edit/continue; None = every job of this client

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {"job": self.job}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Cancel:
        return cls(job=_opt_id(f, "job", "fields"))


@dataclass
class Stop:
    """End the running drag of job ``job`` at its next step and keep it: the job answers its ``result``
    (``stopped`` true). A job that has not begun its drag ends with ``cancelled`` instead."""

    TYPE: ClassVar[str] = "stop"
    job: str = ""  # request id of the edit/continue

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {"job": self.job}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Stop:
        return cls(job=_str(f, "job", "fields", pattern=ID_PATTERN))


@dataclass
class Undo:
    """Take back the session's last drag: the session returns to the state before it, and the job
    answers that state's picture as a ``result``. ``result`` None = the session's mode."""

    TYPE: ClassVar[str] = "undo"
    session_id: str
    result: str | None = None

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        out: dict[str, Any] = {"session_id": self.session_id}
        if self.result is not None:
            out["result"] = self.result
        return out

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Undo:
        result = None if f.get("result") is None else _str(f, "result", "fields", choices=RESULT_MODES)
        return cls(session_id=_str(f, "session_id", "fields", pattern=ID_PATTERN), result=result)


@dataclass
class Ping:
    TYPE: ClassVar[str] = "ping"

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Ping:
        return cls()


@dataclass
class Purge:
    TYPE: ClassVar[str] = "purge"

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Purge:
        return cls()


@dataclass
class ModelEntry:
    """A model the server can use: output ``width`` x ``height`` pixels (0 x 0 = not known until it
    is first loaded), ``loaded`` = in memory now (no ``loading`` phase). ``poor_stlpips`` /
    ``poor_psnr_db``: the model's "poor inversion" thresholds (ST-LPIPS above / PSNR below; 0 = not
    sent, the client's defaults apply), calibrated per model in backend/models.py."""

    name: str
    width: int
    height: int
    loaded: bool
    poor_stlpips: float = 0.0
    poor_psnr_db: float = 0.0
    alignment: str = "none"  # "ffhq"/"faces": an align="auto" edit sends a native crop (protocol 3)
    framing: str = "any"  # FRAMINGS; absent from older servers = "any"


@dataclass
class Welcome:
    """Reply to ``hello``. Memory in bytes (0 = unknown)."""

    TYPE: ClassVar[str] = "welcome"
    server: str
    protocol: int
    device: str
    models: list[ModelEntry]
    memory_total: int = 0
    memory_used: int = 0
    heartbeat_s: float = 2.0
    instance: str = ""  # random per server start: a changed instance means the server restarted
    auth: str = "none"
    cache: bool = True
    queue_limit: int = 4
    running: int = 0  # jobs running now (0 or 1)
    waiting: int = 0  # jobs queued behind it
    limits: dict[str, int] = field(
        default_factory=lambda: {
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "max_frame_bytes": MAX_FRAME_BYTES,
            "max_image_side": MAX_IMAGE_SIDE,
            "max_points": MAX_POINTS,
        }
    )
    # how full the server is (``draggan-backend status``): photos, sessions, owners, queue, peers
    # and their caps (``*_max``); counts only, absent from older servers
    stores: dict[str, int] = field(default_factory=dict)

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "models"}
        out["models"] = [vars(m) for m in self.models]
        return out

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Welcome:
        raw_models = f.get("models")
        if not isinstance(raw_models, list):
            raise _bad("fields.models", f"expected a list, got {_show(raw_models)}")
        models = []
        for i, m in enumerate(raw_models):
            if not isinstance(m, dict):
                raise _bad(f"fields.models[{i}]", f"expected an object, got {_show(m)}")
            path = f"fields.models[{i}]"
            models.append(
                ModelEntry(
                    name=_str(m, "name", path),
                    width=_int(m, "width", path, 0, 1 << 16),
                    height=_int(m, "height", path, 0, 1 << 16),
                    loaded=_bool(m, "loaded", path, False),
                    poor_stlpips=_float(m, "poor_stlpips", path, 0.0, 100.0, 0.0),
                    poor_psnr_db=_float(m, "poor_psnr_db", path, 0.0, 1000.0, 0.0),
                    alignment=_str(m, "alignment", path, "none", choices=ALIGNMENTS),
                    framing=_str(m, "framing", path, "any", choices=FRAMINGS),
                )
            )
        limits = f.get("limits") or {}
        if not isinstance(limits, dict):
            raise _bad("fields.limits", f"expected an object, got {_show(limits)}")
        stores = f.get("stores") or {}
        if not isinstance(stores, dict):
            raise _bad("fields.stores", f"expected an object, got {_show(stores)}")
        return cls(
            server=_str(f, "server", "fields"),
            protocol=_int(f, "protocol", "fields", 0, 1 << 30),
            device=_str(f, "device", "fields"),
            models=models,
            memory_total=_int(f, "memory_total", "fields", 0, 1 << 62, 0),
            memory_used=_int(f, "memory_used", "fields", 0, 1 << 62, 0),
            heartbeat_s=_float(f, "heartbeat_s", "fields", 0.0, 3600.0, 2.0, lo_open=True),
            instance=_str(f, "instance", "fields", ""),
            auth=_str(f, "auth", "fields", "none"),
            cache=_bool(f, "cache", "fields", True),
            queue_limit=_int(f, "queue_limit", "fields", 0, 1 << 20, 0),
            running=_int(f, "running", "fields", 0, 1 << 20, 0),
            waiting=_int(f, "waiting", "fields", 0, 1 << 20, 0),
            limits={str(k): int(v) for k, v in limits.items()
                    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1 << 62},
            stores={str(k): int(v) for k, v in stores.items()
                    if is_unicode_text(str(k)) and len(str(k)) <= 64 and isinstance(v, int)
                    and not isinstance(v, bool) and 0 <= v <= 1 << 62},
        )


@dataclass
class InversionQuality:
    """How well the photo was reproduced: PSNR in dB, ST-LPIPS distance (lower is better), and the worst
    local colour difference (``colour``: CIE76 delta E averaged over a few pixels, the spot where the
    likeness changed most, e.g. an eye colour; at ``colour_at`` (x, y) in the model's frame; 0 = not
    measured; protocol 4)."""

    psnr: float
    stlpips: float
    from_cache: bool = False
    colour: float = 0.0
    colour_at: tuple[int, int] = (0, 0)

    @classmethod
    def from_value(cls, value: Any, path: str) -> InversionQuality | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _bad(path, f"expected an object, got {_show(value)}")
        return cls(
            psnr=_float(value, "psnr", path, -1e9, 1e9),
            stlpips=_float(value, "stlpips", path, -1e9, 1e9),
            from_cache=_bool(value, "from_cache", path, False),
            colour=_float(value, "colour", path, 0.0, 1000.0, 0.0),
            colour_at=_offset(value.get("colour_at", [0, 0]), f"{path}.colour_at"),
        )


@dataclass
class Progress:
    TYPE: ClassVar[str] = "progress"
    phase: str
    step: int = 0
    total: int = 0
    points: list[Point] = field(default_factory=list)  # tracked handles so far (drag phase)
    loss: float | None = None
    position: int = 0  # place in the queue (queued phase), 1 = next
    inversion: InversionQuality | None = None
    preview: Image | None = None
    text: str = ""
    # protocol 4, params.preview_frame "crop": the preview is RGBA in the sent crop's pixels, cut to the
    # area the model's frame covers, its top-left pixel at preview_offset (as result.image/offset)
    preview_frame: str = "model"
    preview_offset: tuple[int, int] = (0, 0)

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": self.phase,
            "step": self.step,
            "total": self.total,
            "points": _points_out(self.points),
            "loss": self.loss,
            "position": self.position,
            "text": self.text,
            "inversion": _quality_out(self.inversion),
        }
        if self.preview is not None:
            out["preview"] = enc.image(self.preview)
            out["preview_frame"] = self.preview_frame
            out["preview_offset"] = [int(self.preview_offset[0]), int(self.preview_offset[1])]
        return out

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Progress:
        points = f.get("points") or []
        loss = f.get("loss")
        return cls(
            phase=_str(f, "phase", "fields", choices=PHASES),
            step=_int(f, "step", "fields", 0, 1 << 30, 0),
            total=_int(f, "total", "fields", 0, 1 << 30, 0),
            points=validate_points(points, "fields.points") if points else [],
            loss=None if loss is None else _float(f, "loss", "fields", -1e30, 1e30),
            position=_int(f, "position", "fields", 0, 1 << 20, 0),
            inversion=InversionQuality.from_value(f.get("inversion"), "fields.inversion"),
            preview=frames.image(f["preview"], "fields.preview") if f.get("preview") is not None else None,
            text=_str(f, "text", "fields", ""),
            preview_frame=_str(f, "preview_frame", "fields", "model", choices=PREVIEW_FRAMES),
            preview_offset=_offset(f.get("preview_offset", [0, 0]), "fields.preview_offset"),
        )


@dataclass
class Result:
    TYPE: ClassVar[str] = "result"
    image: Image
    points: list[Point]
    session_id: str
    image_id: str = ""  # "" when the server runs with --no-cache
    inversion: InversionQuality | None = None
    steps: int = 0
    seconds: float = 0.0
    # "crop" (every protocol 4 result): ``image`` is RGBA in the sent crop's frame, alpha 255 exactly
    # where the model's frame covers the pixel, cut to that area's bounding box whose top-left corner is
    # at ``offset`` (x, y crop pixels); points are crop pixels. ("model": protocol 2's model-sized image.)
    frame: str = "crop"
    offset: tuple[int, int] = (0, 0)
    alignment: str = "none"  # the model's kind ("ffhq"/"faces") when the face was aligned
    note: str = ""  # notes for a person (alignment, the region that could move)
    landed: list[bool] = field(default_factory=list)  # per handle: the dense motion carries it to its target
    stopped: bool = False  # the client stopped the drag: this is the state at the step it reached
    history: int = 0  # how many drags of the session ``undo`` can still take back

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {
            "image": enc.image(self.image),
            "points": _points_out(self.points),
            "session_id": self.session_id,
            "image_id": self.image_id,
            "inversion": _quality_out(self.inversion),
            "steps": self.steps,
            "seconds": self.seconds,
            "frame": self.frame,
            "offset": [int(self.offset[0]), int(self.offset[1])],
            "alignment": self.alignment,
            "note": self.note,
            "landed": [bool(v) for v in self.landed],
            "stopped": bool(self.stopped),
            "history": int(self.history),
        }

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Result:
        if f.get("image") is None:
            raise _bad("fields.image", "missing")
        return cls(
            image=frames.image(f["image"], "fields.image"),
            points=validate_points(f.get("points"), "fields.points"),
            session_id=_str(f, "session_id", "fields"),
            image_id=_str(f, "image_id", "fields", ""),
            inversion=InversionQuality.from_value(f.get("inversion"), "fields.inversion"),
            steps=_int(f, "steps", "fields", 0, 1 << 30, 0),
            seconds=_float(f, "seconds", "fields", 0.0, 1e9, 0.0),
            frame=_str(f, "frame", "fields", "crop", choices=RESULT_FRAMES),
            offset=_offset(f.get("offset", [0, 0]), "fields.offset"),
            alignment=_str(f, "alignment", "fields", "none", choices=ALIGNMENTS),
            note=_str(f, "note", "fields", ""),
            landed=_bools(f.get("landed", []), "fields.landed"),
            stopped=_bool(f, "stopped", "fields", False),
            history=_int(f, "history", "fields", 0, 1 << 20, 0),
        )


def _bools(value: Any, field_name: str) -> list[bool]:
    if not isinstance(value, list) or len(value) > MAX_POINTS or not all(isinstance(v, bool) for v in value):
        raise _bad(field_name, f"expected a list of at most {MAX_POINTS} true/false values, got {_show(value)}")
    return list(value)


def _quality_out(quality: InversionQuality | None) -> dict[str, Any] | None:
    if quality is None:
        return None
    return {**vars(quality), "colour_at": [int(quality.colour_at[0]), int(quality.colour_at[1])]}


def _offset(value: Any, field_name: str) -> tuple[int, int]:
    """``[x, y]`` whole pixels in 0..MAX_IMAGE_SIDE (where a crop-frame result sits in its crop)."""
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_IMAGE_SIDE for v in value)):
        raise _bad(field_name, f"expected [x, y] whole pixels in 0..{MAX_IMAGE_SIDE}, got {_show(value)}")
    return int(value[0]), int(value[1])


@dataclass
class Error:
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    field: str = ""
    trace_id: str = ""

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field, "trace_id": self.trace_id}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Error:
        return cls(
            code=_str(f, "code", "fields"),
            message=_str(f, "message", "fields", "", max_len=1 << 16),
            field=_str(f, "field", "fields", ""),
            trace_id=_str(f, "trace_id", "fields", ""),
        )

    def exception(self) -> ProtocolError:
        return ProtocolError(self.code, self.message, self.field, self.trace_id)

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> Error:
        return cls(code=exc.code, message=exc.message, field=exc.field, trace_id=exc.trace_id)


@dataclass
class Pong:
    """Heartbeat reply. ``jobs``: request ids of this connection's jobs the server holds (queued or
    running) — a client waiting for a job that is not listed knows the job was lost."""

    TYPE: ClassVar[str] = "pong"
    instance: str = ""
    jobs: list[str] = field(default_factory=list)

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {"instance": self.instance, "jobs": list(self.jobs)}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Pong:
        jobs = f.get("jobs", [])
        if not isinstance(jobs, list) or not all(isinstance(j, str) for j in jobs):
            raise _bad("fields.jobs", f"expected a list of request ids, got {_show(jobs)}")
        return cls(instance=_str(f, "instance", "fields", ""), jobs=jobs)


@dataclass
class CancelOk:
    TYPE: ClassVar[str] = "cancel_ok"
    cancelled: int = 0  # number of jobs that were running or queued and are now being stopped

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {"cancelled": self.cancelled}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> CancelOk:
        return cls(cancelled=_int(f, "cancelled", "fields", 0, 1 << 30, 0))


@dataclass
class StopOk:
    TYPE: ClassVar[str] = "stop_ok"
    stopping: int = 0  # running jobs that will end with their result so far (queued ones are cancelled)

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {"stopping": self.stopping}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> StopOk:
        return cls(stopping=_int(f, "stopping", "fields", 0, 1 << 30, 0))


@dataclass
class Purged:
    TYPE: ClassVar[str] = "purged"
    images: int = 0
    sessions: int = 0

    def to_fields(self, enc: _Encoder) -> dict[str, Any]:
        return {"images": self.images, "sessions": self.sessions}

    @classmethod
    def from_fields(cls, f: dict[str, Any], frames: _Frames) -> Purged:
        return cls(
            images=_int(f, "images", "fields", 0, 1 << 30, 0),
            sessions=_int(f, "sessions", "fields", 0, 1 << 30, 0),
        )


REQUEST_TYPES: dict[str, Any] = {c.TYPE: c for c in (Hello, Edit, Continue, Cancel, Stop, Undo, Ping, Purge)}
REPLY_TYPES: dict[str, Any] = {c.TYPE: c for c in (Welcome, Progress, Result, Error, Pong, CancelOk, StopOk,
                                                     Purged)}
# the number of binary frames each type may carry
_MAX_BINARY: dict[str, int] = {"edit": 2, "continue": 1, "progress": 1, "result": 1}

Message = Any  # one of the dataclasses above


@dataclass
class Envelope:
    """A decoded message: its ``type``, the request ``id`` and the typed ``message``."""

    type: str
    id: str
    message: Message
    token: str = ""  # the client's identity token (requests; "" in replies)


def encode(message: Message, request_id: str, token: str = "") -> list[bytes]:
    """Frames for ``message`` (one of the message dataclasses) answering/being request ``request_id``.
    ``token``: the client's identity token; every request needs one (protocol 2)."""
    enc = _Encoder()
    fields = message.to_fields(enc)
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": message.TYPE, "id": request_id}
    if token:
        header["token"] = token
    header["fields"] = fields
    return [json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8"), *enc.frames]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different. With duplicates the last one would silently win
    in json.loads, so two readers (or a proxy and this server) could see different messages."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_show(key)}")
            seen.add(key)
    return out


def _loads(data: bytes) -> Any:
    """The one JSON reader for headers: no NaN/Infinity, no duplicate keys."""
    return json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def check_sizes(frames: Sequence[bytes], max_frames: int = MAX_FRAMES, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """Frame count, header size and total size limits; cheap, before any parsing."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty message (no header frame)", "header")
    if len(frames) > max_frames:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(frames)} frames; at most {max_frames} are allowed", "frames")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"header is {len(frames[0])} bytes; at most {MAX_HEADER_BYTES}", "header"
        )
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {total} bytes; at most {max_bytes}", "frames")


def peek_header(frame: bytes) -> tuple[str, str]:
    """(type, id) from a header frame, "" where unreadable — so an error reply can name the request."""
    try:
        header = _loads(frame)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "", ""
    if not isinstance(header, dict):
        return "", ""
    mtype, rid = header.get("type"), header.get("id")
    return (
        mtype if isinstance(mtype, str) and len(mtype) <= 32 else "",
        rid if isinstance(rid, str) and ID_PATTERN.fullmatch(rid) else "",
    )


def decode(
    frames: Sequence[bytes],
    allowed: dict[str, Any] | None = None,
    max_frames: int = MAX_FRAMES,
    max_bytes: int = MAX_MESSAGE_BYTES,
    defer_png: bool = False,
) -> Envelope:
    """Parse and validate a multipart message. ``allowed`` maps type -> class (REQUEST_TYPES on the
    server, REPLY_TYPES on the client; default: both). Raises ProtocolError naming the field.

    ``defer_png``: PNG payloads of requests are checked from their header only and come back as
    :class:`PendingImage` (the server decodes them off its socket loop)."""
    check_sizes(frames, max_frames, max_bytes)
    allowed = allowed if allowed is not None else {**REQUEST_TYPES, **REPLY_TYPES}
    try:
        header = _loads(frames[0])
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"header: not a UTF-8 JSON object ({_show(str(exc))})", "header"
        ) from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header: expected a JSON object, got {_show(header)}", "header")
    version = header.get("v")
    if isinstance(version, bool) or not isinstance(version, int) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.VERSION_MISMATCH,
            f"the peer speaks protocol version {_show(version)}, this side speaks "
            f"{PROTOCOL_VERSION}; install the same DragGAN release on both sides "
            "(`python install.py` updates the plug-in and the backend together)",
            "v",
        )
    mtype = _str(header, "type", "header", max_len=32)
    rid = _str(header, "id", "header", pattern=ID_PATTERN)
    token = ""
    if mtype in REQUEST_TYPES:
        raw_token = header.get("token")
        if not isinstance(raw_token, str) or not TOKEN_PATTERN.fullmatch(raw_token):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                "header.token: every request carries the client's identity token (64 lower-case hex "
                f"digits; protocol {PROTOCOL_VERSION}), got {'a malformed token' if raw_token else 'none'}",
                "header.token",
            )
        token = raw_token
    cls = allowed.get(mtype)
    if cls is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"header.type: unknown message type {_show(mtype)}; known: {', '.join(sorted(allowed))}",
            "header.type",
        )
    binary = frames[1:]
    if len(binary) > _MAX_BINARY.get(mtype, 0):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"'{mtype}' carries at most {_MAX_BINARY.get(mtype, 0)} binary frames, got {len(binary)}",
            "frames",
        )
    fields = header.get("fields", {})
    if not isinstance(fields, dict):
        raise _bad("fields", f"expected a JSON object, got {_show(fields)}")
    resolver = _Frames(binary, defer_png=defer_png and mtype in REQUEST_TYPES)
    message = cls.from_fields(fields, resolver)
    resolver.check_all_used()
    return Envelope(type=mtype, id=rid, message=message, token=token)
