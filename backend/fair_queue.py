"""The server's waiting jobs, served fairly: :class:`Job` and :class:`JobRecord`, the owners' record
(:class:`OwnerBook`: first seen, pressure) and :class:`FairQueue` (round-robin between owners; a full
queue lets the owner holding the most give way, see backend/server.py's docstring)."""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .peers import Connection

Request = Any  # protocol.Edit | protocol.Continue | protocol.Undo


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


CANCEL_REASONS = {
    "client": "the edit was cancelled",
    "vanished": "the edit was aborted: the client stopped sending heartbeats",
    "shutdown": "the edit was cancelled: the DragGAN backend is shutting down",
    "disconnected": "the edit was cancelled: the client's connection closed",
    "stopped": "the edit was stopped before its drag began: there is no drag to keep",
}


class FairQueue:
    """The waiting jobs, in arrival order, and the owners' round-robin rotation. ``cond`` guards both:
    the socket loop adds and removes jobs, the worker takes them; call the methods with it held."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending: list[Job] = []  # waiting jobs, in arrival order (served round-robin by owner)
        self.rotation: list[str] = []  # owners in round-robin order: the next job is the first one's

    def __len__(self) -> int:
        return len(self.pending)

    def waiting(self, owner: str) -> int:
        return sum(1 for job in self.pending if job.owner == owner)

    def add(self, job: Job) -> None:
        self.pending.append(job)
        if job.owner not in self.rotation:
            self.rotation.append(job.owner)

    def take(self) -> Job:
        """The next job (the first of :meth:`order`), out of the queue; its owner goes to the back of
        the rotation, so that its next job waits for the others'."""
        job = self.order()[0]
        self.pending.remove(job)
        waiting_owners = {other.owner for other in self.pending}
        self.rotation = [o for o in self.rotation if o != job.owner and o in waiting_owners]
        if job.owner in waiting_owners:
            self.rotation.append(job.owner)
        return job

    def order(self) -> list[Job]:
        """The waiting jobs in the order the worker will take them (round-robin between owners,
        first come first served within one owner). Call with ``cond`` held."""
        rotation = list(self.rotation)
        rotation += [job.owner for job in self.pending if job.owner not in rotation]
        by_owner: dict[str, collections.deque[Job]] = collections.defaultdict(collections.deque)
        for job in self.pending:
            by_owner[job.owner].append(job)
        order: list[Job] = []
        while len(order) < len(self.pending):
            for owner in rotation:
                if by_owner.get(owner):
                    order.append(by_owner[owner].popleft())
                    rotation.remove(owner)
                    rotation.append(owner)
                    break
        return order

    def place_for(self, owner: str, now: float, pressure_of: Callable[[str, float], int],
                  first_seen: Callable[[str], float]) -> Job | None:
        """The waiting job that gives its place to ``owner``'s new one, or None (call with ``cond``
        held). The candidate is the most recently queued job of the owner that holds the most waiting
        jobs, then has the most pressure, then came last; it gives way when its owner holds more
        than ``owner`` would, or as many and is under more pressure, or as much and is newer."""
        counts = collections.Counter(job.owner for job in self.pending)
        mine = counts[owner]
        pressure = {o: pressure_of(o, now) for o in counts}
        pressure[owner] = pressure_of(owner, now)
        best: Job | None = None
        best_rank: tuple[int, int, float, float] | None = None
        for job in self.pending:
            if job.owner == owner:
                continue
            rank = (counts[job.owner], pressure[job.owner], first_seen(job.owner), job.submitted)
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
                    first_seen(best.owner) > first_seen(owner):
                return best
        return None
