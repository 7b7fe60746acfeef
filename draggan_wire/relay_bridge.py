"""The relay bridge: a ZeroMQ DEALER socket driven over stdin/stdout, for a GIMP whose Python has no
pyzmq (GIMP for Windows bundles an MSYS2 Python for which PyPI has no pyzmq wheel).

The plug-in (gimp_plugin/draggan/draggan_core/relay.py) starts this file with the backend venv's
Python, which has pyzmq (install.py records that Python's path in the staged plug-in's relay.json),
and drives one socket at a time through it. It is part of the draggan_wire package, which install.py
stages into the plug-in as it is: the plug-in imports it (standard library only at
import time; pyzmq is imported by :func:`main`) for the framing below, so both ends share one
definition.

Framing, both directions: a message is a big-endian uint32 count of frames, then per frame a
big-endian uint32 length and the bytes. The first frame names the command, the second the socket
number (ASCII digits) that the plug-in chose:

plug-in -> bridge
    ``open  SID CONFIG``   a new DEALER (the previous one is closed). CONFIG is JSON: ``endpoint``,
                           ``options`` (LINGER, MAXMSGSIZE, ROUTING_ID as hex), ``curve`` (the Z85
                           ``serverkey``, ``publickey``, ``secretkey``, when CURVE is used),
                           ``monitor`` (a libzmq event mask, 0 = no monitor)
    ``send  SID FRAMES...`` one multipart message for the backend
    ``close SID``
bridge -> plug-in
    ``ready - VERSION``    once, at start (pyzmq's version)
    ``opened SID`` / ``error SID TEXT``   the answer to ``open``
    ``recv  SID FRAMES...`` a message from the backend
    ``event SID FRAMES...`` a socket monitor message, in libzmq's own two-frame format

The bridge adds nothing of its own: no heartbeats, no retries. The plug-in's client keeps sending
its pings through it, so when GIMP cancels by killing the plug-in the pings stop and the server
aborts the job; the bridge sees end-of-file on stdin and exits (closing its socket at once).
"""

from __future__ import annotations

import json
import struct
import sys
import threading
from typing import Any, BinaryIO

MAX_FRAMES = 64
MAX_FRAME = 1 << 30
_U32 = struct.Struct(">I")
OPTIONS = ("LINGER", "MAXMSGSIZE", "ROUTING_ID")


class FramingError(Exception):
    """The other end sent something that is not a framed message (or ended inside one)."""


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> list[bytes] | None:
    """The next message from `stream`; None at a clean end of file (between messages)."""
    head = stream.read(4)
    if not head:
        return None
    try:
        if len(head) < 4:
            head += _read_exact(stream, 4 - len(head))
        (count,) = _U32.unpack(head)
        if not 1 <= count <= MAX_FRAMES:
            raise FramingError(f"a message of {count} frames")
        frames = []
        for _ in range(count):
            (size,) = _U32.unpack(_read_exact(stream, 4))
            if size > MAX_FRAME:
                raise FramingError(f"a frame of {size} bytes")
            frames.append(_read_exact(stream, size))
    except EOFError:
        raise FramingError("the stream ended inside a message") from None
    return frames


def frame_message(frames: list[bytes]) -> bytes:
    """`frames` as one framed message (bytes-like frames: bytes, bytearray, memoryview, zmq.Frame)."""
    if not 1 <= len(frames) <= MAX_FRAMES:
        raise FramingError(f"a message of {len(frames)} frames")
    parts = [_U32.pack(len(frames))]
    for frame in frames:
        data = bytes(getattr(frame, "bytes", frame))
        parts += [_U32.pack(len(data)), data]
    return b"".join(parts)


def main() -> int:
    try:
        import zmq
    except ImportError as exc:
        sys.stderr.write(f"relay bridge: this Python ({sys.executable}) has no pyzmq: {exc}\n")
        return 2
    from zmq.utils.monitor import recv_monitor_message  # noqa: F401  (fails early if pyzmq is broken)

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PAIR)
    inbox.bind("inproc://relay-stdin")

    def pump_stdin() -> None:
        # stdin is read in this thread (blocking reads work for pipes on every OS) and handed to the
        # main thread through an inproc socket, so the main thread waits on sockets only.
        feed = ctx.socket(zmq.PAIR)
        feed.connect("inproc://relay-stdin")
        try:
            while True:
                try:
                    message = read_message(stdin)
                except (FramingError, OSError) as exc:
                    sys.stderr.write(f"relay bridge: {exc}\n")
                    message = None
                if message is None:
                    feed.send_multipart([b"eof"])
                    return
                feed.send_multipart(message)
        finally:
            feed.close(0)

    def write(frames: list[Any]) -> None:
        stdout.write(frame_message(frames))
        stdout.flush()

    sock: Any = None
    monitor: Any = None
    sid = b""

    def close_socket() -> None:
        nonlocal sock, monitor
        if sock is not None:
            if monitor is not None:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:
                    pass
                monitor.close(0)
            sock.close(0)
        sock = monitor = None

    def open_socket(config: dict[str, Any]) -> None:
        nonlocal sock, monitor
        close_socket()
        s = ctx.socket(zmq.DEALER)
        try:
            for name, value in (config.get("options") or {}).items():
                if name not in OPTIONS:
                    raise ValueError(f"option {name} is not relayed")
                s.setsockopt(getattr(zmq, name), bytes.fromhex(value) if name == "ROUTING_ID" else int(value))
            curve = config.get("curve") or {}
            if curve:
                s.curve_serverkey = curve["serverkey"].encode("ascii")
                s.curve_publickey = curve["publickey"].encode("ascii")
                s.curve_secretkey = curve["secretkey"].encode("ascii")
            mask = int(config.get("monitor") or 0)
            m = s.get_monitor_socket(mask) if mask else None
            s.connect(str(config["endpoint"]))
        except Exception:
            s.close(0)
            raise
        sock, monitor = s, m

    write([b"ready", b"-", zmq.__version__.encode("ascii")])
    threading.Thread(target=pump_stdin, daemon=True).start()
    try:
        while True:
            poller = zmq.Poller()
            for s in (inbox, sock, monitor):
                if s is not None:
                    poller.register(s, zmq.POLLIN)
            ready = dict(poller.poll())
            if inbox in ready:
                command, *rest = inbox.recv_multipart()
                if command == b"eof":
                    return 0
                if command == b"open" and len(rest) == 2:
                    sid = rest[0]
                    try:
                        open_socket(json.loads(rest[1]))
                        write([b"opened", sid])
                    except Exception as exc:
                        close_socket()
                        write([b"error", sid, f"{type(exc).__name__}: {exc}".encode()])
                elif command == b"send" and rest and rest[0] == sid and sock is not None:
                    try:
                        # non-blocking: a DEALER without a usable connection would block forever; the
                        # client then hears nothing and reports the silence, as without the relay
                        sock.send_multipart(rest[1:], flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                elif command == b"close" and rest and rest[0] == sid:
                    close_socket()
            if sock is not None and sock in ready:
                write([b"recv", sid, *sock.recv_multipart(copy=False)])
            if monitor is not None and monitor in ready:
                write([b"event", sid, *monitor.recv_multipart()])
    except (BrokenPipeError, OSError):      # the plug-in is gone: stop at once
        return 0
    finally:
        close_socket()
        inbox.close(0)
        # no ctx.term(): the stdin thread may still sit in a read; the process exits instead


if __name__ == "__main__":
    import os

    code = main()
    try:
        sys.stdout.flush()
    except OSError:
        pass
    os._exit(code)       # do not wait for the stdin thread (or a context term) on the way out
