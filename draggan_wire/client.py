"""Client library for the DragGAN backend: connect, handshake, edit with progress, cancel, continue.

Standard library plus pyzmq, which is imported lazily (GIMP's Python may lack it; the error then
says how to install it). Part of the package ``draggan_wire``, which install.py stages into the
plug-in as it is: it imports the protocol relatively and nothing else of the project.

Typical use (all errors are :class:`protocol.ProtocolError` with a code and an actionable message)::

    with Client("tcp://127.0.0.1:5555") as client:
        welcome = client.hello()                        # retries, version check
        result = client.edit(Edit(model="faces-128", image=img, handles=[(10, 20)], targets=[(30, 20)]),
                             on_progress=lambda p: print(p.phase, p.step, p.total))
        again = client.continue_(Continue(result.session_id, handles=result.points, targets=[(40, 20)]))

Identity: every request carries ``token``, the client's identity secret. The server files jobs,
photos and sessions under it (or under the CURVE public key), never under the connection's routing
id. A Client without a token gets a fresh random one (nothing it leaves on the server can be reached
by a later process); programs that come back to their sessions (the plug-in, ``draggan-backend
status``) load a per-user token with :func:`load_or_create_token`.

While it waits for a job the client sends a ``ping`` twice per ``heartbeat_s`` (from ``welcome``) and
gives up only when the server has said nothing for ``timeout_s`` (inactivity, not total time).
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from . import protocol
from .protocol import Error, ErrorCode, ProtocolError

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
POLL_S = 0.05  # how often a waiting stream asks its should_cancel/should_stop (a Stop button's latency)

_ZMQ_MISSING = (
    "pyzmq is not available to this Python ({exe}). Install the DragGAN plug-in with "
    "`python install.py` (it vendors pyzmq for GIMP), or run `{exe} -m pip install pyzmq`."
)


def import_zmq() -> Any:
    """Import pyzmq or raise ProtocolError(UNAVAILABLE) saying how to install it."""
    try:
        import zmq
    except ImportError:
        import sys

        raise ProtocolError(ErrorCode.UNAVAILABLE, _ZMQ_MISSING.format(exe=sys.executable)) from None
    return zmq


def config_dir() -> str:
    """Per-user DragGAN config folder ($DRAGGAN_CONFIG_DIR, else $XDG_CONFIG_HOME/draggan or ~/.config/draggan;
    %APPDATA%\\draggan on Windows). Keys live in its ``keys/`` subfolder."""
    if os.environ.get("DRAGGAN_CONFIG_DIR"):
        return os.environ["DRAGGAN_CONFIG_DIR"]
    if os.name == "nt" and os.environ.get("APPDATA"):
        return os.path.join(os.environ["APPDATA"], "draggan")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "draggan")


TOKEN_FILE = "client.token"


def new_token() -> str:
    """A fresh identity token: 32 random bytes as 64 lower-case hex digits."""
    return secrets.token_hex(32)


def load_or_create_token(path: str) -> str:
    """The identity token kept in ``path`` (made on first use: 32 random bytes, hex, mode 0600 in a
    0700 folder). It is the user's secret: whoever holds it owns the user's sessions on a backend
    without CURVE. A file that others may read, or that holds no valid token, raises AUTH."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(new_token() + "\n")
    try:
        if os.name == "posix" and os.stat(path).st_mode & 0o077:
            raise ProtocolError(ErrorCode.AUTH, f"the identity token {path} is readable by other users; delete "
                                                "it (a new one is made on the next run) or `chmod 600` it")
        with open(path, encoding="ascii") as fh:
            token = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.AUTH, f"cannot read the identity token {path}: {exc}") from None
    if not protocol.TOKEN_PATTERN.fullmatch(token):
        raise ProtocolError(ErrorCode.AUTH, f"{path} holds no valid identity token; delete it and a new one "
                                            "is made on the next run")
    return token


def is_loopback(endpoint: str) -> bool:
    """True for endpoints only this machine can reach (loopback TCP, ipc://, inproc://)."""
    import ipaddress
    import re

    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    match = re.fullmatch(r"tcp://(\[[^\]]+\]|[^:]+):(\d+|\*)", endpoint)
    if not match:
        return False
    host = match.group(1).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name or a host name: not provably loopback
        return False


