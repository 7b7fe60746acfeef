"""A hostile local client, run as a SECOND PROCESS by test_hostile.py (and benchmarks/server_flood.py).

    python -m tests.backend.hostile MODE ENDPOINT [JSON ARGS]

Prints one JSON line with what it saw. It never uses backend.client (a hostile peer speaks raw
ZeroMQ), only backend.protocol to build messages, and its own identity token (it has no other).
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import time
import zlib
from typing import Any

import zmq

from backend import protocol as P

TOKEN = os.urandom(32).hex()  # the hostile user's own identity; it never learns the victim's
AUTO_ID_START = 0x6B8B4567  # libzmq's first automatic routing id counter (0x00 + 4 bytes)


def paeth_png(side: int = 2048, channels: int = 3) -> bytes:
    """A side x side PNG whose every row uses the Paeth filter: small (~28 KB), slow to decode in
    pure Python."""
    row = b"\x04" + bytes(side * channels)
    raw = row * side
    color = {1: 0, 3: 2, 4: 6}[channels]
    ihdr = struct.pack(">IIBBBBB", side, side, 8, color, 0, 0, 0)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def dealer(ctx: zmq.Context, endpoint: str, routing_id: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(endpoint)
    return sock


def send(sock: zmq.Socket, message: Any, rid: str, token: str = TOKEN) -> None:
    sock.send_multipart(P.encode(message, rid, token), zmq.NOBLOCK)


def takeover(endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
    """Probe routing ids: libzmq's automatic ones, chosen ones starting with 0x00, the victim's exact
    id. On each: ping, cancel everything, cancel the victim's request id, continue the victim's
    session, edit the victim's image id; record every reply that is not an answer to our own ids."""
    ctx = zmq.Context()
    ids: list[bytes] = [b"\x00" + struct.pack(">I", AUTO_ID_START + k) for k in range(args["auto_ids"] + 1)]
    rng = random.Random(7)
    ids += [b"\x00" + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8))) for _ in range(args["chosen"])]
    ids += [bytes.fromhex(args["victim_id"])] * 3
    victim_rid, session, image_id = args["victim_request"], args["session_id"], args["image_id"]
    foreign: list[str] = []
    codes: dict[str, int] = {}
    replies = 0
    batch = args.get("batch", 40)
    counter = 0
    for start in range(0, len(ids), batch):
        socks = [dealer(ctx, endpoint, rid) for rid in ids[start:start + batch]]
        mine: set[str] = set()
        for sock in socks:
            for message in (P.Ping(), P.Cancel(), P.Cancel(job=victim_rid),
                            P.Continue(session_id=session, handles=[(1.0, 1.0)], targets=[(2.0, 2.0)]),
                            P.Edit(model="fake", handles=[(1.0, 1.0)], targets=[(2.0, 2.0)], image_id=image_id)):
                counter += 1
                rid = f"h{counter}"
                mine.add(rid)
                try:
                    send(sock, message, rid)
                except zmq.Again:
                    pass
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + args.get("wait_s", 0.3)
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(int(left * 1000)))
            if not ready:
                break
            for sock in ready:
                while sock.poll(0):
                    env = P.decode(sock.recv_multipart(), allowed=P.REPLY_TYPES)
                    replies += 1
                    if env.id not in mine:
                        foreign.append(f"{env.type}:{env.id}")
                    if isinstance(env.message, P.Error):
                        codes[env.message.code] = codes.get(env.message.code, 0) + 1
                    if isinstance(env.message, P.Pong) and env.message.jobs:
                        foreign.append(f"pong-lists:{env.message.jobs}")
                    if isinstance(env.message, P.CancelOk) and env.message.cancelled:
                        foreign.append(f"cancelled:{env.message.cancelled}")
        for sock in socks:
            sock.close(0)
    ctx.destroy(0)
    return {"probed_ids": len(ids), "messages": counter, "replies": replies, "codes": codes, "foreign": foreign}


