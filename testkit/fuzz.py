"""Malformed messages for the server's socket loop, and a sender that counts the replies: shared by
tests/backend/test_server_faults.py, the hostile client (testkit/hostile.py) and
benchmarks/server_flood.py."""

from __future__ import annotations

import collections
import json
import random
from typing import Any

import zmq

from draggan_wire import protocol as P
from testkit.servers import SIDE

FUZZ_TOKEN = "f0" * 32


def valid_edit_header() -> dict[str, Any]:
    return {"v": P.PROTOCOL_VERSION, "type": "edit", "id": "f1", "token": FUZZ_TOKEN,
            "fields": {"model": "tiny", "handles": [[1, 2]], "targets": [[3, 4]],
                       "image": {"frame": 1, "format": "raw", "shape": [SIDE, SIDE, 3]}}}


def fuzz_messages(rng: random.Random) -> list[tuple[str, list[bytes]]]:
    """Malformed messages, each invalid by construction, labelled with their kind."""
    image = bytes(SIDE * SIDE * 3)
    wrong_values: list[Any] = [None, True, -1, 1e308, "x" * 2000, [], {}, [[1]], [1, 2, 3], {"frame": 99}]
    out: list[tuple[str, list[bytes]]] = []

    def enc(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    for i in range(3000):
        kind = ["random_bytes", "bad_json", "json_not_object", "wrong_version", "unknown_type", "bad_request_id",
                "wrong_field_type", "missing_field", "too_many_frames", "bad_frame_ref", "frame_size_mismatch",
                "deep_nesting", "empty_header", "huge_header", "bad_params", "reply_as_request",
                "bad_points", "unreferenced_frame"][i % 18]
        h = valid_edit_header()
        frames: list[bytes]
        if kind == "random_bytes":
            frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))]
        elif kind == "bad_json":
            text = enc(h).decode()
            cut = rng.randint(1, len(text) - 1)
            frames = [text[:cut].encode(), image]
        elif kind == "json_not_object":
            frames = [enc(rng.choice([[1, 2], "edit", 5, None, True]))]
        elif kind == "wrong_version":
            v = P.PROTOCOL_VERSION
            h["v"] = rng.choice([0, v - 1, v + 1, str(v), None, 1.5, v + 1e-9, float(v), True])
            frames = [enc(h), image]
        elif kind == "unknown_type":
            h["type"] = rng.choice(["edits", "", "HELLO", "shutdown", "eval", 7])
            frames = [enc(h), image]
        elif kind == "bad_request_id":
            h["id"] = rng.choice(["", "a b", "x" * 65, 5, None, "ü"])
            frames = [enc(h), image]
        elif kind == "wrong_field_type":
            name = rng.choice(["model", "handles", "targets", "image"])
            h["fields"][name] = rng.choice(wrong_values)
            if name == "model" and isinstance(h["fields"][name], str) and len(h["fields"][name]) < 65:
                h["fields"][name] = 5
            frames = [enc(h), image]
        elif kind == "missing_field":
            del h["fields"][rng.choice(["model", "handles", "targets", "image"])]
            frames = [enc(h), image] if "image" in h["fields"] else [enc(h)]
        elif kind == "too_many_frames":
            frames = [enc(h)] + [image] * rng.randint(3, 6)
        elif kind == "bad_frame_ref":
            h["fields"]["image"]["frame"] = rng.choice([0, 2, -1, "1", None, 1.0])
            frames = [enc(h), image]
        elif kind == "frame_size_mismatch":
            frames = [enc(h), image[: rng.randint(0, len(image) - 1)]]
        elif kind == "deep_nesting":
            depth = rng.randint(5000, 30000)
            frames = [b"[" * depth + b"]" * depth]
        elif kind == "empty_header":
            frames = [b""]
        elif kind == "huge_header":
            frames = [b'{"v":1,"pad":"' + b"a" * (P.MAX_HEADER_BYTES + 1) + b'"}']
        elif kind == "bad_params":
            h["fields"]["params"] = {rng.choice(["max_steps", "lr", "r1", "preview_every", "latent", "pti"]):
                                     rng.choice([-5, 0, 1e9, "fast", None, [], float("inf")])}
            if h["fields"]["params"].get("preview_every") == 0:  # 0 (no previews) would be valid
                h["fields"]["params"]["preview_every"] = -1
            frames = [json.dumps(h, allow_nan=True).encode(), image]
        elif kind == "reply_as_request":
            frames = P.encode(rng.choice([P.Pong(), P.Purged(), P.CancelOk()]), "f1", FUZZ_TOKEN)
        elif kind == "bad_points":
            h["fields"]["handles"] = rng.choice([[[1, float("nan")]], [[1, 2, 3]], [], [[1, 2]] * 100, [["a", 1]]])
            frames = [json.dumps(h, allow_nan=True).encode(), image]
        else:  # unreferenced_frame
            frames = [enc(h), image, image]
        out.append((kind, frames))
    return out


def send_and_count_replies(endpoint: str, messages: list[tuple[str, list[bytes]]]
                            ) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Send ``(kind, frames)`` messages from one DEALER, 100 in flight at a time, and read a reply to
    each -> (messages sent by kind, replies by error code, messages with no reply within 10 s).  A
    reply that is not an error counts as ``NOT AN ERROR:<type>`` (nothing malformed may start work)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sent: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[str] = collections.Counter()
    no_reply = 0
    try:
        for start in range(0, len(messages), 100):
            batch = messages[start:start + 100]
            for kind, frames in batch:
                sock.send_multipart(frames)
                sent[kind] += 1
            for _ in batch:
                if not sock.poll(10_000):
                    no_reply += 1
                    continue
                reply = P.decode(sock.recv_multipart(), allowed=P.REPLY_TYPES)
                codes[reply.message.code if isinstance(reply.message, P.Error) else f"NOT AN ERROR:{reply.type}"] += 1
    finally:
        sock.close(0)
    return sent, codes, no_reply
