"""The DragGAN backend server: a ZeroMQ ROUTER socket loop plus one worker thread for GPU jobs.

Threads and data flow::

    clients (DEALER) ──► ROUTER ── socket loop (main thread) ──► pending deque (bounded) ──► worker
                          ▲        hello/ping/cancel/purge          │                         │
                          └──────── answered at once ◄──── inproc PULL ◄──── progress/result ──┘

* The socket loop never runs model code: it validates every message (protocol.decode), answers
  ``hello``/``ping``/``cancel``/``purge`` at once, queues edits, watches heartbeats, and forwards what
  the worker produced. Only the loop touches the ROUTER socket (ZeroMQ sockets are not thread-safe);
  the worker hands its messages over an inproc PUSH/PULL pair.
* One job runs at a time; at most ``queue_limit`` wait. A further edit gets ``busy`` at once.
* A connection that sends nothing for two heartbeat intervals while it has a job gets the job
  aborted (the GIMP plug-in is killed outright by its status-bar cancel).
* The job itself (invert, drag) is the runner's business (``backend.edit_runner``); the server only needs
  the small :class:`Runner` interface, so scheduling can be tested without a model. PNG payloads are
  checked from their header on the loop and decoded with Pillow in the worker, just before the run.

Ownership (protocol 2; see docs/remote.md for the threat model):

* The *owner* of a request is the client's CURVE public key when CURVE is on, else a hash of the
  identity token every request carries. The ZeroMQ routing id is only an address: a peer may
  choose it, and libzmq's automatic ids are a predictable counter, so it grants nothing.
* A connection is the (routing id, socket fd) pair the loop saw, and it belongs to the owner of its
  first request; a request with another identity on it is refused. ROUTER_HANDOVER is off, and a
  socket monitor reports every disconnect: the jobs of a connection that went away are cancelled at
  once and their output is dropped, so a peer that later presents the same routing id receives
  nothing of them, and a peer never sees or touches another connection's jobs.
* Waiting jobs are served round-robin between owners; each owner may have ``owner_queue_limit``
  waiting. A ZAP handler refuses keys that are not on the allow-list (CURVE) and keeps the number
  of connections at ``max_peers``, which bounds the memory held in half-received frames.

Fair limits (identities may be cheap: any number of tokens, or a studio's allowed keys). When the
queue, the peer limit or a store is full, a newcomer still gets in by taking the place of whoever
holds the most, and among owners holding equally much, of whoever is under *pressure*: refused,
pushed out, or pushing others out lately (:class:`OwnerBook`; the stores add their own evictions).
Among otherwise equal owners, the one the server has known longest keeps its place, so a crowd of
freshly minted identities churns through its own places and never through an earlier client's.

* Queue: the most recently queued job of the owner holding the most waiting jobs gives way when
  that owner holds more than the newcomer would, or as much but under more pressure (or as much
  pressure and newer). It is answered ``busy``. A running job never gives way.
* Peers: past ``max_peers`` the ZAP handler shuts one connection down (its socket, from the
  monitor's fd) to admit the newcomer: never one with a queued or running job; first connections
  that sent no request within a second of connecting, then those of owners with several
  connections or under pressure (the most connections, then the most pressure, then the newest
  owner; idle ones before those heard from within two seconds, least recently heard from first),
  then the connections that just came, last the calm owners' single connections (the newest owner
  first). A dropped client loses nothing but the connection: ZeroMQ reconnects it under the same
  identity, and its next request goes there.
* Stores: ``backend.stores.OwnedStore``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from draggan_wire import protocol
from draggan_wire.protocol import Error, ErrorCode, ProtocolError

log = logging.getLogger("draggan.backend")

SERVER_VERSION = "0.1.0"
Request = Any  # protocol.Edit | protocol.Continue | protocol.Undo


class Runner(Protocol):
    """What the server needs from the thing that runs edits (backend.edit_runner.EditRunner in production).

    Optional, looked up with getattr: ``stores() -> dict[str, int]`` (figures for ``welcome`` and
    ``status``) and ``pressure(owner) -> int`` (how often the owner lately lost or took a place in
    the runner's own stores; added to the server's own record when it decides who gives way)."""

    device: str

    def models(self) -> list[protocol.ModelEntry]: ...

    def memory(self) -> tuple[int, int]:
        """(total, used) bytes of the device's memory; 0 where unknown."""
        ...

    def precheck(self, owner: str, request: Request) -> None:
        """Cheap checks before queueing (model known, image/session ids owned, room in the owner's
        stores). Raises ProtocolError. Called from the socket loop: must not block."""
        ...

    def run(self, owner: str, request: Request, emit: Callable[[protocol.Progress], None],
            should_cancel: Callable[[], bool], should_stop: Callable[[], bool] | None = None) -> protocol.Result:
        """Run one edit in the worker thread. Raises ProtocolError (typed), ValueError (bad input),
        MemoryError / torch OOM, or anything else (then logged as internal). ``should_stop`` turns true
        when the client sent ``stop``: a drag then ends at its next step and the result so far is
        returned (``stopped`` true); a runner that cannot stop may treat it as a cancel."""
        ...

    def purge(self, owner: str) -> tuple[int, int]:
        """Forget ``owner``'s cached images and sessions; returns (images, sessions) removed."""
        ...


@dataclass
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    heartbeat_s: float = 2.0
    queue_limit: int = 4  # jobs waiting behind the running one
    auth: str = "none"  # "curve" or "none"
    server_public_key: bytes | None = None
    server_secret_key: bytes | None = None
    allowed_clients_dir: str | None = None  # folder of client *.key files (CURVE allow-list)
    cache: bool = True
    progress_interval_s: float = 0.05  # plain drag steps are sent at most this often (previews always)
    send_hwm: int = 200  # messages queued per client before ZeroMQ drops (a slow client never blocks us)
    shutdown_grace_s: float = 5.0
    max_peers: int = 16  # connections; past it the ZAP handler closes one (or refuses): bounds half-sent frames
    owner_queue_limit: int = 2  # jobs one owner may have waiting (the queue is shared round-robin)
    handshake_s: float = 10.0  # a connection that has not finished the ZMTP handshake by then is dropped
    pressure_window_s: float = 600.0  # refusals and pushes counted against an owner for this long


