"""Who gets a place in the server's queue, and how jobs end before they run: admission (per-owner
and total limits; in a full queue the owner holding the most gives way, :meth:`FairQueue.place_for`),
cancel and stop, and the heartbeat watch. Socket-loop thread; the worker takes jobs from the queue."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from draggan_wire import protocol
from draggan_wire.protocol import ErrorCode, ProtocolError

from .fair_queue import CANCEL_REASONS, FairQueue, Job, JobRecord, OwnerBook, Request
from .peers import Connection

log = logging.getLogger("draggan.backend")


class Scheduler:
    """The server's jobs (``jobs``: queued and running, by (routing id, request id)) and their queue.
    Talks to clients through the server's ``reply`` / ``error`` (the loop owns the socket)."""

    def __init__(self, config: Any, runner: Any, queue: FairQueue, stats: collections.Counter[str],
                 records: collections.deque[JobRecord], owners: OwnerBook, pressure: Callable[[str, float], int],
                 reply: Callable[[bytes, protocol.Message, str], None], error: Callable[..., None],
                 deliverable: Callable[[Job], bool], publish_job_fds: Callable[[], None],
                 running: Callable[[], Job | None]) -> None:
        self.config = config
        self.runner = runner
        self.queue = queue
        self.jobs: dict[tuple[bytes, str], Job] = {}  # queued + running (socket-loop thread only)
        self.stats = stats
        self.records = records
        self.owners = owners
        self._pressure = pressure
        self._reply = reply
        self._error = error
        self._deliverable = deliverable
        self._publish_job_fds = publish_job_fds
        self._running = running

    def submit(self, link: Connection, request_id: str, request: Request) -> None:
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
        with self.queue.cond:
            if self.queue.waiting(owner) >= self.config.owner_queue_limit:
                self.refuse(owner, now)
                raise ProtocolError(ErrorCode.BUSY, f"this client already has {self.config.owner_queue_limit} "
                                                    "edit(s) waiting; wait for them or cancel one")
            if len(self.queue) >= self.config.queue_limit and self.place_for(owner, now) is None:
                self.refuse(owner, now)
                raise ProtocolError(ErrorCode.BUSY, self.queue_full_text())
        self.runner.precheck(owner, request)
        with self.queue.cond:
            bumped = None
            if len(self.queue) >= self.config.queue_limit:  # checked again: the worker may have taken one
                bumped = self.place_for(owner, now)
                if bumped is None:
                    self.refuse(owner, now)
                    raise ProtocolError(ErrorCode.BUSY, self.queue_full_text())
                self.queue.pending.remove(bumped)
            job = Job(conn=conn, owner=owner, request_id=request_id, request=request, link=link)
            self.jobs[job.key] = job
            self.queue.add(job)
            position = self.queue.order().index(job) + 1
            self.stats["accepted"] += 1
            self.queue.cond.notify_all()
        self._publish_job_fds()
        if bumped is not None:
            self.give_way(bumped, now)
        ahead = position - 1 + (1 if self._running() is not None else 0)
        if ahead > 0:
            self._reply(conn, protocol.Progress(phase="queued", position=ahead,
                                                text=f"waiting for {ahead} edit(s) ahead"), request_id)

    def queue_full_text(self) -> str:
        running = 1 if self._running() is not None else 0
        return (f"the DragGAN backend is busy ({running} edit running, {len(self.queue)} queued, the queue "
                "limit, shared fairly between clients); try again in a moment")

    def refuse(self, owner: str, now: float) -> None:
        self.stats["busy"] += 1
        self.owners.press(owner, now)

    def place_for(self, owner: str, now: float) -> Job | None:
        """The waiting job that gives its place to ``owner``'s new one (:meth:`FairQueue.place_for`);
        call with the queue's ``cond`` held."""
        return self.queue.place_for(owner, now, self._pressure, self.owners.first_seen)

    def give_way(self, job: Job, now: float) -> None:
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

    def cancel(self, job: Job, reason: str) -> int:
        """Stop ``job``: a queued job ends at once, a running one at its next step. Returns 1 if it
        was still live."""
        with self.queue.cond:
            if job in self.queue.pending:
                self.queue.pending.remove(job)
                queued = True
            else:
                queued = False
        if queued:
            self.finish_unstarted(job, reason)
            return 1
        if job.cancel_event.is_set():
            return 0
        job.cancel_reason = reason
        job.step_at_cancel = job.step
        job.cancel_event.set()
        self.stats[f"cancel:{reason}"] += 1
        log.info("job %s of %s: cancel requested (%s) at step %d", job.request_id, job.owner, reason, job.step)
        return 1

    def stop_job(self, job: Job) -> int:
        """``stop``: a running job ends its drag at the next step and answers with what it has; a queued
        one has nothing to keep and is cancelled. Returns 1 when the job will end with its result."""
        with self.queue.cond:
            queued = job in self.queue.pending
        if queued:
            self.cancel(job, "stopped")
            return 0
        if job.cancel_event.is_set() or job.stop_event.is_set():
            return 0
        job.cancel_reason = "stopped"   # what a CANCELLED from a job stopped before its drag means
        job.stop_event.set()
        self.stats["stop"] += 1
        log.info("job %s of %s: stop requested at step %d", job.request_id, job.owner, job.step)
        return 1

    def finish_unstarted(self, job: Job, reason: str) -> None:
        self.jobs.pop(job.key, None)
        self.stats[f"cancel:{reason}"] += 1
        code = ErrorCode.SHUTTING_DOWN if reason == "shutdown" else ErrorCode.CANCELLED
        if self._deliverable(job):
            self._error(job.conn, job.request_id, code, CANCEL_REASONS[reason])
        self.records.append(JobRecord(job.request_id, job.owner, code, reason, 0, None,
                                      time.monotonic() - job.submitted))

    def check_heartbeats(self, now: float) -> None:
        """Abort the jobs of clients silent for two heartbeat intervals."""
        limit = 2 * self.config.heartbeat_s
        for job in list(self.jobs.values()):
            seen = job.link.last_seen if job.link is not None else 0.0
            last = max(seen, job.submitted)
            if now - last > limit and not job.cancel_event.is_set():
                log.warning("client %s went silent for %.1f s: aborting its job %s", job.owner, now - last,
                            job.request_id)
                self.stats["aborted_vanished"] += 1
                self.cancel(job, "vanished")
