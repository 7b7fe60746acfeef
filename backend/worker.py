"""The server's worker thread: it takes the queue's next job, decodes its PNG payloads (Pillow, never
on the socket loop), runs it on the runner and hands its progress and final answer to the socket
loop over an inproc PUSH socket (only the loop touches the ROUTER socket)."""

from __future__ import annotations

import collections
import io
import logging
import threading
import time
import uuid
from typing import Any

from draggan_wire import protocol
from draggan_wire.protocol import Error, ErrorCode, ProtocolError

from .fair_queue import CANCEL_REASONS, FairQueue, Job, JobRecord, Request

log = logging.getLogger("draggan.backend")


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


class Worker:
    """Runs the queue's jobs one at a time on ``runner``; ``current`` is the running job."""

    def __init__(self, zmq: Any, ctx: Any, outbox_addr: str, queue: FairQueue, runner: Any, config: Any,
                 stats: collections.Counter[str], records: collections.deque[JobRecord],
                 stop: threading.Event) -> None:
        self._zmq = zmq
        self._ctx = ctx
        self._outbox_addr = outbox_addr
        self.queue = queue
        self.runner = runner
        self.config = config
        self.stats = stats
        self.records = records
        self._stop = stop
        self.current: Job | None = None  # the running job

    def main(self) -> None:
        zmq = self._zmq
        outbox = self._ctx.socket(zmq.PUSH)
        outbox.setsockopt(zmq.LINGER, 0)
        outbox.connect(self._outbox_addr)
        try:
            while True:
                with self.queue.cond:
                    while not self.queue.pending and not self._stop.is_set():
                        self.queue.cond.wait(0.5)
                    if self._stop.is_set() and not self.queue.pending:
                        return
                    job = self.queue.take()
                    self.current = job
                    waiting = self.queue.order()
                for position, other in enumerate(waiting, start=1):
                    update = protocol.Progress(phase="queued", position=position,
                                               text=f"waiting for {position} edit(s) ahead")
                    outbox.send_multipart([b"msg", other.conn, other.request_id.encode(),
                                           *protocol.encode(update, other.request_id)])
                try:
                    self.run_job(job, outbox)
                finally:
                    self.current = None
        finally:
            outbox.close(0)

    def run_job(self, job: Job, outbox: Any) -> None:
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
                raise ProtocolError(ErrorCode.CANCELLED, CANCEL_REASONS.get(job.cancel_reason, "cancelled"))
            decode_pending(job.request)  # PNG payloads: Pillow, here in the worker, never on the loop
            final = self.runner.run(job.owner, job.request, emit, job.cancel_event.is_set,
                                    should_stop=job.stop_event.is_set)
            if job.cancel_event.is_set():  # finished during the last step: still report the cancel
                raise ProtocolError(ErrorCode.CANCELLED, CANCEL_REASONS.get(job.cancel_reason, "cancelled"))
        except ProtocolError as exc:
            if exc.code == ErrorCode.CANCELLED:
                reason = job.cancel_reason or "client"
                code = ErrorCode.SHUTTING_DOWN if reason == "shutdown" else ErrorCode.CANCELLED
                final = Error(code=code, message=CANCEL_REASONS[reason])
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