@dataclass(eq=False)
class Connection:
    """One live connection as the loop knows it: routing id + the socket fd its frames came from.
    ``alive`` turns false when the monitor reports the fd closed; nothing is sent for it after that."""

    conn: bytes
    fd: int
    owner: str
    last_seen: float = field(default_factory=time.monotonic)
    alive: bool = True


@dataclass(eq=False)
class Peer:
    """An accepted connection as the socket monitor reports it, for the peer limit. ``owner`` and
    ``last_seen`` come from the loop (its first request names the owner); ``shed``: shut down by the
    ZAP handler to make room, its close event not seen yet."""

    fd: int
    accepted: float
    owner: str = ""
    last_seen: float = 0.0
    shed: bool = False


PEER_GRACE_S = 1.0  # a client sends its first request right after the handshake; silence past this is not a client
PEER_ACTIVE_S = 2.0  # a connection heard from this recently is in use: shed after the idle ones


class OwnerBook:
    """What the server remembers of each owner for its fair limits: when it was first seen (the
    longer known keeps its place among equals) and its *pressure* (busy refusals and places lost
    within ``window_s``). Bounded: past ``capacity`` owners the least recently active is forgotten
    (it then counts as new, which only ever makes it give way sooner). Thread-safe."""

    def __init__(self, capacity: int = 65536, window_s: float = 600.0) -> None:
        self.capacity = capacity
        self.window_s = window_s
        self._first: collections.OrderedDict[str, float] = collections.OrderedDict()  # by last activity
        self._pressed: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def seen(self, owner: str, now: float) -> None:
        with self._lock:
            if owner in self._first:
                self._first.move_to_end(owner)
                return
            self._first[owner] = now
            while len(self._first) > self.capacity:
                gone, _ = self._first.popitem(last=False)
                self._pressed.pop(gone, None)

    def first_seen(self, owner: str) -> float:
        """When ``owner`` was first seen (infinity when unknown: newest of all)."""
        with self._lock:
            return self._first.get(owner, math.inf)

    def press(self, owner: str, now: float) -> None:
        with self._lock:
            times = self._pressed.get(owner)
            if times is None:
                if len(self._pressed) >= self.capacity:
                    self._pressed.pop(next(iter(self._pressed)))
                times = self._pressed[owner] = collections.deque(maxlen=64)
            times.append(now)

    def pressure(self, owner: str, now: float) -> int:
        with self._lock:
            times = self._pressed.get(owner)
            if not times:
                return 0
            while times and times[0] < now - self.window_s:
                times.popleft()
            return len(times)

    def __len__(self) -> int:
        with self._lock:
            return len(self._first)


@dataclass(eq=False)
class Job:
    conn: bytes  # ZeroMQ routing id of the connection (an address only)
    owner: str  # isolation key: "key:" + CURVE public key, or "tok:" + hash of the identity token
    request_id: str
    request: Request
    link: Connection | None = None  # the connection that submitted it: output goes only there
    submitted: float = field(default_factory=time.monotonic)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    stop_event: threading.Event = field(default_factory=threading.Event)  # ``stop``: end the drag, keep it
    cancel_reason: str = ""
    started: bool = False
    step: int = 0  # last drag step reported
    step_at_cancel: int | None = None

    @property
    def key(self) -> tuple[bytes, str]:
        return (self.conn, self.request_id)


@dataclass
class JobRecord:
    """What became of a job (kept for tests and the log)."""

    request_id: str
    owner: str
    outcome: str  # "result" or an error code
    reason: str
    steps: int
    step_at_cancel: int | None
    seconds: float


_CANCEL_REASONS = {
    "client": "the edit was cancelled",
    "vanished": "the edit was aborted: the client stopped sending heartbeats",
    "shutdown": "the edit was cancelled: the DragGAN backend is shutting down",
    "disconnected": "the edit was cancelled: the client's connection closed",
    "stopped": "the edit was stopped before its drag began: there is no drag to keep",
}

# ZAP status code (RFC 27) for a refused handshake. libzmq closes the connection at once only for
# 400 (a 300 "temporary failure" leaves it pending), so too many connections get 400 too.
ZAP_TOO_MANY = b"400"
ZAP_DENIED = b"400"


def _listener_address(endpoint: str) -> tuple[int, Any]:
    """(family, port or socket path) of a bound endpoint, to recognise its accepted connections."""
    if endpoint.startswith("ipc://"):
        return getattr(socket, "AF_UNIX", 0), endpoint[len("ipc://"):]
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    return (socket.AF_INET6 if host.startswith("[") else socket.AF_INET), number


def owner_of_token(token: str) -> str:
    """The owner id for an identity token: a hash, so logs and memory never hold the secret."""
    return "tok:" + hashlib.sha256(b"draggan-owner\0" + token.encode("ascii")).hexdigest()[:32]


def decode_pending(request: Request) -> None:
    """Decode the request's checked-but-undecoded PNG payloads (protocol.PendingImage) in place, with
    Pillow (C, with its decompression-bomb limits). Worker thread only. Raises ProtocolError."""
    for name in ("image", "mask"):
        value = getattr(request, name, None)
        if isinstance(value, protocol.PendingImage):
            setattr(request, name, decode_png_pillow(value))


_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def decode_png_pillow(pending: protocol.PendingImage) -> protocol.Image:
    from PIL import Image as PILImage

    field_name = pending.field
    try:
        with PILImage.open(io.BytesIO(pending.png), formats=["PNG"]) as im:
            if im.size != (pending.width, pending.height) or im.mode != _PIL_MODES[pending.channels]:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"{field_name}: the PNG is {im.size[0]}x{im.size[1]} "
                                                           f"{im.mode}, its header said otherwise", field_name)
            im.load()  # bounded: Pillow inflates exactly width x height pixels (bombs are refused)
            data = im.tobytes()
    except ProtocolError:
        raise
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{field_name}: corrupt PNG data ({exc})", field_name) from None
    return protocol.Image(pending.width, pending.height, pending.channels, data)


