"""Who is connected, for the server's fair peer limit: the connections the socket loop knows
(:class:`Connection`), the accepted sockets the monitor reports (:class:`Peer`), and
:class:`PeerGuard`, the ZAP handler (RFC 27) that refuses keys off the CURVE allow-list and keeps the
connections at ``max_peers`` by shutting one down to admit a newcomer (the order is in
backend/server.py's docstring)."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("draggan.backend")


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


# ZAP status code (RFC 27) for a refused handshake. libzmq closes the connection at once only for
# 400 (a 300 "temporary failure" leaves it pending), so too many connections get 400 too.
ZAP_TOO_MANY = b"400"
ZAP_DENIED = b"400"


def listener_address(endpoint: str) -> tuple[int, Any]:
    """(family, port or socket path) of a bound endpoint, to recognise its accepted connections."""
    if endpoint.startswith("ipc://"):
        return getattr(socket, "AF_UNIX", 0), endpoint[len("ipc://"):]
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    return (socket.AF_INET6 if host.startswith("[") else socket.AF_INET), number


class PeerGuard:
    """The ZAP handler thread and the peer limit. The socket loop tells it what it knows of each
    connection (:meth:`note`, :meth:`publish_job_fds`) and reads the fds that closed
    (``closed_fds``, filled by :meth:`drain_monitor`); the ZAP thread sheds a connection when a
    newcomer would pass ``max_peers``. Locks: the monitor lock, then the peers lock, never the reverse."""

    def __init__(self, zmq: Any, ctx: Any, config: Any, stats: collections.Counter[str], owners: Any,
                 pressure: Callable[[str, float], int], stop: threading.Event) -> None:
        from zmq.auth import load_certificates
        from zmq.utils import z85
        from zmq.utils.monitor import parse_monitor_message

        self._zmq = zmq
        # imported once here: the loop and the ZAP thread never import while serving
        self._load_certificates = load_certificates
        self._z85_encode = z85.encode
        self._parse_monitor = parse_monitor_message
        self._ctx = ctx
        self.config = config
        self.stats = stats
        self.owners = owners
        self._pressure = pressure  # (owner, now) -> the owner's pressure (the server's and its stores')
        self._stop = stop
        self._allowed_keys: set[bytes] = set()
        self._allow_mtime = -1.0
        self._monitor: Any = None
        self._zap: Any = None
        self._zap_thread: threading.Thread | None = None
        self._monitor_lock = threading.Lock()  # every use of the monitor (loop and ZAP thread) is under it
        self.closed_fds: collections.deque[tuple[str, int]] = collections.deque()  # for the loop
        # accepted connections not closed yet (monitor's view) with what the loop knows of them;
        # the ZAP thread reads it to pick a connection to shed (under _peers_lock, taken after the
        # monitor lock, never before)
        self._peers: dict[int, Peer] = {}
        self._peers_lock = threading.Lock()
        self._job_fds: frozenset[int] = frozenset()  # fds with a queued or running job (set by the loop)
        self._listener: tuple[int, Any] = (0, None)  # (family, port or ipc path) of the bound endpoint

    # -- setting up and closing (the server's bind and close) ---------------------------------

    def open_zap(self) -> None:
        """The ZAP handler sees every handshake (NULL and CURVE): peer cap and allow-list."""
        zmq = self._zmq
        self._zap = self._ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind("inproc://zeromq.zap.01")

    def watch(self, sock: Any) -> None:
        """Follow ``sock``'s accepted and closed connections (before it binds)."""
        zmq = self._zmq
        self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)

    def listening_on(self, endpoint: str) -> None:
        self._listener = listener_address(endpoint)

    def start(self) -> None:
        self._zap_thread = threading.Thread(target=self._zap_main, name="draggan-zap", daemon=True)
        self._zap_thread.start()

    def join(self) -> bool:
        """Wait for the ZAP thread (it polls every 0.1 s; a starved machine may take longer); True
        when it is still alive after 10 s."""
        if self._zap_thread is None:
            return False
        self._zap_thread.join(10)
        return self._zap_thread.is_alive()

    def close_with(self, sockets: tuple[Any, ...]) -> None:
        """Close ``sockets`` and the monitor under the monitor lock (the ZAP thread may be draining)."""
        with self._monitor_lock:
            for sock in (*sockets, self._monitor):
                if sock is not None:
                    sock.close(0)
            self._monitor = None

    def close_zap(self) -> None:
        if self._zap is not None:
            self._zap.close(0)

    # -- the socket loop's side -----------------------------------------------------------------

    def note(self, link: Connection) -> None:
        """What the peer limit and the queue know of a connection's owner: it was active now."""
        self.owners.seen(link.owner, link.last_seen)
        with self._peers_lock:
            peer = self._peers.get(link.fd)
            if peer is not None:
                peer.owner = link.owner
                peer.last_seen = link.last_seen

    def publish_job_fds(self, fds: frozenset[int]) -> None:
        """Tell the ZAP thread which connections hold a job (those are never shed)."""
        if fds != self._job_fds:
            with self._peers_lock:
                self._job_fds = fds

    def live(self) -> list[Peer]:
        """The accepted connections not shut down (for the status figures)."""
        with self._peers_lock:
            return [peer for peer in self._peers.values() if not peer.shed]

    # -- the ZAP thread --------------------------------------------------------------------------

    def reload_allow_list(self, force: bool = False) -> None:
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

    def drain_monitor(self) -> None:
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
                    self.closed_fds.append(("accepted", fd))  # an fd number reused: older users are gone
                elif event["event"] == zmq.EVENT_DISCONNECTED:
                    with self._peers_lock:
                        self._peers.pop(fd, None)
                    self.closed_fds.append(("closed", fd))

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
                self.reload_allow_list()
                if key and key in self._allowed_keys:
                    user = key
                else:
                    status, text = ZAP_DENIED, b"client key not allowed"
                    self.stats["refused:key"] += 1
            elif self.config.auth == "curve":
                status, text = ZAP_DENIED, b"CURVE required"
            if status == b"200":  # only a connection that may come in can make room
                try:
                    self.drain_monitor()
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