def read_public_key(path: str) -> bytes:
    """The Z85 public key from a ZeroMQ certificate file (``*.key`` or ``*.key_secret``)."""
    return _read_key(path, "public-key")


def read_secret_key(path: str) -> bytes:
    """The Z85 secret key from a ZeroMQ secret certificate file (``*.key_secret``)."""
    return _read_key(path, "secret-key")


def _read_key(path: str, name: str) -> bytes:
    # The ZeroMQ certificate format (ZPL): lines like `    public-key = "Z85..."`. Parsed here so
    # that GIMP's side needs only the standard library to read its keys.
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.strip().partition("=")
                if sep and key.strip() == name:
                    value = value.strip().strip('"')
                    if len(value) == 40:
                        return value.encode("ascii")
    except OSError as exc:
        raise ProtocolError(ErrorCode.AUTH, f"cannot read key file {path}: {exc.strerror}") from None
    raise ProtocolError(ErrorCode.AUTH, f"{path} holds no {name} (expected a ZeroMQ certificate file)")


class ClientKeys:
    """CURVE keys of a client: its own key pair and the server's pinned public key (all Z85 bytes)."""

    def __init__(self, server_public: bytes, client_public: bytes, client_secret: bytes) -> None:
        for name, key in (("server public", server_public), ("client public", client_public),
                          ("client secret", client_secret)):
            if len(key) != 40:
                raise ProtocolError(ErrorCode.AUTH, f"{name} key must be 40 Z85 characters, got {len(key)}")
        self.server_public = server_public
        self.client_public = client_public
        self.client_secret = client_secret

    @classmethod
    def for_endpoint(cls, endpoint: str, keys_dir: str | None = None) -> ClientKeys | None:
        """The keys to use for ``endpoint``: the keys folder's ``server.key`` and ``client.key_secret``
        when both are there (``draggan-backend serve`` makes them on first use, for this user; a
        laptop gets them from ``install.py --remote``), loopback included: every server uses CURVE
        unless started with ``--insecure-tokens``. None when absent: a CURVE server then answers with
        a clear 'this client has no keys' error."""
        keys_dir = keys_dir or os.path.join(config_dir(), "keys")
        if not (os.path.exists(os.path.join(keys_dir, "server.key"))
                and os.path.exists(os.path.join(keys_dir, "client.key_secret"))):
            return None
        return cls.from_dir(keys_dir)

    @classmethod
    def from_dir(cls, keys_dir: str | None = None, client_name: str = "client") -> ClientKeys:
        """Keys from a folder laid out by ``draggan-backend keys``: ``server.key`` (the server's public
        key, copied from the workstation) and ``<client_name>.key_secret`` (this machine's pair)."""
        keys_dir = keys_dir or os.path.join(config_dir(), "keys")
        server = os.path.join(keys_dir, "server.key")
        secret = os.path.join(keys_dir, f"{client_name}.key_secret")
        for path in (server, secret):
            if not os.path.exists(path):
                raise ProtocolError(ErrorCode.AUTH, f"key file {path} is missing; see docs/remote.md "
                                                    "(`draggan-backend keys` creates and lists keys)")
        return cls(read_public_key(server), read_public_key(secret), read_secret_key(secret))