class Server:
    """Create, then ``serve_forever()`` (blocks) or ``start_thread()``; ``request_stop()`` ends it."""

    def __init__(self, config: ServerConfig, runner: Runner) -> None:
        self.config = config
        self.runner = runner
        self.instance = uuid.uuid4().hex[:12]
        self.stats: collections.Counter[str] = collections.Counter()
        self.records: collections.deque[JobRecord] = collections.deque(maxlen=1000)
        self.jobs: dict[tuple[bytes, str], Job] = {}  # queued + running (socket-loop thread only)
        self.current: Job | None = None  # the running job (set by the worker)
        self._pending: list[Job] = []  # waiting jobs, in arrival order (served round-robin by owner)
        self._rotation: list[str] = []  # owners in round-robin order: the next job is the first one's
        self._cond = threading.Condition()
        self._conns: dict[bytes, Connection] = {}  # routing id -> the live connection using it
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._zap_thread: threading.Thread | None = None
        self._outbox_addr = f"inproc://draggan-outbox-{self.instance}"
        self._start_error: BaseException | None = None
        self.endpoint = config.bind  # the resolved endpoint after binding (port 0 -> real port)
        import zmq
        from zmq.auth import load_certificates
        from zmq.utils import z85
        from zmq.utils.monitor import parse_monitor_message

        self._zmq = zmq
        # imported once here: the loop and the ZAP thread never import while serving
        self._load_certificates = load_certificates
        self._z85_encode = z85.encode
        self._parse_monitor = parse_monitor_message
        self._ctx = zmq.Context()
        self._allowed_keys: set[bytes] = set()
        self._allow_mtime = -1.0
        self._socket: Any = None
        self._outbox: Any = None
        self._monitor: Any = None
        self._zap: Any = None
        self._monitor_lock = threading.Lock()  # every use of the monitor (loop and ZAP thread) is under it
        self._closed_fds: collections.deque[tuple[str, int]] = collections.deque()  # for the loop
        # accepted connections not closed yet (monitor's view) with what the loop knows of them;
        # the ZAP thread reads it to pick a connection to shed (under _peers_lock, taken after the
        # monitor lock, never before)
        self._peers: dict[int, Peer] = {}
        self._peers_lock = threading.Lock()
        self._job_fds: frozenset[int] = frozenset()  # fds with a queued or running job (set by the loop)
        self._listener: tuple[int, Any] = (0, None)  # (family, port or ipc path) of the bound endpoint
        self.owners = OwnerBook(window_s=config.pressure_window_s)

    # -- life cycle ---------------------------------------------------------------------------

    def bind(self) -> None:
        zmq = self._zmq
        cfg = self.config
        # The ZAP handler sees every handshake (NULL and CURVE): peer cap and allow-list.
        self._zap = self._ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind("inproc://zeromq.zap.01")
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # Frames above the limit make libzmq drop the connection before buffering them.
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        sock.setsockopt(zmq.SNDHWM, cfg.send_hwm)
        sock.setsockopt(zmq.RCVHWM, 1000)
        # No handover: a second peer presenting a routing id in use is ignored by libzmq, never given
        # the first one's place (routing ids are guessable; they are addresses, not identities).
        sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(cfg.handshake_s * 1000))
        sock.setsockopt(zmq.ZAP_DOMAIN, b"draggan")
        if cfg.auth == "curve":
            self._reload_allow_list(force=True)
            sock.curve_server = True
            sock.curve_secretkey = cfg.server_secret_key
            sock.curve_publickey = cfg.server_public_key
        self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        sock.bind(cfg.bind)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._listener = _listener_address(self.endpoint)
        self._socket = sock
        self._outbox = self._ctx.socket(zmq.PULL)
        self._outbox.setsockopt(zmq.LINGER, 0)
        self._outbox.bind(self._outbox_addr)
        self._zap_thread = threading.Thread(target=self._zap_main, name="draggan-zap", daemon=True)
        self._zap_thread.start()

    def _reload_allow_list(self, force: bool = False) -> None:
        """The allow-list folder is re-read when it changes, so `draggan-backend keys allow` takes
        effect without a restart (checked at each handshake)."""
        directory = self.config.allowed_clients_dir
        if not directory:
            return
        try:
            mtime = os.stat(directory).st_mtime
        except OSError:
            mtime = 0.0
        if force or mtime != self._allow_mtime:
            self._allow_mtime = mtime
            try:
                self._allowed_keys = set(self._load_certificates(directory))
            except OSError:
                self._allowed_keys = set()
            log.info("CURVE allow-list loaded from %s (%d client keys)", directory, len(self._allowed_keys))

    def _drain_monitor(self) -> None:
        """Read the socket monitor's events (any thread): which fds are open, which just closed."""
        zmq = self._zmq
        with self._monitor_lock:
            if self._monitor is None:
                return
            while True:
                try:
                    frames = self._monitor.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                except zmq.ZMQError:
                    return
                try:
                    event = self._parse_monitor(frames)
                    fd = int(event["value"])
                except Exception as exc:  # noqa: BLE001 - a bad monitor frame must not kill a serving thread
                    log.warning("ignoring an unreadable socket-monitor event: %r", exc)
                    continue
                if event["event"] == zmq.EVENT_ACCEPTED:
                    with self._peers_lock:
                        self._peers[fd] = Peer(fd=fd, accepted=time.monotonic())
                    self._closed_fds.append(("accepted", fd))  # an fd number reused: older users are gone
                elif event["event"] == zmq.EVENT_DISCONNECTED:
                    with self._peers_lock:
                        self._peers.pop(fd, None)
                    self._closed_fds.append(("closed", fd))

    def _zap_main(self) -> None:
        """ZAP handler (RFC 27): with CURVE, refuse keys that are not on the allow-list; keep the
        connections at ``max_peers`` by shedding one (``_make_room``) or, when none may go, refusing
        the newcomer. The owner of a CURVE connection is its public key (ZAP User-Id)."""
        zmq = self._zmq
        zap = self._zap
        while not self._stop.is_set():
            try:
                if not zap.poll(100):
                    continue
                request = zap.recv_multipart()
            except zmq.ZMQError:  # closed at shutdown
                return
            version, request_id = request[0], request[1] if len(request) > 1 else b""
            mechanism = request[5] if len(request) > 5 else b""
            status, text, user = b"200", b"OK", b""
            if mechanism == b"CURVE":
                key = self._z85_encode(request[6]) if len(request) > 6 and len(request[6]) == 32 else b""
                self._reload_allow_list()
                if key and key in self._allowed_keys:
                    user = key
                else:
                    status, text = ZAP_DENIED, b"client key not allowed"
                    self.stats["refused:key"] += 1
            elif self.config.auth == "curve":
                status, text = ZAP_DENIED, b"CURVE required"
            if status == b"200":  # only a connection that may come in can make room
                try:
                    self._drain_monitor()
                    with self._peers_lock:
                        peers = sum(1 for peer in self._peers.values() if not peer.shed)
                    if peers > self.config.max_peers and not self._make_room():
                        status, text = ZAP_TOO_MANY, b"too many connections"
                        self.stats["refused:max_peers"] += 1
                except Exception:  # noqa: BLE001 - this thread must answer every handshake, always
                    log.exception("the peer limit failed for a new connection; refusing it")
                    status, text = ZAP_TOO_MANY, b"too many connections"
            try:
                zap.send_multipart([version, request_id, status, text, user, b""])
            except zmq.ZMQError:
                return

    def _make_room(self) -> bool:
        """Shut one connection down so that the one being admitted fits (ZAP thread). Never one with
        a job; the order is in the module docstring. False when nothing may go."""
        now = time.monotonic()
        with self._peers_lock:  # copies: the loop updates owner and last_seen meanwhile
            busy = self._job_fds
            live = [dataclasses.replace(peer) for peer in self._peers.values() if not peer.shed]
        conns = collections.Counter(peer.owner for peer in live if peer.owner)
        fresh = sorted((p for p in live if not p.owner and now - p.accepted < PEER_GRACE_S and p.fd not in busy),
                       key=lambda p: p.accepted)
        fresh = fresh[:-1]  # the youngest is most likely the connection asking to come in now
        silent = sorted((p for p in live if not p.owner and now - p.accepted >= PEER_GRACE_S and p.fd not in busy),
                        key=lambda p: p.accepted)
        pressure = {owner: self._pressure(owner, now) for owner in conns}
        rank = {owner: (-conns[owner], -pressure[owner], -self.owners.first_seen(owner)) for owner in conns}
        known = sorted((p for p in live if p.owner and p.fd not in busy),
                       key=lambda p: (rank[p.owner], now - p.last_seen < PEER_ACTIVE_S, p.last_seen))
        # an owner with one connection and no pressure is calm: it goes after the connections that
        # just came (one of which is likely the one asking now), so a flood of new connections
        # churns through itself and not through the clients that were here before it
        crowded = [p for p in known if conns[p.owner] > 1 or pressure[p.owner] > 0]
        calm = [p for p in known if conns[p.owner] == 1 and pressure[p.owner] == 0]
        for peer in [*silent, *crowded, *fresh, *calm]:
            if self._shed(peer):
                return True
        return False

    def _shed(self, peer: Peer) -> bool:
        """Shut ``peer``'s socket down; libzmq then sees it close (and the monitor reports it). Only
        a duplicate of the descriptor is opened and closed here, so libzmq's own stays valid; the
        duplicate is checked to be a connection accepted on our endpoint (a file descriptor number
        may have been reused in between)."""
        family, local = self._listener
        try:
            if os.name == "posix":
                dup = os.dup(peer.fd)
                try:
                    sock = socket.socket(fileno=dup)
                except OSError:
                    os.close(dup)
                    raise
            else:
                sock = socket.fromfd(peer.fd, family, socket.SOCK_STREAM)
        except (OSError, ValueError):
            return False
        with sock:
            try:
                if getattr(socket, "SO_ACCEPTCONN", None) is not None and \
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    return False  # a listening socket, never a connection
                name = sock.getsockname()
                if isinstance(local, str):  # ipc://: the socket file's path
                    ours = sock.family == family and name == local
                else:  # tcp://: any local address (a wildcard bind accepts on each), our port
                    ours = sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(name, tuple) \
                        and len(name) >= 2 and name[1] == local
                if not ours:
                    return False
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                return False
        with self._peers_lock:
            current = self._peers.get(peer.fd)
            if current is not None and current.accepted == peer.accepted:
                current.shed = True
        self.stats["shed:peers"] += 1
        log.info("connection %d of %s shut down to make room for a new one (--max-peers %d)", peer.fd,
                 peer.owner or "a client that sent nothing", self.config.max_peers)
        return True

    def _pressure(self, owner: str, now: float) -> int:
        """The owner's pressure: the server's own record plus its stores' (runner.pressure)."""
        extra = getattr(self.runner, "pressure", None)
        try:
            more = int(extra(owner)) if callable(extra) else 0
        except Exception:  # noqa: BLE001 - a runner's figure must never break scheduling
            more = 0
        return self.owners.pressure(owner, now) + more

    def start_thread(self) -> Server:
        """Bind and serve in a background thread (tests, embedding). Returns self once bound."""
        self._thread = threading.Thread(target=self._thread_main, name="draggan-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._start_error is not None:
            raise self._start_error
        return self

    def _thread_main(self) -> None:
        try:
            self.bind()
        except BaseException as exc:  # reported to start_thread's caller
            self._start_error = exc
            self._ready.set()
            self._close()
            return
        self.serve_forever(already_bound=True)

    def request_stop(self) -> None:
        """Thread- and signal-safe: the loop cancels jobs, tells clients, closes sockets and returns."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def serve_forever(self, already_bound: bool = False) -> None:
        if not already_bound:
            self.bind()
        self._worker = threading.Thread(target=self._worker_main, name="draggan-worker", daemon=True)
        self._worker.start()
        self._ready.set()
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._outbox, zmq.POLLIN)
        # The monitor socket is not polled here: zmq_poll reads a socket's state (ZMQ_FD/ZMQ_EVENTS)
        # outside the monitor lock while the ZAP thread receives on it under the lock, a data race
        # inside libzmq (sockets are not thread-safe); the likely cause of one process abort seen
        # under a 10^4-connection probe. Both threads touch it only in _drain_monitor, under the lock; this loop
        # drains it every pass, so a closed connection is still seen within one tick (<= 0.1 s) and
        # always before a message on a reused routing id is handled.
        tick = max(0.01, min(0.1, self.config.heartbeat_s / 4))
        next_check = time.monotonic() + tick
        last_loop = time.monotonic()
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(int(tick * 1000)))
                self._connections_changed()
                if self._outbox in events:
                    self._forward_outbox()
                if self._socket in events:
                    # Bounded batch so that forwarding and heartbeats keep up under a flood.
                    for _ in range(200):
                        try:
                            frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._connections_changed()  # a closed connection is known before its id is reused
                        self._handle(frames)
                self._publish_job_fds()
                now = time.monotonic()
                if now - last_loop > tick * 5:
                    # This loop itself was starved (CPU or GIL): credit every client the time it
                    # could not have been heard, instead of blaming them for our stall.
                    stall = now - last_loop
                    for link in self._conns.values():
                        if link.last_seen < last_loop:  # not refreshed by a message handled just now
                            link.last_seen += stall
                    for job in self.jobs.values():
                        job.submitted += stall
                last_loop = now
                if now >= next_check:
                    self._check_heartbeats(now)
                    next_check = now + tick
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        log.info("shutting down: cancelling %d job(s)", len(self.jobs))
        with self._cond:
            pending = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in pending:
            self._finish_unstarted(job, "shutdown")
        running = self.current
        if running is not None:
            self._cancel(running, "shutdown")
        if self._worker is not None:
            deadline = time.monotonic() + self.config.shutdown_grace_s
            while self._worker.is_alive() and time.monotonic() < deadline:
                if self._outbox.poll(50):
                    self._forward_outbox()
            self._forward_outbox()
        self._close()
        self._stopped.set()
        log.info("stopped")

    def _close(self) -> None:
        self._stop.set()
        zap_alive = False
        if self._zap_thread is not None:
            self._zap_thread.join(10)   # it polls every 0.1 s; a starved machine may take longer
            zap_alive = self._zap_thread.is_alive()
        if self._socket is not None:
            try:
                self._socket.disable_monitor()
            except self._zmq.ZMQError:
                pass
        with self._monitor_lock:
            for sock in (self._socket, self._outbox, self._monitor):
                if sock is not None:
                    sock.close(0)
            self._monitor = None
        if zap_alive:
            # Closing a socket another thread is using is undefined in libzmq (it may abort the
            # process): leave the ZAP socket and the context to the process's exit instead.
            log.warning("the ZAP thread did not stop within 10 s: leaving its socket open")
            return
        if self._zap is not None:
            self._zap.close(0)
        self._ctx.destroy(linger=0)

    # -- connections (socket-loop thread) -----------------------------------------------------

    def _connections_changed(self) -> None:
        """Act on closed (or reused) fds: their connections are gone, their jobs are cancelled and
        nothing more is sent to their routing ids on their behalf."""
        self._drain_monitor()
        while self._closed_fds:
            _what, fd = self._closed_fds.popleft()
            for link in list(self._conns.values()):
                if link.fd == fd:
                    self._drop_connection(link, "disconnected")

    def _drop_connection(self, link: Connection, reason: str) -> None:
        link.alive = False
        if self._conns.get(link.conn) is link:
            del self._conns[link.conn]
        for job in list(self.jobs.values()):
            if job.link is link:
                self._cancel(job, reason)

    def _connection(self, conn: bytes, fd: int, owner: str) -> Connection:
        """The connection a message came on; a new one when the routing id is new or now used by
        another socket (the old user of that id is gone: its jobs are cancelled)."""
        link = self._conns.get(conn)
        if link is not None and link.fd != fd:
            self._drop_connection(link, "disconnected")
            link = None
        if link is None:
            link = Connection(conn=conn, fd=fd, owner=owner)
            self._conns[conn] = link
        return link

    def _note(self, link: Connection) -> None:
        """What the peer limit and the queue know of a connection's owner: it was active now."""
        self.owners.seen(link.owner, link.last_seen)
        with self._peers_lock:
            peer = self._peers.get(link.fd)
            if peer is not None:
                peer.owner = link.owner
                peer.last_seen = link.last_seen

    def _publish_job_fds(self) -> None:
        """Tell the ZAP thread which connections hold a job (those are never shed)."""
        fds = frozenset(job.link.fd for job in self.jobs.values() if job.link is not None)
        if fds != self._job_fds:
            with self._peers_lock:
                self._job_fds = fds

    def _deliverable(self, job: Job) -> bool:
        link = job.link
        return link is not None and link.alive and self._conns.get(job.conn) is link

    # -- message handling (socket-loop thread) ------------------------------------------------

    def _reply(self, conn: bytes, message: protocol.Message, request_id: str) -> None:
        try:
            self._socket.send_multipart([conn, *protocol.encode(message, request_id)], self._zmq.NOBLOCK)
        except self._zmq.ZMQError as exc:  # full queue of a slow client: its problem, not ours
            self.stats["send_dropped"] += 1
            log.debug("reply to %s dropped: %s", conn.hex(), exc)

    def _error(self, conn: bytes, request_id: str, code: str, message: str, field_name: str = "",
               trace_id: str = "") -> None:
        self._reply(conn, Error(code=code, message=message, field=field_name, trace_id=trace_id),
                    request_id or "unknown")

    def _handle(self, frames: list[Any]) -> None:
        conn = frames[0].bytes
        body = frames[1:]
        self.stats["messages"] += 1
        try:
            envelope = protocol.decode([f.buffer for f in body], allowed=protocol.REQUEST_TYPES, defer_png=True)
        except ProtocolError as exc:
            _, request_id = protocol.peek_header(body[0].bytes) if body else ("", "")
            self.stats[f"rejected:{exc.code}"] += 1
            self._error(conn, request_id, exc.code, exc.message, exc.field)
            return
        except Exception:  # a bug in validation must not kill the loop
            trace_id = uuid.uuid4().hex[:12]
            log.exception("internal error while decoding a message [trace %s]", trace_id)
            self.stats["rejected:internal"] += 1
            self._error(conn, "", ErrorCode.INTERNAL, "the server failed to read this message", trace_id=trace_id)
            return
        try:
            owner = self._owner(body[0], envelope.token)
            link = self._connection(conn, self._fd(body[0]), owner)
            if link.owner != owner:
                self.stats["rejected:owner"] += 1
                raise ProtocolError(ErrorCode.BAD_REQUEST, "header.token: this connection belongs to another "
                                                           "identity; open a new connection", "header.token")
            link.last_seen = time.monotonic()
            self._note(link)
            self._dispatch(link, envelope)
        except ProtocolError as exc:
            self.stats[f"rejected:{exc.code}"] += 1
            self._error(conn, envelope.id, exc.code, exc.message, exc.field)
        except Exception:
            trace_id = uuid.uuid4().hex[:12]
            log.exception("internal error handling '%s' [trace %s]", envelope.type, trace_id)
            self.stats["rejected:internal"] += 1
            self._error(conn, envelope.id, ErrorCode.INTERNAL,
                        f"internal error handling '{envelope.type}'; the server log has trace id {trace_id}",
                        trace_id=trace_id)

    def _fd(self, frame: Any) -> int:
        try:
            return int(frame.get(self._zmq.SRCFD))
        except (self._zmq.ZMQError, AttributeError, TypeError, ValueError):
            return -1

    def _owner(self, frame: Any, token: str) -> str:
        """``key:<CURVE public key>`` (from the ZAP User-Id) or ``tok:<hash of the token>``."""
        if self.config.auth == "curve":
            try:
                user = frame.get("User-Id")
            except Exception:
                user = None
            if not user:  # cannot happen behind our ZAP handler; never fall back to something weaker
                raise ProtocolError(ErrorCode.AUTH, "this connection has no CURVE identity")
            return f"key:{user}"
        return owner_of_token(token)

    def _dispatch(self, link: Connection, env: protocol.Envelope) -> None:
        msg = env.message
        conn = link.conn
        if isinstance(msg, protocol.Hello):
            self._reply(conn, self.welcome(), env.id)
        elif isinstance(msg, protocol.Ping):
            jobs = [job.request_id for job in self.jobs.values() if job.link is link]
            self._reply(conn, protocol.Pong(instance=self.instance, jobs=jobs), env.id)
        elif isinstance(msg, protocol.Cancel):
            count = 0
            for job in list(self.jobs.values()):
                if job.link is link and (msg.job is None or msg.job == job.request_id):
                    count += self._cancel(job, "client")
            self._reply(conn, protocol.CancelOk(cancelled=count), env.id)
        elif isinstance(msg, protocol.Stop):
            count = 0
            for job in list(self.jobs.values()):
                if job.link is link and msg.job == job.request_id:
                    count += self._stop_job(job)
            self._reply(conn, protocol.StopOk(stopping=count), env.id)
        elif isinstance(msg, protocol.Purge):
            images, sessions = self.runner.purge(link.owner)
            log.info("purged %d image(s) and %d session(s) of %s", images, sessions, link.owner)
            self._reply(conn, protocol.Purged(images=images, sessions=sessions), env.id)
        elif isinstance(msg, (protocol.Edit, protocol.Continue, protocol.Undo)):
            self._submit(link, env.id, msg)
        else:  # decode() only lets request types through
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"'{env.type}' is not a request")

    def welcome(self) -> protocol.Welcome:
        total, used = self.runner.memory()
        welcome = protocol.Welcome(server=SERVER_VERSION, protocol=protocol.PROTOCOL_VERSION,
                                   device=self.runner.device, models=self.runner.models(),
                                   memory_total=total, memory_used=used, heartbeat_s=self.config.heartbeat_s,
                                   instance=self.instance, auth=self.config.auth, cache=self.config.cache,
                                   queue_limit=self.config.queue_limit,
                                   running=1 if self.current is not None else 0, waiting=len(self._pending))
        welcome.limits["max_peers"] = self.config.max_peers
        welcome.stores = self.stores()
        return welcome

    def _queue_order(self) -> list[Job]:
        """The waiting jobs in the order the worker will take them (round-robin between owners,
        first come first served within one owner). Call with ``_cond`` held."""
        rotation = list(self._rotation)
        rotation += [job.owner for job in self._pending if job.owner not in rotation]
        by_owner: dict[str, collections.deque[Job]] = collections.defaultdict(collections.deque)
        for job in self._pending:
            by_owner[job.owner].append(job)
        order: list[Job] = []
        while len(order) < len(self._pending):
            for owner in rotation:
                if by_owner.get(owner):
                    order.append(by_owner[owner].popleft())
                    rotation.remove(owner)
                    rotation.append(owner)
                    break
        return order

    def _submit(self, link: Connection, request_id: str, request: Request) -> None:
        conn, owner = link.conn, link.owner
        if (conn, request_id) in self.jobs:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"header.id: request id {request_id!r} is already in use "
                                                       "by a job of this connection", "header.id")
        mine = [job.request_id for job in self.jobs.values() if job.link is link and not job.cancel_event.is_set()]
        if mine:
            raise ProtocolError(ErrorCode.BUSY, f"this connection already has an edit in progress ({mine[0]}); "
                                                "wait for it or cancel it first")
        # Before any decoding: the PNG's size came from its header; the queue state is checked now.
        now = time.monotonic()
        with self._cond:
            if sum(1 for job in self._pending if job.owner == owner) >= self.config.owner_queue_limit:
                self._refuse(owner, now)
                raise ProtocolError(ErrorCode.BUSY, f"this client already has {self.config.owner_queue_limit} "
                                                    "edit(s) waiting; wait for them or cancel one")
            if len(self._pending) >= self.config.queue_limit and self._place_for(owner, now) is None:
                self._refuse(owner, now)
                raise ProtocolError(ErrorCode.BUSY, self._queue_full_text())
        self.runner.precheck(owner, request)
        with self._cond:
            bumped = None
            if len(self._pending) >= self.config.queue_limit:  # checked again: the worker may have taken one
                bumped = self._place_for(owner, now)
                if bumped is None:
                    self._refuse(owner, now)
                    raise ProtocolError(ErrorCode.BUSY, self._queue_full_text())
                self._pending.remove(bumped)
            job = Job(conn=conn, owner=owner, request_id=request_id, request=request, link=link)
            self.jobs[job.key] = job
            self._pending.append(job)
            if owner not in self._rotation:
                self._rotation.append(owner)
            position = self._queue_order().index(job) + 1
            self.stats["accepted"] += 1
            self._cond.notify_all()
        self._publish_job_fds()
        if bumped is not None:
            self._give_way(bumped, now)
        ahead = position - 1 + (1 if self.current is not None else 0)
        if ahead > 0:
            self._reply(conn, protocol.Progress(phase="queued", position=ahead,
                                                text=f"waiting for {ahead} edit(s) ahead"), request_id)

    def _queue_full_text(self) -> str:
        running = 1 if self.current is not None else 0
        return (f"the DragGAN backend is busy ({running} edit running, {len(self._pending)} queued, the queue "
                "limit, shared fairly between clients); try again in a moment")

    def _refuse(self, owner: str, now: float) -> None:
        self.stats["busy"] += 1
        self.owners.press(owner, now)

    def _place_for(self, owner: str, now: float) -> Job | None:
        """The waiting job that gives its place to ``owner``'s new one, or None (call with ``_cond``
        held). The candidate is the most recently queued job of the owner that holds the most waiting
        jobs, then has the most pressure, then came last; it gives way when its owner holds more
        than ``owner`` would, or as many and is under more pressure, or as much and is newer."""
        counts = collections.Counter(job.owner for job in self._pending)
        mine = counts[owner]
        pressure = {o: self._pressure(o, now) for o in counts}
        pressure[owner] = self._pressure(owner, now)
        best: Job | None = None
        best_rank: tuple[int, int, float, float] | None = None
        for job in self._pending:
            if job.owner == owner:
                continue
            rank = (counts[job.owner], pressure[job.owner], self.owners.first_seen(job.owner), job.submitted)
            if best_rank is None or rank > best_rank:
                best, best_rank = job, rank
        if best is None or best_rank is None:
            return None
        theirs = counts[best.owner]
        if theirs > mine + 1:
            return best
        if theirs == mine + 1:
            if pressure[best.owner] > pressure[owner]:
                return best
            if pressure[best.owner] == pressure[owner] and \
                    self.owners.first_seen(best.owner) > self.owners.first_seen(owner):
                return best
        return None

    def _give_way(self, job: Job, now: float) -> None:
        """``job`` (taken out of the queue) gave its place to another client's edit: tell its client."""
        self.jobs.pop(job.key, None)
        self.owners.press(job.owner, now)
        self.stats["bumped"] += 1
        log.info("job %s of %s gave its place in the full queue to another client's edit", job.request_id,
                 job.owner)
        if self._deliverable(job):
            self._error(job.conn, job.request_id, ErrorCode.BUSY,
                        "the DragGAN backend's queue is full and this waiting edit gave its place to another "
                        "client's (the queue is shared fairly: clients that hold more of it give way first); "
                        "try again in a moment")
        self.records.append(JobRecord(job.request_id, job.owner, ErrorCode.BUSY, "gave way", 0, None,
                                      now - job.submitted))

    def stores(self) -> dict[str, int]:
        """How full the server is: the runner's stores (photos, sessions, owners holding them), the
        queue and the connections (for ``welcome`` and ``draggan-backend status``)."""
        figures: dict[str, int] = {}
        runner_stores = getattr(self.runner, "stores", None)
        if callable(runner_stores):
            try:
                figures.update({str(k): int(v) for k, v in runner_stores().items()})
            except Exception:  # noqa: BLE001 - figures for a status line must never break hello
                log.exception("the runner's store figures failed")
        with self._peers_lock:
            live = [peer for peer in self._peers.values() if not peer.shed]
        figures.update({
            "queue": len(self._pending), "queue_max": self.config.queue_limit,
            "running": 1 if self.current is not None else 0,
            "peers": len(live), "peers_max": self.config.max_peers,
            "connected_owners": len({peer.owner for peer in live if peer.owner}),
            "known_owners": len(self.owners),
            "bumped": self.stats["bumped"], "shed": self.stats["shed:peers"],
        })
        return figures

    def _cancel(self, job: Job, reason: str) -> int:
        """Stop ``job``: a queued job ends at once, a running one at its next step. Returns 1 if it
        was still live."""
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                queued = True
            else:
                queued = False
        if queued:
            self._finish_unstarted(job, reason)
            return 1
        if job.cancel_event.is_set():
            return 0
        job.cancel_reason = reason
        job.step_at_cancel = job.step
        job.cancel_event.set()
        self.stats[f"cancel:{reason}"] += 1
        log.info("job %s of %s: cancel requested (%s) at step %d", job.request_id, job.owner, reason, job.step)
        return 1

    def _stop_job(self, job: Job) -> int:
        """``stop``: a running job ends its drag at the next step and answers with what it has; a queued
        one has nothing to keep and is cancelled. Returns 1 when the job will end with its result."""
        with self._cond:
            queued = job in self._pending
        if queued:
            self._cancel(job, "stopped")
            return 0
        if job.cancel_event.is_set() or job.stop_event.is_set():
            return 0
        job.cancel_reason = "stopped"   # what a CANCELLED from a job stopped before its drag means
        job.stop_event.set()
        self.stats["stop"] += 1
        log.info("job %s of %s: stop requested at step %d", job.request_id, job.owner, job.step)
        return 1

    def _finish_unstarted(self, job: Job, reason: str) -> None:
        self.jobs.pop(job.key, None)
        self.stats[f"cancel:{reason}"] += 1
        code = ErrorCode.SHUTTING_DOWN if reason == "shutdown" else ErrorCode.CANCELLED
        if self._deliverable(job):
            self._error(job.conn, job.request_id, code, _CANCEL_REASONS[reason])
        self.records.append(JobRecord(job.request_id, job.owner, code, reason, 0, None,
                                      time.monotonic() - job.submitted))

    def _check_heartbeats(self, now: float) -> None:
        limit = 2 * self.config.heartbeat_s
        for job in list(self.jobs.values()):
            seen = job.link.last_seen if job.link is not None else 0.0
            last = max(seen, job.submitted)
            if now - last > limit and not job.cancel_event.is_set():
                log.warning("client %s went silent for %.1f s: aborting its job %s", job.owner, now - last,
                            job.request_id)
                self.stats["aborted_vanished"] += 1
                self._cancel(job, "vanished")
        # forget connections silent for long and without jobs (bounded memory for days of uptime)
        if len(self._conns) > 1000:
            active = {id(job.link) for job in self.jobs.values()}
            for conn, link in list(self._conns.items()):
                if id(link) not in active and now - link.last_seen > 600:
                    del self._conns[conn]

    def _forward_outbox(self) -> None:
        zmq = self._zmq
        self._connections_changed()
        while True:
            try:
                parts = self._outbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, conn, request_id = parts[0], parts[1], parts[2].decode()
            job = self.jobs.get((conn, request_id))
            if job is not None and self._deliverable(job):
                try:
                    self._socket.send_multipart([conn, *parts[3:]], zmq.NOBLOCK)
                except zmq.ZMQError:
                    self.stats["send_dropped"] += 1
            else:  # its connection went away: whoever uses that routing id now gets nothing of it
                self.stats["output_dropped"] += 1
            if kind == b"final":
                self.jobs.pop((conn, request_id), None)

    # -- worker thread ------------------------------------------------------------------------

    def _worker_main(self) -> None:
        zmq = self._zmq
        outbox = self._ctx.socket(zmq.PUSH)
        outbox.setsockopt(zmq.LINGER, 0)
        outbox.connect(self._outbox_addr)
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._stop.is_set():
                        self._cond.wait(0.5)
                    if self._stop.is_set() and not self._pending:
                        return
                    job = self._queue_order()[0]
                    self._pending.remove(job)
                    # the owner goes to the back of the rotation: its next job waits for the others'
                    waiting_owners = {other.owner for other in self._pending}
                    self._rotation = [o for o in self._rotation if o != job.owner and o in waiting_owners]
                    if job.owner in waiting_owners:
                        self._rotation.append(job.owner)
                    self.current = job
                    waiting = self._queue_order()
                for position, other in enumerate(waiting, start=1):
                    update = protocol.Progress(phase="queued", position=position,
                                               text=f"waiting for {position} edit(s) ahead")
                    outbox.send_multipart([b"msg", other.conn, other.request_id.encode(),
                                           *protocol.encode(update, other.request_id)])
                try:
                    self._run_job(job, outbox)
                finally:
                    self.current = None
        finally:
            outbox.close(0)

    def _run_job(self, job: Job, outbox: Any) -> None:
        job.started = True
        started = time.monotonic()
        last_sent = 0.0
        log.info("job %s of %s: %s started", job.request_id, job.owner, type(job.request).__name__.lower())

        def send(kind: bytes, message: protocol.Message) -> None:
            outbox.send_multipart([kind, job.conn, job.request_id.encode(),
                                   *protocol.encode(message, job.request_id)])

        def emit(progress: protocol.Progress) -> None:
            nonlocal last_sent
            if progress.phase == "drag":
                job.step = progress.step
            now = time.monotonic()
            plain = progress.phase == "drag" and progress.preview is None
            if plain and now - last_sent < self.config.progress_interval_s and progress.step < progress.total:
                return
            last_sent = now
            send(b"msg", progress)

        outcome, reason = "result", ""
        final: protocol.Message
        try:
            if job.cancel_event.is_set():
                raise ProtocolError(ErrorCode.CANCELLED, _CANCEL_REASONS.get(job.cancel_reason, "cancelled"))
            decode_pending(job.request)  # PNG payloads: Pillow, here in the worker, never on the loop
            final = self.runner.run(job.owner, job.request, emit, job.cancel_event.is_set,
                                    should_stop=job.stop_event.is_set)
            if job.cancel_event.is_set():  # finished during the last step: still report the cancel
                raise ProtocolError(ErrorCode.CANCELLED, _CANCEL_REASONS.get(job.cancel_reason, "cancelled"))
        except ProtocolError as exc:
            if exc.code == ErrorCode.CANCELLED:
                reason = job.cancel_reason or "client"
                code = ErrorCode.SHUTTING_DOWN if reason == "shutdown" else ErrorCode.CANCELLED
                final = Error(code=code, message=_CANCEL_REASONS[reason])
            else:
                final = Error.from_exception(exc)
            outcome = final.code
        except ValueError as exc:  # the engine/inversion name the field in their messages
            final = Error(code=ErrorCode.BAD_REQUEST, message=str(exc))
            outcome = final.code
        except Exception as exc:  # MemoryError and torch's OutOfMemoryError are Exceptions too
            if _is_out_of_memory(exc):
                _free_memory()
                final = Error(code=ErrorCode.OUT_OF_MEMORY,
                              message="out of memory on the backend's device while editing; the memory was "
                                      "freed. Try a smaller model or crop, fewer models loaded at once "
                                      "(--max-memory), or the CPU (--device cpu)")
            else:
                trace_id = uuid.uuid4().hex[:12]
                log.exception("job %s of %s failed [trace %s]", job.request_id, job.owner, trace_id)
                final = Error(code=ErrorCode.INTERNAL, message="internal error in the backend while editing; "
                                                               f"the server log has trace id {trace_id}",
                              trace_id=trace_id)
            outcome = final.code
        seconds = time.monotonic() - started
        self.stats[f"outcome:{outcome}"] += 1
        self.records.append(JobRecord(job.request_id, job.owner, outcome, reason, job.step, job.step_at_cancel,
                                      seconds))
        log.info("job %s of %s: %s after %.2f s (%d steps)", job.request_id, job.owner, outcome, seconds, job.step)
        # No longer "running" before the client can hear the result: an edit it sends at once must
        # not be told it is queued behind a finished job.
        self.current = None
        send(b"final", final)


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
    except ImportError:
        return False
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return oom is not None and isinstance(exc, oom)


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing is best effort
        pass
