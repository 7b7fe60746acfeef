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

The parts: :class:`backend.peers.PeerGuard` (the ZAP handler and the peer limit),
:class:`backend.scheduler.Scheduler` over :class:`backend.fair_queue.FairQueue` (admission, fair
places, cancel and stop, heartbeats), :class:`backend.worker.Worker` (the worker thread) and
backend/status.py (welcome and the status figures); :class:`Server` owns the sockets and the loop.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from draggan_wire import protocol
from draggan_wire.protocol import Error, ErrorCode, ProtocolError

from . import status
from .fair_queue import FairQueue, Job, JobRecord, OwnerBook, Request
from .peers import Connection, PeerGuard
from .scheduler import Scheduler
from .status import SERVER_VERSION as SERVER_VERSION  # the version welcome reports
from .worker import Worker

log = logging.getLogger("draggan.backend")



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


def owner_of_token(token: str) -> str:
    """The owner id for an identity token: a hash, so logs and memory never hold the secret."""
    return "tok:" + hashlib.sha256(b"draggan-owner\0" + token.encode("ascii")).hexdigest()[:32]


class Server:
    """Create, then ``serve_forever()`` (blocks) or ``start_thread()``; ``request_stop()`` ends it."""

    def __init__(self, config: ServerConfig, runner: Runner) -> None:
        self.config = config
        self.runner = runner
        self.instance = uuid.uuid4().hex[:12]
        self.stats: collections.Counter[str] = collections.Counter()
        self.records: collections.deque[JobRecord] = collections.deque(maxlen=1000)
        self.queue = FairQueue()
        self._conns: dict[bytes, Connection] = {}  # routing id -> the live connection using it
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._outbox_addr = f"inproc://draggan-outbox-{self.instance}"
        self._start_error: BaseException | None = None
        self.endpoint = config.bind  # the resolved endpoint after binding (port 0 -> real port)
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context()
        self._socket: Any = None
        self._outbox: Any = None
        self.owners = OwnerBook(window_s=config.pressure_window_s)
        self.guard = PeerGuard(zmq, self._ctx, config, self.stats, self.owners, self._pressure, self._stop)
        self.worker = Worker(zmq, self._ctx, self._outbox_addr, self.queue, runner, config, self.stats,
                             self.records, self._stop)
        self.scheduler = Scheduler(config, runner, self.queue, self.stats, self.records, self.owners, self._pressure,
                                   self._reply, self._error, self._deliverable, self._publish_job_fds,
                                   lambda: self.worker.current)

    @property
    def current(self) -> Job | None:
        """The running job (set by the worker)."""
        return self.worker.current

    # -- life cycle ---------------------------------------------------------------------------

    def bind(self) -> None:
        zmq = self._zmq
        cfg = self.config
        self.guard.open_zap()
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
            self.guard.reload_allow_list(force=True)
            sock.curve_server = True
            sock.curve_secretkey = cfg.server_secret_key
            sock.curve_publickey = cfg.server_public_key
        self.guard.watch(sock)
        sock.bind(cfg.bind)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.guard.listening_on(self.endpoint)
        self._socket = sock
        self._outbox = self._ctx.socket(zmq.PULL)
        self._outbox.setsockopt(zmq.LINGER, 0)
        self._outbox.bind(self._outbox_addr)
        self.guard.start()

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
        self._worker = threading.Thread(target=self.worker.main, name="draggan-worker", daemon=True)
        self._worker.start()
        self._ready.set()
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._outbox, zmq.POLLIN)
        # The monitor socket is not polled here: zmq_poll reads a socket's state (ZMQ_FD/ZMQ_EVENTS)
        # outside the monitor lock while the ZAP thread receives on it under the lock, a data race
        # inside libzmq (sockets are not thread-safe); the likely cause of one process abort seen
        # under a 10^4-connection probe. Both threads touch it only in PeerGuard.drain_monitor, under the
        # lock; this loop drains it every pass, so a closed connection is still seen within one tick (<= 0.1 s) and
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
        with self.queue.cond:
            pending = list(self.queue.pending)
            self.queue.pending.clear()
            self.queue.cond.notify_all()
        for job in pending:
            self.scheduler.finish_unstarted(job, "shutdown")
        running = self.current
        if running is not None:
            self.scheduler.cancel(running, "shutdown")
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
        zap_alive = self.guard.join()
        if self._socket is not None:
            try:
                self._socket.disable_monitor()
            except self._zmq.ZMQError:
                pass
        self.guard.close_with((self._socket, self._outbox))
        if zap_alive:
            # Closing a socket another thread is using is undefined in libzmq (it may abort the
            # process): leave the ZAP socket and the context to the process's exit instead.
            log.warning("the ZAP thread did not stop within 10 s: leaving its socket open")
            return
        self.guard.close_zap()
        self._ctx.destroy(linger=0)

    # -- connections (socket-loop thread) -----------------------------------------------------

    def _connections_changed(self) -> None:
        """Act on closed (or reused) fds: their connections are gone, their jobs are cancelled and
        nothing more is sent to their routing ids on their behalf."""
        self.guard.drain_monitor()
        while self.guard.closed_fds:
            _what, fd = self.guard.closed_fds.popleft()
            for link in list(self._conns.values()):
                if link.fd == fd:
                    self._drop_connection(link, "disconnected")

    def _drop_connection(self, link: Connection, reason: str) -> None:
        link.alive = False
        if self._conns.get(link.conn) is link:
            del self._conns[link.conn]
        for job in list(self.jobs.values()):
            if job.link is link:
                self.scheduler.cancel(job, reason)

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

    def _publish_job_fds(self) -> None:
        """Tell the ZAP thread which connections hold a job (those are never shed)."""
        self.guard.publish_job_fds(frozenset(job.link.fd for job in self.jobs.values() if job.link is not None))

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
            self.guard.note(link)
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
                    count += self.scheduler.cancel(job, "client")
            self._reply(conn, protocol.CancelOk(cancelled=count), env.id)
        elif isinstance(msg, protocol.Stop):
            count = 0
            for job in list(self.jobs.values()):
                if job.link is link and msg.job == job.request_id:
                    count += self.scheduler.stop_job(job)
            self._reply(conn, protocol.StopOk(stopping=count), env.id)
        elif isinstance(msg, protocol.Purge):
            images, sessions = self.runner.purge(link.owner)
            log.info("purged %d image(s) and %d session(s) of %s", images, sessions, link.owner)
            self._reply(conn, protocol.Purged(images=images, sessions=sessions), env.id)
        elif isinstance(msg, (protocol.Edit, protocol.Continue, protocol.Undo)):
            self.scheduler.submit(link, env.id, msg)
        else:  # decode() only lets request types through
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"'{env.type}' is not a request")

    def welcome(self) -> protocol.Welcome:
        return status.welcome(self)

    def stores(self) -> dict[str, int]:
        """How full the server is (:func:`backend.status.figures`)."""
        return status.figures(self)

    @property
    def jobs(self) -> dict[tuple[bytes, str], Job]:
        """Queued and running jobs by (routing id, request id) (socket-loop thread only)."""
        return self.scheduler.jobs

    def _check_heartbeats(self, now: float) -> None:
        self.scheduler.check_heartbeats(now)
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
