"""pyzmq through a relay, for a GIMP whose Python has no pyzmq (GIMP for Windows: an MSYS2 Python
for which PyPI has no wheel). Standard library only.

The plug-in starts the relay bridge (draggan_wire/relay_bridge.py, staged by install.py) with the
backend venv's Python, which has pyzmq, and talks to it over the bridge's stdin/stdout with
length-prefixed multipart framing (defined once, in relay_bridge.py). This module offers the small
part of pyzmq's API that draggan_wire.client uses — a DEALER socket with options, CURVE keys,
a handshake monitor, poll, send and receive — so the client runs unchanged: :func:`install`
registers it as ``zmq`` in ``sys.modules``. Everything the client does (handshake, heartbeats,
cancel) still happens in the plug-in; the bridge only moves frames. When GIMP kills the plug-in
(cancel), the bridge's stdin ends and it exits, and with the plug-in's pings gone the server aborts
the job.

Where the Python is: $DRAGGAN_RELAY_PYTHON, else ``python`` in relay.json beside draggan.py
(written by install.py: the backend venv's Python).

Not testable in the Linux GIMP chroot (tests/gimp): binary stdio on Windows (Python 3 opens its
standard streams in binary mode, and only ``.buffer`` is used) and the console window that
CREATE_NO_WINDOW suppresses for the bridge on Windows.
"""

from __future__ import annotations

import collections
import json
import os
import struct
import subprocess
import sys
import threading
import time
import types
from typing import Any

RELAY_FILE = "relay.json"
PYTHON_ENV = "DRAGGAN_RELAY_PYTHON"
START_TIMEOUT_S = 30.0        # a cold start of the venv's Python and pyzmq (antivirus on Windows)
OPEN_TIMEOUT_S = 10.0

# libzmq's numbers (stable ABI); the names are what draggan_wire.client uses
DEALER = 5
LINGER = "LINGER"
MAXMSGSIZE = "MAXMSGSIZE"
ROUTING_ID = "ROUTING_ID"
POLLIN = 1
POLLOUT = 2
NOBLOCK = 1
DONTWAIT = 1
EVENT_HANDSHAKE_FAILED_NO_DETAIL = 0x0800
EVENT_HANDSHAKE_SUCCEEDED = 0x1000
EVENT_HANDSHAKE_FAILED_PROTOCOL = 0x2000
EVENT_HANDSHAKE_FAILED_AUTH = 0x4000


class ZMQError(Exception):
    """Raised like pyzmq's ZMQError (a bad endpoint, a dead bridge)."""


class Again(ZMQError):
    """Raised like pyzmq's zmq.Again."""


