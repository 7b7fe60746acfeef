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
* The job itself (decode image, invert, drag) is the runner's business (``backend.jobs``); the
  server only needs the small :class:`Runner` interface, so scheduling can be tested without a model.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import protocol
from .protocol import Error, ErrorCode, ProtocolError

log = logging.getLogger("draggan.backend")

SERVER_VERSION = "0.1.0"
Request = Any  # protocol.Edit | protocol.Continue


class Runner(Protocol):
    """What the server needs from the thing that runs edits (backend.jobs.EditRunner in production)."""

    device: str

    def models(self) -> list[protocol.ModelEntry]: ...

    def memory(self) -> tuple[int, int]:
        """(total, used) bytes of the device's memory; 0 where unknown."""
        ...

    def precheck(self, owner: str, request: Request) -> None:
        """Cheap checks before queueing (model known, image/session ids owned). Raises ProtocolError.
        Called from the socket loop: must not block."""
        ...

    def run(self, owner: str, request: Request, emit: Callable[[protocol.Progress], None],
            should_cancel: Callable[[], bool]) -> protocol.Result:
        """Run one edit in the worker thread. Raises ProtocolError (typed), ValueError (bad input),
        MemoryError / torch OOM, or anything else (then logged as internal)."""
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


@dataclass
class Job:
    conn: bytes  # ZeroMQ routing id of the connection
    owner: str  # isolation key: CURVE user id (client public key) or the connection's routing id
    request_id: str
    request: Request
    submitted: float = field(default_factory=time.monotonic)
    cancel_event: threading.Event = field(default_factory=threading.Event)
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
    "reconnected": "the edit was cancelled: the same client connected again (a new plug-in run)",
}


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
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._last_seen: dict[bytes, float] = {}
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
        self._auth: Any = None
        self._allow_mtime = 0.0
        self._socket: Any = None
        self._outbox: Any = None

    # -- life cycle ---------------------------------------------------------------------------

    def bind(self) -> None:
        zmq = self._zmq
        cfg = self.config
        if cfg.auth == "curve":
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("draggan.backend.auth"))
            self._auth.start()
            self._reload_allow_list(force=True)
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # Frames above the limit make libzmq drop the connection before buffering them.
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.SNDHWM, cfg.send_hwm)
        sock.setsockopt(zmq.RCVHWM, 1000)
        # A client that reconnects with its routing id (the next plug-in run) takes over the old
        # connection's place instead of being ignored while the old one lingers.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if cfg.auth == "curve":
            sock.curve_server = True
            sock.curve_secretkey = cfg.server_secret_key
            sock.curve_publickey = cfg.server_public_key
        sock.bind(cfg.bind)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._socket = sock
        self._outbox = self._ctx.socket(zmq.PULL)
        self._outbox.setsockopt(zmq.LINGER, 0)
        self._outbox.bind(self._outbox_addr)

    def _reload_allow_list(self, force: bool = False) -> None:
        """The allow-list folder is re-read when it changes, so `draggan-backend keys allow` takes
        effect without a restart."""
        directory = self.config.allowed_clients_dir
        if self._auth is None or not directory:
            return
        try:
            mtime = os.stat(directory).st_mtime
        except OSError:
            mtime = 0.0
        if force or mtime != self._allow_mtime:
            self._allow_mtime = mtime
            self._auth.configure_curve(domain="*", location=directory)
            log.info("CURVE allow-list loaded from %s (%d client keys)", directory,
                     len(self._auth.certs.get("*", {})))

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
        tick = max(0.01, min(0.1, self.config.heartbeat_s / 4))
        next_check = time.monotonic() + tick
        last_loop = time.monotonic()
        next_reload = time.monotonic() + 2.0
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(int(tick * 1000)))
                if self._outbox in events:
                    self._forward_outbox()
                if self._socket in events:
                    # Bounded batch so that forwarding and heartbeats keep up under a flood.
                    for _ in range(200):
                        try:
                            frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames)
                now = time.monotonic()
                if now - last_loop > tick * 5:
                    # This loop itself was starved (CPU or GIL): credit every client the time it
                    # could not have been heard, instead of blaming them for our stall.
                    stall = now - last_loop
                    for conn, seen in self._last_seen.items():
                        if seen < last_loop:  # not refreshed by a message handled just now
                            self._last_seen[conn] = seen + stall
                    for job in self.jobs.values():
                        job.submitted += stall
                last_loop = now
                if now >= next_check:
                    self._check_heartbeats(now)
                    next_check = now + tick
                if now >= next_reload:
                    self._reload_allow_list()
                    next_reload = now + 2.0
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
        for sock in (self._socket, self._outbox):
            if sock is not None:
                sock.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.destroy(linger=0)

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
        self._last_seen[conn] = time.monotonic()
        self.stats["messages"] += 1
        owner = self._owner(frames)
        try:
            envelope = protocol.decode([f.buffer for f in body], allowed=protocol.REQUEST_TYPES)
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
            self._dispatch(conn, owner, envelope)
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

    def _owner(self, frames: list[Any]) -> str:
        if self.config.auth == "curve":
            try:
                user = frames[1].get("User-Id") if len(frames) > 1 else None
            except Exception:
                user = None
            if user:
                return f"key:{user}"
        return f"conn:{frames[0].bytes.hex()}"

    def _dispatch(self, conn: bytes, owner: str, env: protocol.Envelope) -> None:
        msg = env.message
        if isinstance(msg, protocol.Hello):
            # A handshake from a connection that still has jobs is a new process presenting a kept
            # routing id (the plug-in was killed and run again): the old jobs have no reader.
            for job in list(self.jobs.values()):
                if job.conn == conn:
                    self._cancel(job, "reconnected")
            self._reply(conn, self.welcome(), env.id)
        elif isinstance(msg, protocol.Ping):
            jobs = [rid for (c, rid) in self.jobs if c == conn]
            self._reply(conn, protocol.Pong(instance=self.instance, jobs=jobs), env.id)
        elif isinstance(msg, protocol.Cancel):
            count = 0
            for job in list(self.jobs.values()):
                if job.conn == conn and (msg.job is None or msg.job == job.request_id):
                    count += self._cancel(job, "client")
            self._reply(conn, protocol.CancelOk(cancelled=count), env.id)
        elif isinstance(msg, protocol.Purge):
            images, sessions = self.runner.purge(owner)
            log.info("purged %d image(s) and %d session(s) of %s", images, sessions, owner)
            self._reply(conn, protocol.Purged(images=images, sessions=sessions), env.id)
        elif isinstance(msg, (protocol.Edit, protocol.Continue)):
            self._submit(conn, owner, env.id, msg)
        else:  # decode() only lets request types through
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"'{env.type}' is not a request")

    def welcome(self) -> protocol.Welcome:
        total, used = self.runner.memory()
        return protocol.Welcome(server=SERVER_VERSION, protocol=protocol.PROTOCOL_VERSION,
                                device=self.runner.device, models=self.runner.models(),
                                memory_total=total, memory_used=used, heartbeat_s=self.config.heartbeat_s,
                                instance=self.instance, auth=self.config.auth, cache=self.config.cache,
                                queue_limit=self.config.queue_limit)

    def _submit(self, conn: bytes, owner: str, request_id: str, request: Request) -> None:
        if (conn, request_id) in self.jobs:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"header.id: request id {request_id!r} is already in use "
                                                       "by a job of this connection", "header.id")
        mine = [job.request_id for job in self.jobs.values() if job.conn == conn and not job.cancel_event.is_set()]
        if mine:
            raise ProtocolError(ErrorCode.BUSY, f"this connection already has an edit in progress ({mine[0]}); "
                                                "wait for it or cancel it first")
        self.runner.precheck(owner, request)
        with self._cond:
            if len(self._pending) >= self.config.queue_limit:
                running = 1 if self.current is not None else 0
                self.stats["busy"] += 1
                raise ProtocolError(ErrorCode.BUSY, f"the DragGAN backend is busy ({running} edit running, "
                                                    f"{len(self._pending)} queued, the queue limit); "
                                                    "try again in a moment")
            job = Job(conn=conn, owner=owner, request_id=request_id, request=request)
            self.jobs[job.key] = job
            self._pending.append(job)
            position = len(self._pending)
            self.stats["accepted"] += 1
            self._cond.notify_all()
        ahead = position - 1 + (1 if self.current is not None else 0)
        if ahead > 0:
            self._reply(conn, protocol.Progress(phase="queued", position=ahead,
                                                text=f"waiting for {ahead} edit(s) ahead"), request_id)

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

    def _finish_unstarted(self, job: Job, reason: str) -> None:
        self.jobs.pop(job.key, None)
        self.stats[f"cancel:{reason}"] += 1
        code = ErrorCode.SHUTTING_DOWN if reason == "shutdown" else ErrorCode.CANCELLED
        self._error(job.conn, job.request_id, code, _CANCEL_REASONS[reason])
        self.records.append(JobRecord(job.request_id, job.owner, code, reason, 0, None,
                                      time.monotonic() - job.submitted))

    def _check_heartbeats(self, now: float) -> None:
        limit = 2 * self.config.heartbeat_s
        for job in list(self.jobs.values()):
            last = max(self._last_seen.get(job.conn, 0.0), job.submitted)
            if now - last > limit and not job.cancel_event.is_set():
                log.warning("client %s went silent for %.1f s: aborting its job %s", job.owner, now - last,
                            job.request_id)
                self.stats["aborted_vanished"] += 1
                self._cancel(job, "vanished")
        # forget connections silent for long and without jobs (bounded memory for days of uptime)
        if len(self._last_seen) > 1000:
            active = {job.conn for job in self.jobs.values()}
            for conn, seen in list(self._last_seen.items()):
                if conn not in active and now - seen > 600:
                    del self._last_seen[conn]

    def _forward_outbox(self) -> None:
        zmq = self._zmq
        while True:
            try:
                parts = self._outbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, conn, request_id = parts[0], parts[1], parts[2].decode()
            try:
                self._socket.send_multipart([conn, *parts[3:]], zmq.NOBLOCK)
            except zmq.ZMQError:
                self.stats["send_dropped"] += 1
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
                    job = self._pending.popleft()
                    self.current = job
                    waiting = list(self._pending)
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
            final = self.runner.run(job.owner, job.request, emit, job.cancel_event.is_set)
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