def flood_png(endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
    """``count`` connections each send an edit with a 2048 px Paeth PNG; repeat for ``seconds``."""
    ctx = zmq.Context()
    png = paeth_png(args.get("side", 2048))
    header_image = {"frame": 1, "format": "png"}
    sent = 0
    deadline = time.monotonic() + args.get("seconds", 5.0)
    first = True
    socks: list[zmq.Socket] = []
    while first or time.monotonic() < deadline:
        for sock in socks:
            sock.close(0)
        socks = [dealer(ctx, endpoint) for _ in range(args.get("count", 10))]
        for i, sock in enumerate(socks):
            header = {"v": P.PROTOCOL_VERSION, "type": "edit", "id": f"png{sent}-{i}", "token": TOKEN,
                      "fields": {"model": "fake", "handles": [[1, 1]], "targets": [[2, 2]], "image": header_image}}
            sock.send_multipart([json.dumps(header).encode(), png])
            sent += 1
        if first:
            print("FLOODING", flush=True)
            first = False
        time.sleep(0.2)
    for sock in socks:
        sock.close(0)
    ctx.destroy(0)
    return {"png_bytes": len(png), "edits_sent": sent}


def numbers(endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
    """Numbers too large for a float, ids with a trailing newline, "v": true: each must be refused
    with a typed error (bad_request / version_mismatch), never internal."""
    ctx = zmq.Context()
    sock = dealer(ctx, endpoint)
    huge = int("9" * 400)
    base = {"model": "fake", "handles": [[1, 1]], "targets": [[2, 2]], "image": {"frame": 1, "shape": [2, 2, 3]}}
    cases: list[tuple[str, dict[str, Any]]] = []
    for name in ("handles", "targets"):
        cases.append((name, {**base, name: [[huge, 1]]}))
        cases.append((name, {**base, name: [[1, -huge]]}))
    for name in ("lr", "r1", "r2", "lambda_mask"):
        cases.append((f"params.{name}", {**base, "params": {name: huge}}))
        cases.append((f"params.{name}", {**base, "params": {name: -huge}}))
    cases.append(("model newline", {**base, "model": "fake\n"}))
    results: dict[str, str] = {}
    for i, (_label, fields) in enumerate(cases):
        header = {"v": P.PROTOCOL_VERSION, "type": "edit", "id": f"n{i}", "token": TOKEN, "fields": fields}
        sock.send_multipart([json.dumps(header).encode(), bytes(12)])
    extra = [("id newline", {"v": P.PROTOCOL_VERSION, "type": "ping", "id": "n99\n", "token": TOKEN, "fields": {}}),
             ("v true", {"v": True, "type": "ping", "id": "n98", "token": TOKEN, "fields": {}}),
             ("token newline", {"v": P.PROTOCOL_VERSION, "type": "ping", "id": "n97", "token": TOKEN + "\n",
                                "fields": {}})]
    for _label, header in extra:
        sock.send_multipart([json.dumps(header).encode()])
    labels = [label for label, _ in cases] + [label for label, _ in extra]
    for label in labels:
        if not sock.poll(10000):
            results[label] = "no reply"
            continue
        env = P.decode(sock.recv_multipart(), allowed=P.REPLY_TYPES)
        code = env.message.code if isinstance(env.message, P.Error) else env.type
        results[f"{label} #{len(results)}"] = code
    ctx.destroy(0)
    return {"results": results}


def connections(endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
    """Open ``count`` connections one after the other, each pinging; count how many are answered."""
    ctx = zmq.Context()
    socks = []
    answered = 0
    for i in range(args["count"]):
        sock = dealer(ctx, endpoint)
        socks.append(sock)
        send(sock, P.Ping(), f"p{i}")
        if sock.poll(int(args.get("wait_s", 0.5) * 1000)):
            sock.recv_multipart()
            answered += 1
    print(json.dumps({"opened": len(socks), "answered": answered}), flush=True)
    sys.stdin.readline()  # hold the connections open until the test says so
    ctx.destroy(0)
    return {}


MODES = {"takeover": takeover, "flood_png": flood_png, "numbers": numbers, "connections": connections}

if __name__ == "__main__":
    mode, endpoint = sys.argv[1], sys.argv[2]
    arguments = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    out = MODES[mode](endpoint, arguments)
    if out:
        print(json.dumps(out), flush=True)
