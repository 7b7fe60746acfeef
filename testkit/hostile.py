"""A hostile local client, run as a SECOND PROCESS by test_hostile.py (and benchmarks/server_flood.py).

    python -m testkit.hostile MODE ENDPOINT [JSON ARGS]

Prints one JSON line with what it saw. It never uses draggan_wire.client (a hostile peer speaks raw
ZeroMQ), only draggan_wire.protocol to build messages, and its own identity token (it has no other).
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

from draggan_wire import protocol as P

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


class Identity:
    """One identity of the hog: a token (token mode) or an allowed CURVE key pair (a studio)."""

    def __init__(self, index: int, keys: tuple[bytes, bytes, bytes] | None) -> None:
        self.index = index
        self.token = os.urandom(32).hex()
        self.keys = keys  # (server public, client public, client secret), Z85

    def connect(self, ctx: zmq.Context, endpoint: str) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.keys is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.keys
        sock.connect(endpoint)
        return sock


def _identities(args: dict[str, Any]) -> list[Identity]:
    """``count`` tokens, or the CURVE pairs ``hostile0..N-1.key_secret`` in ``keys_dir`` (allowed)."""
    keys_dir = args.get("keys_dir")
    if not keys_dir:
        return [Identity(i, None) for i in range(args.get("count", 20))]
    from draggan_wire.client import read_public_key, read_secret_key

    server = read_public_key(os.path.join(keys_dir, "server.key"))
    out = []
    for i in range(args.get("count", 20)):
        secret = os.path.join(keys_dir, f"hostile{i}.key_secret")
        out.append(Identity(i, (server, read_public_key(secret), read_secret_key(secret))))
    return out


def _photo(rng: random.Random) -> P.Image:
    return P.Image(32, 32, 3, bytes(rng.getrandbits(8) for _ in range(32 * 32 * 3)))


class Hog:
    """Holds every limit a second local process can hold with ``count`` identities: it fills the
    photo and session stores, keeps the queue full (a long edit running, two identities with two
    waiting edits each, the others submitting again whenever they are refused or pushed out) and
    the peer limit (one connection per identity and two more), sending heartbeats throughout. On
    ``mint N`` it opens N new connections, each a fresh identity (tokens) or one of its keys in turn
    (CURVE), sending hello and a quick edit on each."""

    def __init__(self, endpoint: str, args: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.args = args
        self.ctx = zmq.Context()
        self.rng = random.Random(11)
        self.ids = _identities(args)
        self.links: list[tuple[Identity, zmq.Socket]] = []
        self.busy: dict[zmq.Socket, str] = {}  # socket -> request id of its edit in flight
        self.counter = 0
        self.codes: dict[str, int] = {}
        self.results = 0
        self.long = P.EditParams(max_steps=args.get("long_steps", 300), r1=10.0, r2=20.0, preview_every=0)
        self.quick = P.EditParams(max_steps=1, r1=10.0, r2=20.0, preview_every=0)
        self.hammer = False
        self.retry: dict[zmq.Socket, float] = {}
        self.done: dict[zmq.Socket, int] = {}  # edits served, by connection
        self.heard: dict[zmq.Socket, float] = {}  # when the edit in flight was last heard of

    def rid(self) -> str:
        self.counter += 1
        return f"hog{self.counter}"

    def send(self, ident: Identity, sock: zmq.Socket, message: Any) -> str:
        rid = self.rid()
        try:
            sock.send_multipart(P.encode(message, rid, ident.token), zmq.NOBLOCK)
        except zmq.Again:
            pass
        return rid

    def edit(self, ident: Identity, sock: zmq.Socket, params: P.EditParams) -> None:
        self.busy[sock] = self.send(ident, sock, P.Edit(model="fake", handles=[(1.0, 1.0)], targets=[(2.0, 2.0)],
                                                        image=_photo(self.rng), params=params))
        self.heard[sock] = time.monotonic()

    def pump(self, seconds: float) -> None:
        """Read replies, send heartbeats, resubmit (hammer) for ``seconds``."""
        deadline = time.monotonic() + seconds
        last_ping = 0.0
        poller = zmq.Poller()
        for _ident, sock in self.links:
            poller.register(sock, zmq.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            now = time.monotonic()
            if now - last_ping > 0.3:
                for ident, sock in self.links:
                    self.send(ident, sock, P.Ping())
                last_ping = now
            for sock in [sock for sock in self.busy if now - self.heard.get(sock, now) > 3.0]:
                del self.busy[sock]  # lost with a connection the server closed: ZeroMQ reconnected it
            if self.hammer:
                for ident, sock in self.links:
                    if sock not in self.busy and self.retry.get(sock, 0.0) <= now:
                        self.edit(ident, sock, self.long)
            for sock, _ in poller.poll(int(min(left, 0.05) * 1000)):
                while sock.poll(0):
                    env = P.decode(sock.recv_multipart(), allowed=P.REPLY_TYPES)
                    if env.id != self.busy.get(sock):
                        continue
                    self.heard[sock] = time.monotonic()
                    if isinstance(env.message, P.Error):
                        self.codes[env.message.code] = self.codes.get(env.message.code, 0) + 1
                        del self.busy[sock]
                        self.retry[sock] = time.monotonic() + 0.1
                    elif isinstance(env.message, P.Result):
                        self.results += 1
                        self.done[sock] = self.done.get(sock, 0) + 1
                        del self.busy[sock]

    def fill(self) -> dict[str, Any]:
        for ident in self.ids:  # one connection per identity, and two more for two waiting edits each
            self.links.append((ident, ident.connect(self.ctx, self.endpoint)))
        for ident in self.ids[1:3]:
            self.links.append((ident, ident.connect(self.ctx, self.endpoint)))
        first = {ident.index: sock for ident, sock in reversed(self.links)}
        # the stores: `edits` quick edits of new photos from every identity (within its own limits)
        wanted = self.args.get("edits", 4)
        while any(self.done.get(sock, 0) < wanted for sock in first.values()):
            for ident in self.ids:
                sock = first[ident.index]
                if self.done.get(sock, 0) < wanted and sock not in self.busy and \
                        self.retry.get(sock, 0.0) <= time.monotonic():
                    self.edit(ident, sock, self.quick)
            self.pump(0.05)
        stored = self.results
        # the queue: a long edit running, then two identities with two waiting edits each
        ident0, sock0 = self.links[0]
        self.edit(ident0, sock0, self.long)
        self.pump(0.3)
        for ident, sock in self.links:
            if ident.index in (1, 2):
                self.edit(ident, sock, self.long)
        self.pump(0.3)
        self.hammer = True  # everyone else keeps trying, and everyone resubmits when refused
        self.pump(1.0)
        return {"stored_edits": stored, "connections": len(self.links), "codes": dict(self.codes)}

    def mint(self, count: int) -> dict[str, Any]:
        """``count`` new connections, each a fresh identity (or one of the keys in turn), each saying
        hello and sending a quick edit (waiting for its answer), the held ones kept busy meanwhile."""
        welcomed = results = 0
        codes: dict[str, int] = {}
        started = time.monotonic()
        for start in range(0, count, 50):
            open_: dict[zmq.Socket, str] = {}
            batch: list[zmq.Socket] = []
            for k in range(start, min(count, start + 50)):
                ident = Identity(1000 + k, self.ids[k % len(self.ids)].keys)
                sock = ident.connect(self.ctx, self.endpoint)
                self.send(ident, sock, P.Hello(client="mint"))
                batch.append(sock)
                open_[sock] = self.send(ident, sock, P.Edit(model="fake", handles=[(1.0, 1.0)], targets=[(2.0, 2.0)],
                                                            image=_photo(self.rng), params=self.quick))
            deadline = time.monotonic() + 1.0
            while open_ and time.monotonic() < deadline:
                self.pump(0.01)
                for sock in list(open_):
                    while sock in open_ and sock.poll(0):
                        env = P.decode(sock.recv_multipart(), allowed=P.REPLY_TYPES)
                        welcomed += isinstance(env.message, P.Welcome)
                        if env.id == open_[sock] and isinstance(env.message, (P.Error, P.Result)):
                            if isinstance(env.message, P.Error):
                                codes[env.message.code] = codes.get(env.message.code, 0) + 1
                            else:
                                results += 1
                            del open_[sock]
            for sock in batch:
                sock.close(0)
        return {"minted": count, "welcomed": welcomed, "edits_served": results, "edit_errors": codes,
                "seconds": round(time.monotonic() - started, 1)}

    def run(self) -> dict[str, Any]:
        import queue
        import threading

        print(json.dumps({"ready": self.fill()}), flush=True)
        commands: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [commands.put(line.strip()) for line in sys.stdin], daemon=True).start()
        while True:
            self.pump(0.1)
            try:
                command = commands.get_nowait()
            except queue.Empty:
                continue
            if command.startswith("mint"):
                print(json.dumps({"minted": self.mint(int(command.split()[1]))}), flush=True)
            elif command in ("stop", ""):
                break
        for _ident, sock in self.links:
            sock.close(0)
        self.ctx.destroy(0)
        return {"stopped": {"results": self.results, "codes": self.codes}}


def hog(endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
    return Hog(endpoint, args).run()


def fuzz(endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
    """At least ``count`` malformed messages (test_server_faults' 18 kinds, plus duplicate header
    keys, hello with protocol 0 or below, lone surrogates in strings), from one connection, 100 in
    flight at a time; every one must be answered with a typed error (the only ones that may go
    unanswered are frames over the size limit, which libzmq drops with their connection)."""
    from testkit.fuzz import fuzz_messages, send_and_count_replies

    rng = random.Random(args.get("seed", 99))
    messages: list[tuple[str, list[bytes]]] = []
    seed = 0
    while len(messages) < args.get("count", 10_000):
        messages += fuzz_messages(random.Random(seed))
        messages += _parsing_cases(rng, 300)
        seed += 1
    sent, codes, no_reply = send_and_count_replies(endpoint, messages)
    return {"sent": sum(sent.values()), "kinds": len(sent), "codes": dict(codes), "no_reply": no_reply}


def _parsing_cases(rng: random.Random, count: int) -> list[tuple[str, list[bytes]]]:
    out: list[tuple[str, list[bytes]]] = []
    for i in range(count):
        kind = ("duplicate_keys", "hello_protocol_below_1", "lone_surrogate")[i % 3]
        if kind == "duplicate_keys":
            key = rng.choice(["v", "type", "id", "token", "fields"])
            text = (f'{{"v":{P.PROTOCOL_VERSION},"type":"ping","id":"d{i}","token":"{TOKEN}","fields":{{}},'
                    f'"{key}":' + json.dumps({"v": P.PROTOCOL_VERSION, "type": "hello", "id": "dup", "token": TOKEN,
                                              "fields": {}}[key]) + "}")
            out.append((kind, [text.encode()]))
        elif kind == "hello_protocol_below_1":
            header = {"v": P.PROTOCOL_VERSION, "type": "hello", "id": f"p{i}", "token": TOKEN,
                      "fields": {"client": "x", "protocol": rng.choice([0, -1, -(1 << 40)])}}
            out.append((kind, [json.dumps(header).encode()]))
        else:
            where = rng.choice(["client", "model", "type"])
            if where == "client":
                text = (f'{{"v":{P.PROTOCOL_VERSION},"type":"hello","id":"s{i}","token":"{TOKEN}",'
                        '"fields":{"client":"gimp\\ud800","protocol":3}}')
            elif where == "model":
                text = (f'{{"v":{P.PROTOCOL_VERSION},"type":"edit","id":"s{i}","token":"{TOKEN}","fields":'
                        '{"model":"t\\udfff","handles":[[1,1]],"targets":[[2,2]],"image_id":"abc"}}')
            else:
                text = f'{{"v":{P.PROTOCOL_VERSION},"type":"pi\\ud83dng","id":"s{i}","token":"{TOKEN}","fields":{{}}}}'
            out.append((kind, [text.encode()]))
    return out


MODES = {"takeover": takeover, "flood_png": flood_png, "numbers": numbers, "connections": connections,
         "hog": hog, "fuzz": fuzz}

if __name__ == "__main__":
    mode, endpoint = sys.argv[1], sys.argv[2]
    arguments = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    out = MODES[mode](endpoint, arguments)
    if out:
        print(json.dumps(out), flush=True)
