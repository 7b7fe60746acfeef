"""Servers for tests and benchmarks that need no model: ``start_server`` (a real Server on a free
loopback port, in a thread) and ``GatedRunner``, a runner whose job runs until released. Shared by
tests/backend and benchmarks/server_flood.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from draggan_wire import protocol as P
from draggan_wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from backend.server import Server

SIDE = 32  # the tiny generator's output size (pixels), and the fake runners' pictures


def start_server(runner: Any, **config: Any) -> Server:
    """A :class:`backend.server.Server` for ``runner``, started in a thread (``config``: ServerConfig
    fields; loopback on a free port and a 1 s heartbeat unless given)."""
    from backend.server import Server, ServerConfig  # torch: only the processes that serve load it

    config.setdefault("bind", "tcp://127.0.0.1:0")
    config.setdefault("heartbeat_s", 1.0)
    return Server(ServerConfig(**config), runner).start_thread()


class GatedRunner:
    """A runner without a model whose job emits progress until ``release`` is set; it keeps per-owner
    sessions and images so a foreign id gets unknown_session / unknown_image."""

    device = "cpu"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.owned: dict[str, set[str]] = {}
        self.runs: list[str] = []

    def models(self) -> list[P.ModelEntry]:
        return [P.ModelEntry("fake", SIDE, SIDE, True)]

    def memory(self) -> tuple[int, int]:
        return (0, 0)

    def precheck(self, owner: str, request: Any) -> None:
        mine = self.owned.get(owner, set())
        if isinstance(request, P.Continue) and request.session_id not in mine:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "unknown session", "fields.session_id")
        if isinstance(request, P.Edit) and request.image_id is not None and request.image_id not in mine:
            raise ProtocolError(ErrorCode.UNKNOWN_IMAGE, "unknown image", "fields.image_id")

    def purge(self, owner: str) -> tuple[int, int]:
        return (0, len(self.owned.pop(owner, set())))

    def run(self, owner: str, request: Any, emit: Callable[[P.Progress], None],
            should_cancel: Callable[[], bool], should_stop: Callable[[], bool] | None = None) -> P.Result:
        self.runs.append(owner)
        self.started.set()
        step = 0
        while not self.release.is_set():
            if should_cancel():
                raise ProtocolError(ErrorCode.CANCELLED, "cancelled")
            step += 1
            emit(P.Progress(phase="drag", step=step, total=10**6, loss=0.5))
            time.sleep(0.02)
        self.owned.setdefault(owner, set()).update({"victim-session", "victim-image"})
        return P.Result(image=P.Image(SIDE, SIDE, 3, bytes(SIDE * SIDE * 3)), points=[(1.0, 1.0)],
                        session_id="victim-session", image_id="victim-image", steps=step)


def fake(**kw: Any) -> P.Edit:
    return P.Edit(model="fake", handles=[(1.0, 1.0)], targets=[(2.0, 2.0)],
                  image=P.Image(SIDE, SIDE, 3, bytes(SIDE * SIDE * 3)), **kw)