class Client:
    """One connection to a backend (a ZeroMQ DEALER socket).

    ``timeout_s``: how long the server may stay silent before an operation fails (inactivity);
    ``connect_timeout_s`` and ``retries``: the handshake's Lazy-Pirate retry schedule.
    Not thread-safe: use one Client per thread.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, keys: ClientKeys | None = None,
                 timeout_s: float = 30.0, connect_timeout_s: float = 2.0, retries: int = 3,
                 client_name: str = "draggan-client", routing_id: bytes | None = None,
                 token: str | None = None) -> None:
        if routing_id is not None and not 1 <= len(routing_id) <= 255:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "routing_id must be 1..255 bytes", "routing_id")
        if token is not None and not protocol.TOKEN_PATTERN.fullmatch(token):
            raise ProtocolError(ErrorCode.AUTH, "the identity token must be 64 lower-case hex digits", "token")
        self.endpoint = endpoint
        # The routing id is only an address (None = libzmq's own); it grants nothing on the server.
        self.routing_id = routing_id
        # The identity: the server files this client's jobs, photos and sessions under it (without
        # CURVE). None = a fresh random one, good for this Client object only.
        self.token = token or new_token()
        self.keys = keys
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = max(1, retries)
        self.client_name = client_name
        self.welcome: protocol.Welcome | None = None
        self.heartbeat_s = 2.0
        self._zmq = import_zmq()
        self._ctx = self._zmq.Context.instance()
        self._socket: Any = None
        self._monitor: Any = None
        self._auth_failure = ""
        self._counter = 0
        self._prefix = "c" + uuid.uuid4().hex[:8] + "-"
        self._open()

    # -- socket management ------------------------------------------------------------------

    def _open(self) -> None:
        zmq = self._zmq
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        if self.routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, self.routing_id)
        if self.keys is not None:
            sock.curve_serverkey = self.keys.server_public
            sock.curve_publickey = self.keys.client_public
            sock.curve_secretkey = self.keys.client_secret
        # A monitor tells handshake failures apart from silence (wrong server key, key not allowed).
        self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                                | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"cannot connect to {self.endpoint!r}: {exc}") from None
        self._socket = sock
        self._auth_failure = ""

    def _reopen(self) -> None:
        self._close_socket()
        self._open()

    def _close_socket(self) -> None:
        if self._socket is not None:
            try:
                self._socket.disable_monitor()
            except self._zmq.ZMQError:
                pass
            if self._monitor is not None:
                self._monitor.close(0)
                self._monitor = None
            self._socket.close(0)
            self._socket = None

    def close(self) -> None:
        self._close_socket()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter}"

    def _send(self, message: protocol.Message, request_id: str) -> None:
        """Send one message; never blocks longer than the connect timeout.

        A DEALER blocks on send while it has no usable connection (for instance after a failed
        CURVE handshake tore the pipe down), so wait for writability with a bound and send
        non-blocking; silence is reported like a missing reply (unavailable, or the auth failure).
        """
        zmq = self._zmq
        frames = protocol.encode(message, request_id, self.token)
        if not self._socket.poll(int(max(self.connect_timeout_s, 0.05) * 1000), zmq.POLLOUT):
            raise self._silence_error(self.connect_timeout_s, "sending a request")
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise self._silence_error(self.connect_timeout_s, "sending a request") from None

    def _drain_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        zmq = self._zmq
        while self._monitor is not None and self._monitor.poll(0):
            message = recv_monitor_message(self._monitor)
            event = message["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._auth_failure = ""
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self.keys is None:
                # a server without CURVE refuses a handshake only past its --max-peers
                self._auth_failure = ("the server refused the connection: it has too many connections "
                                      "right now (its --max-peers); try again in a moment")
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._auth_failure = ("the server refused this client's key (it is not on the server's "
                                      "allow-list; add it with `draggan-backend keys allow` on the server), "
                                      "or it has too many connections right now (its --max-peers)")
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                if self.keys is None:
                    self._auth_failure = ("the server requires CURVE keys and this client has none; on the "
                                          "server's machine they are in the keys folder of the user who runs "
                                          "`draggan-backend serve` (it makes them; `python install.py` too), "
                                          "elsewhere set them up as docs/remote.md describes "
                                          "(`draggan-backend keys`)")
                else:
                    self._auth_failure = ("the secure handshake with the server failed: the pinned server "
                                          "public key (server.key) does not match the server's, or the server "
                                          "does not use CURVE (it was started with --insecure-tokens or "
                                          "--insecure); compare with `draggan-backend keys list` on the server")

    def _recv(self, timeout_s: float) -> protocol.Envelope | None:
        """The next message within ``timeout_s`` (None when none came). Invalid replies raise."""
        if self._socket.poll(int(max(0.0, timeout_s) * 1000)):
            frames = self._socket.recv_multipart(copy=True)
            return protocol.decode(frames, allowed=protocol.REPLY_TYPES)
        self._drain_monitor()
        return None

    def _silence_error(self, seconds: float, doing: str) -> ProtocolError:
        self._drain_monitor()
        if self._auth_failure:
            return ProtocolError(ErrorCode.AUTH, f"{self._auth_failure} (endpoint {self.endpoint})")
        return ProtocolError(ErrorCode.TIMEOUT if self.welcome else ErrorCode.UNAVAILABLE,
                             f"no answer from the DragGAN backend at {self.endpoint} for {seconds:.0f} s "
                             f"while {doing}; is `draggan-backend serve` running there (and reachable)?")

    # -- requests ---------------------------------------------------------------------------

    def hello(self) -> protocol.Welcome:
        """Handshake with Lazy-Pirate retries (a fresh socket per try). Checks the protocol version."""
        for attempt in range(self.retries):
            request_id = self._next_id()
            self._send(protocol.Hello(client=self.client_name), request_id)
            deadline = time.monotonic() + self.connect_timeout_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    env = self._recv(left)
                except ProtocolError as exc:
                    if exc.code == ErrorCode.VERSION_MISMATCH:
                        raise ProtocolError(exc.code, f"the backend at {self.endpoint} sent a message this "
                                                      f"plug-in cannot read: {exc.message}") from None
                    raise
                if env is None:
                    break
                if env.id != request_id:
                    continue  # a late reply to an earlier try
                if isinstance(env.message, Error):
                    raise env.message.exception()
                if not isinstance(env.message, protocol.Welcome):
                    raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected 'welcome', got {env.type!r}")
                welcome = env.message
                if welcome.protocol != protocol.PROTOCOL_VERSION:
                    raise ProtocolError(ErrorCode.VERSION_MISMATCH,
                                        f"the backend speaks protocol {welcome.protocol}, this plug-in "
                                        f"{protocol.PROTOCOL_VERSION}; install the same release on both sides")
                self.welcome = welcome
                self.heartbeat_s = welcome.heartbeat_s
                return welcome
            self._drain_monitor()
            if self._auth_failure:
                raise ProtocolError(ErrorCode.AUTH, f"{self._auth_failure} (endpoint {self.endpoint})")
            if attempt + 1 < self.retries:
                self._reopen()
        raise self._silence_error(self.connect_timeout_s * self.retries, "connecting")

    def _ensure_hello(self) -> protocol.Welcome:
        return self.welcome if self.welcome is not None else self.hello()

    def _call(self, message: protocol.Message, expect: type) -> Any:
        self._ensure_hello()
        request_id = self._next_id()
        self._send(message, request_id)
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            env = self._recv(left)
            if env is None:
                break
            if env.id != request_id:
                continue
            if isinstance(env.message, Error):
                raise env.message.exception()
            if isinstance(env.message, expect):
                return env.message
        raise self._silence_error(self.timeout_s, f"waiting for '{message.TYPE}'")

    def ping(self) -> protocol.Pong:
        return self._call(protocol.Ping(), protocol.Pong)  # type: ignore[no-any-return]

    def purge(self) -> protocol.Purged:
        """Ask the server to forget this client's cached images and sessions."""
        return self._call(protocol.Purge(), protocol.Purged)  # type: ignore[no-any-return]

    def cancel(self, job: str | None = None) -> None:
        """Ask the server to stop ``job`` (a request id from :meth:`submit`; None = all of ours).
        Fire and forget: the job's stream ends with a ``cancelled`` error."""
        self._send(protocol.Cancel(job=job), self._next_id())

    def stop(self, job: str) -> None:
        """Ask the server to end job ``job``'s drag at its next step and answer with the result so far
        (``result.stopped``). Fire and forget: the job's stream ends with that result (or, when the drag
        had not begun, with a ``cancelled`` error)."""
        self._send(protocol.Stop(job=job), self._next_id())

    def submit(self, request: protocol.Edit | protocol.Continue | protocol.Undo) -> str:
        """Send an edit/continue and return its request id; read its replies with :meth:`stream`."""
        self._ensure_hello()
        request_id = self._next_id()
        self._send(request, request_id)
        return request_id

    def stream(self, request_id: str, should_cancel: Callable[[], bool] | None = None,
               should_stop: Callable[[], bool] | None = None) -> Iterator[protocol.Progress | protocol.Result]:
        """Yield the job's ``progress`` messages, then its ``result``; an ``error`` raises ProtocolError.

        Sends heartbeats while waiting; fails with TIMEOUT after ``timeout_s`` of silence, and with
        UNAVAILABLE when the server restarted or no longer knows the job. ``should_cancel`` and
        ``should_stop`` are polled at least every POLL_S, even while the server is silent (loading a
        model); when ``should_cancel`` turns true the job is cancelled (the stream then ends with
        CANCELLED), when ``should_stop`` does it is stopped (the stream ends with the result so far)."""
        cancel_sent = stop_sent = False
        welcome = self._ensure_hello()
        # Ping twice per server interval: the server aborts after two silent intervals, so a
        # client starved of CPU for a moment is not mistaken for a vanished one.
        heartbeat = self.heartbeat_s / 2
        last_heard = last_ping = time.monotonic()
        ping_ids: set[str] = set()  # only pongs to this stream's pings say anything about the job
        while True:
            now = time.monotonic()
            if now - last_ping >= heartbeat:
                ping_id = self._next_id()
                ping_ids.add(ping_id)
                self._send(protocol.Ping(), ping_id)
                last_ping = now
            if now - last_heard > self.timeout_s:
                raise self._silence_error(self.timeout_s, "waiting for the edit")
            if should_cancel is not None and not cancel_sent and should_cancel():
                self.cancel(request_id)
                cancel_sent = True
            if should_stop is not None and not stop_sent and should_stop():
                self.stop(request_id)
                stop_sent = True
            wait = min(heartbeat, max(0.01, last_ping + heartbeat - now))
            if should_cancel is not None or should_stop is not None:
                wait = min(wait, POLL_S)
            env = self._recv(wait)
            if env is None:
                continue
            last_heard = time.monotonic()
            message = env.message
            if isinstance(message, protocol.Pong):
                if env.id not in ping_ids:
                    continue
                if message.instance and welcome.instance and message.instance != welcome.instance:
                    self.welcome = None
                    # behind a load balancer (docs/studio.md) ZeroMQ may have reconnected to another
                    # replica after this one died: the job is lost all the same
                    raise ProtocolError(ErrorCode.UNAVAILABLE, "the DragGAN backend restarted during the edit "
                                                               "(or its load balancer moved this connection to "
                                                               "another replica) and lost it; run the edit again")
                if request_id not in message.jobs:
                    # One connection's messages arrive in order and the server forwards a job's last
                    # message before it forgets the job, so a pong without the job means it was lost.
                    raise ProtocolError(ErrorCode.UNAVAILABLE, "the DragGAN backend no longer knows this "
                                                               "edit (restarted or dropped it); run it again")
                continue
            if env.id != request_id:
                continue
            if isinstance(message, Error):
                raise message.exception()
            if isinstance(message, protocol.Progress):
                yield message
            elif isinstance(message, protocol.Result):
                yield message
                return

    def run(self, request: protocol.Edit | protocol.Continue | protocol.Undo,
            on_progress: Callable[[protocol.Progress], None] | None = None,
            should_cancel: Callable[[], bool] | None = None,
            should_stop: Callable[[], bool] | None = None) -> protocol.Result:
        """Submit ``request`` and wait for its result, calling ``on_progress`` for each progress
        message. When ``should_cancel()`` turns true the job is cancelled (raises CANCELLED); when
        ``should_stop()`` does, the drag ends early and its result so far is returned."""
        request_id = self.submit(request)
        for message in self.stream(request_id, should_cancel, should_stop):
            if isinstance(message, protocol.Result):
                return message
            if on_progress is not None:
                on_progress(message)
        raise ProtocolError(ErrorCode.INTERNAL, "the stream ended without a result")  # not reached

    def edit(self, request: protocol.Edit, on_progress: Callable[[protocol.Progress], None] | None = None,
             should_cancel: Callable[[], bool] | None = None) -> protocol.Result:
        return self.run(request, on_progress, should_cancel)

    def continue_(self, request: protocol.Continue,
                  on_progress: Callable[[protocol.Progress], None] | None = None,
                  should_cancel: Callable[[], bool] | None = None) -> protocol.Result:
        return self.run(request, on_progress, should_cancel)

    def undo(self, session_id: str, result: str | None = None,
             on_progress: Callable[[protocol.Progress], None] | None = None) -> protocol.Result:
        """Take back the session's last drag: the result of the state before it (``history``: the undos
        left). A session with nothing left to undo raises BAD_REQUEST."""
        return self.run(protocol.Undo(session_id=session_id, result=result), on_progress)