def plugin_dir() -> str:
    """The staged plug-in folder (the one holding draggan.py and relay.json)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bridge_python(folder: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """The Python that runs the bridge: $DRAGGAN_RELAY_PYTHON, else relay.json's "python"; None
    when neither names one."""
    env = dict(os.environ) if env is None else env
    if env.get(PYTHON_ENV):
        return env[PYTHON_ENV]
    try:
        with open(os.path.join(folder or plugin_dir(), RELAY_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    python = data.get("python") if isinstance(data, dict) else None
    return python if isinstance(python, str) and python else None


def bridge_command(python: str, script: str) -> list[str]:
    """-I: the venv's Python must not pick up GIMP's PYTHONPATH/PYTHONHOME or the current folder."""
    return [python, "-I", "-u", script]


class Bridge:
    """The bridge process, a reader thread that files its messages by socket, and a writer."""

    def __init__(self, python: str, script: str) -> None:
        from draggan_wire import relay_bridge

        self._framing = relay_bridge
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        try:
            self.proc = subprocess.Popen(bridge_command(python, script), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                         close_fds=True, creationflags=flags)
        except OSError as exc:
            raise ZMQError(f"cannot start the relay bridge with {python}: {exc}") from None
        self.python = python
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._inbox: dict[bytes, collections.deque[list[bytes]]] = collections.defaultdict(collections.deque)
        self._events: dict[bytes, collections.deque[list[bytes]]] = collections.defaultdict(collections.deque)
        self._answers: dict[bytes, list[bytes]] = {}
        self._stderr: collections.deque[bytes] = collections.deque(maxlen=40)
        self._closed = False
        self.version = ""
        self.relayed = collections.Counter()   # messages each way (for logs and tests)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._wait(lambda: bool(self.version), START_TIMEOUT_S):
            raise ZMQError(f"the relay bridge ({python}) did not start: {self.why()}")

    # -- reading --------------------------------------------------------------------------

    def _read(self) -> None:
        stdout = self.proc.stdout
        try:
            while True:
                message = self._framing.read_message(stdout)
                if message is None:
                    break
                kind, sid, *frames = message
                with self._cond:
                    if kind == b"recv":
                        self._inbox[sid].append(frames)
                        self.relayed["in"] += 1
                        self.relayed[_message_type(frames)] += 1
                    elif kind == b"event":
                        self._events[sid].append(frames)
                    elif kind in (b"opened", b"error"):
                        self._answers[sid] = [kind, *frames]
                    elif kind == b"ready":
                        self.version = frames[0].decode("ascii", "replace") if frames else "?"
                    self._cond.notify_all()
        except Exception as exc:   # a framing error: the bridge is unusable
            self._stderr.append(f"relay: {exc}".encode())
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())

    def why(self) -> str:
        code = self.proc.poll()
        tail = b" | ".join(self._stderr).decode("utf-8", "replace")[-600:]
        return (f"exit {code}" if code is not None else "no answer") + (f": {tail}" if tail else "")

    def alive(self) -> bool:
        return not self._closed and self.proc.poll() is None

    def _wait(self, ready: Any, timeout_s: float | None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not ready():
                if self._closed:
                    return bool(ready())
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- writing --------------------------------------------------------------------------

    def send(self, frames: list[Any]) -> None:
        data = self._framing.frame_message(frames)
        with self._lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (OSError, ValueError):
                raise ZMQError(f"the relay bridge ({self.python}) is gone: {self.why()}") from None
        if frames[0] == b"send":
            self.relayed["out"] += 1

    def open(self, sid: bytes, config: dict[str, Any]) -> None:
        self._answers.pop(sid, None)
        self.send([b"open", sid, json.dumps(config).encode("utf-8")])
        if not self._wait(lambda: sid in self._answers, OPEN_TIMEOUT_S):
            raise ZMQError(f"the relay bridge ({self.python}) did not open a socket: {self.why()}")
        answer = self._answers.pop(sid)
        if answer[0] != b"opened":
            raise ZMQError(b" ".join(answer[1:]).decode("utf-8", "replace"))

    def poll(self, queues: dict[bytes, collections.deque[list[bytes]]], sid: bytes, timeout_s: float | None) -> bool:
        if self._wait(lambda: bool(queues[sid]), timeout_s):
            return True
        if self._closed or self.proc.poll() is not None:
            raise ZMQError(f"the relay bridge ({self.python}) exited: {self.why()}")
        return False

    def pop(self, queues: dict[bytes, collections.deque[list[bytes]]], sid: bytes) -> list[bytes]:
        with self._cond:
            if not queues[sid]:
                raise Again("no message")
            return queues[sid].popleft()

    def close(self) -> None:
        """End the bridge: end-of-file on its stdin (it exits by itself), then make sure."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _message_type(frames: list[bytes]) -> str:
    """The protocol message type in a relayed message's header frame (for the relay's log line)."""
    try:
        return "type:" + str(json.loads(frames[0])["type"]) if frames and len(frames[0]) < 8192 else "type:?"
    except (ValueError, KeyError, TypeError):
        return "type:?"


def _say_goodbye() -> None:
    if _bridge is not None:
        counts = sorted((k[5:], n) for k, n in _bridge.relayed.items() if k.startswith("type:"))
        sys.stderr.write(f"DragGAN relay: sent {_bridge.relayed['out']}, received {_bridge.relayed['in']} messages ("
                         + ", ".join(f"{k} {n}" for k, n in counts) + ")\n")
        sys.stderr.flush()


_bridge: Bridge | None = None
_numbers = iter(range(1, 1 << 62))


def bridge() -> Bridge:
    global _bridge
    if _bridge is None or not _bridge.alive():
        python = bridge_python()
        if not python:
            raise ZMQError("no Python is recorded for the relay bridge (run install.py again)")
        from draggan_wire import relay_bridge

        _bridge = Bridge(python, relay_bridge.__file__)
    return _bridge


class Monitor:
    """The socket monitor's end: libzmq's two-frame event messages, relayed."""

    def __init__(self, owner: Socket) -> None:
        self._owner = owner

    def poll(self, timeout: int | None = None, flags: int = POLLIN) -> int:
        sid = self._owner.sid
        b = self._owner.bridge
        ok = b.poll(b._events, sid, None if timeout is None else timeout / 1000.0) if sid else False
        return POLLIN if ok else 0

    def recv_multipart(self, flags: int = 0, copy: bool = True) -> list[bytes]:
        return self._owner.bridge.pop(self._owner.bridge._events, self._owner.sid)

    def close(self, linger: int | None = None) -> None:
        pass


