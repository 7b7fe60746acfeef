"""A scripted backend for the plug-in's link tests: a real ZeroMQ ROUTER on 127.0.0.1.

Each test server subclasses :class:`ScriptedRouter` and says only how it answers; binding, the
optional CURVE keys, the serving thread and the shutdown are here once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import zmq

from draggan_wire import protocol


@contextlib.contextmanager
def refused_loopback_address() -> Iterator[str]:
    """A ZeroMQ address on 127.0.0.1 whose port is held bound and never listens while the block runs:
    connections to it are refused, and no other process (a server another test or job starts on a
    random port) can take it between choosing it and connecting."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{held.getsockname()[1]}"


class ScriptedRouter:
    """A ROUTER bound to a random loopback port (a CURVE server when ``curve_pair`` = (public,
    secret) is given) that decodes each request and sends back what :meth:`answer` returns, on a
    thread, until :meth:`close` or after ``max_messages`` requests."""

    def __init__(self, curve_pair: tuple[bytes, bytes] | None = None, max_messages: int | None = None) -> None:
        self.max_messages = max_messages
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve_pair is not None:
            self.sock.curve_server = True
            self.sock.curve_publickey, self.sock.curve_secretkey = curve_pair
        self.address = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.received: list[str] = []          # request types, in order
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def answer(self, ident: bytes, envelope: protocol.Envelope) -> object:
        """The reply message to one decoded request (``ident`` is its ZeroMQ routing id)."""
        raise NotImplementedError

    def _serve(self) -> None:
        while not self.stop.is_set():
            if self.max_messages is not None and len(self.received) >= self.max_messages:
                return
            if not self.sock.poll(50):
                continue
            ident, *frames = self.sock.recv_multipart()
            envelope = protocol.decode(frames, allowed=protocol.REQUEST_TYPES)
            self.received.append(envelope.type)
            self.sock.send_multipart([ident, *protocol.encode(self.answer(ident, envelope), envelope.id)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def welcome(*models: protocol.ModelEntry, instance: str | None = None) -> protocol.Welcome:
    """The server's answer to hello, listing ``models``."""
    extra = {} if instance is None else {"instance": instance}
    return protocol.Welcome(server="test", protocol=protocol.PROTOCOL_VERSION, device="cpu",
                            models=list(models), **extra)