class Socket:
    """The client's DEALER, living in the bridge: options and CURVE keys are collected here and
    sent with the connect."""

    def __init__(self, context: Context, kind: int) -> None:
        if kind != DEALER:
            raise ZMQError("the relay offers DEALER sockets only")
        self.bridge = bridge()
        self.sid = b""
        self._options: dict[str, Any] = {}
        self._curve: dict[str, str] = {}
        self._monitor_mask = 0
        self.closed = False

    def setsockopt(self, option: str, value: Any) -> None:
        if option == ROUTING_ID:
            value = bytes(value).hex()
        self._options[option] = value

    def _set_key(self, name: str, value: bytes) -> None:
        self._curve[name] = bytes(value).decode("ascii")

    curve_serverkey = property(lambda self: self._curve.get("serverkey"),
                               lambda self, v: self._set_key("serverkey", v))
    curve_publickey = property(lambda self: self._curve.get("publickey"),
                               lambda self, v: self._set_key("publickey", v))
    curve_secretkey = property(lambda self: self._curve.get("secretkey"),
                               lambda self, v: self._set_key("secretkey", v))

    def get_monitor_socket(self, events: int | None = None, addr: str | None = None) -> Monitor:
        self._monitor_mask = int(events or 0xFFFF)
        return Monitor(self)

    def disable_monitor(self) -> None:
        self._monitor_mask = 0

    def connect(self, endpoint: str) -> None:
        sid = str(next(_numbers)).encode("ascii")
        config = {"endpoint": endpoint, "options": self._options, "monitor": self._monitor_mask}
        if self._curve:
            config["curve"] = self._curve
        self.bridge.open(sid, config)
        self.sid = sid

    def poll(self, timeout: int | None = None, flags: int = POLLIN) -> int:
        if flags & POLLOUT:
            if not self.bridge.alive():
                raise ZMQError(f"the relay bridge ({self.bridge.python}) exited: {self.bridge.why()}")
            return POLLOUT        # the bridge takes every message; it drops what its socket refuses
        ok = self.bridge.poll(self.bridge._inbox, self.sid, None if timeout is None else timeout / 1000.0)
        return POLLIN if ok else 0

    def send_multipart(self, frames: list[Any], flags: int = 0, copy: bool = True, track: bool = False) -> None:
        self.bridge.send([b"send", self.sid, *frames])

    def recv_multipart(self, flags: int = 0, copy: bool = True, track: bool = False) -> list[bytes]:
        if not flags & NOBLOCK:
            self.poll(None)
        return self.bridge.pop(self.bridge._inbox, self.sid)

    def close(self, linger: int | None = None) -> None:
        if not self.closed and self.sid:
            try:
                self.bridge.send([b"close", self.sid])
            except ZMQError:
                pass
            with self.bridge._cond:
                self.bridge._inbox.pop(self.sid, None)
                self.bridge._events.pop(self.sid, None)
        self.closed = True


class Context:
    _instance: Context | None = None

    @classmethod
    def instance(cls) -> Context:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def socket(self, kind: int) -> Socket:
        return Socket(self, kind)

    def term(self) -> None:
        pass


def recv_monitor_message(socket: Monitor, flags: int = 0) -> dict[str, Any]:
    """pyzmq's zmq.utils.monitor.recv_monitor_message over the relayed frames."""
    first, endpoint = socket.recv_multipart(flags)[:2]
    event, value = struct.unpack("=Hi", first[:6])
    return {"event": event, "value": value, "endpoint": endpoint}


def module() -> types.ModuleType:
    """This module dressed as the `zmq` package (with zmq.utils.monitor)."""
    zmq = types.ModuleType("zmq")
    for name in ("DEALER", "LINGER", "MAXMSGSIZE", "ROUTING_ID", "POLLIN", "POLLOUT", "NOBLOCK", "DONTWAIT",
                 "EVENT_HANDSHAKE_FAILED_NO_DETAIL", "EVENT_HANDSHAKE_SUCCEEDED", "EVENT_HANDSHAKE_FAILED_PROTOCOL",
                 "EVENT_HANDSHAKE_FAILED_AUTH", "ZMQError", "Again", "Context"):
        setattr(zmq, name, globals()[name])
    zmq.__version__ = "relay"
    zmq.__file__ = __file__
    utils = types.ModuleType("zmq.utils")
    monitor = types.ModuleType("zmq.utils.monitor")
    monitor.recv_monitor_message = recv_monitor_message   # type: ignore[attr-defined]
    utils.monitor = monitor                               # type: ignore[attr-defined]
    zmq.utils = utils                                     # type: ignore[attr-defined]
    return zmq


def install() -> types.ModuleType | None:
    """Register the relay as `zmq` when a bridge Python is recorded, and start the bridge (so that a
    Python without pyzmq shows now, as a clear error). None when no Python is recorded."""
    if bridge_python() is None:
        return None
    b = bridge()                  # raises ZMQError with the bridge's own words when it cannot start
    sys.stderr.write(f"DragGAN: GIMP's Python has no pyzmq; relaying through {b.python} (pyzmq {b.version})\n")
    import atexit

    atexit.register(_say_goodbye)
    zmq = module()
    sys.modules["zmq"] = zmq
    sys.modules["zmq.utils"] = zmq.utils           # type: ignore[attr-defined]
    sys.modules["zmq.utils.monitor"] = zmq.utils.monitor   # type: ignore[attr-defined]
    return zmq
