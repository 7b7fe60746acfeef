"""The panel's live drags without GTK or GIMP: the worker thread that owns the backend connection,
the mailbox between it and the panel's GTK thread, and the small decisions in between.

Threads: the panel's GTK thread does every GIMP call (libgimp talks to GIMP over one pipe and is not
thread-safe) and never waits on the network; the worker thread does every ZeroMQ call (the client's
socket is used by that thread only) and never touches GIMP. They meet in a :class:`Mailbox`: the
worker drops each progress message in and the GTK thread takes what is there on a GLib timeout. A
preview that arrives before the last one was painted replaces it (it is counted as dropped), so the
canvas shows the newest picture at the rate GIMP can paint, and the worker keeps reading the socket
at the rate the link delivers: nothing queues behind a slow canvas.
"""

from __future__ import annotations

import queue
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import errors, geometry, link, points

#: Preview pixels per drag step the panel asks for: one preview every step for crops up to this
#: size (the built-in 128 px model on a 256 px picture), every 4th for a 1024 px crop, and so on, so a
#: preview costs about the same on the link and in GIMP whatever the crop's size.
PREVIEW_PIXELS = 512 * 512
MAX_PREVIEW_EVERY = 20


def preview_every_for(size: tuple[int, int]) -> int:
    """Steps between previews for a crop sent at `size` (width, height)."""
    w, h = size
    return max(1, min(MAX_PREVIEW_EVERY, round(w * h / PREVIEW_PIXELS)))


def fingerprint(data: bytes) -> int:
    """A cheap check that the crop's pixels are the ones the session inverted."""
    return zlib.crc32(data)


def move_handles(strokes: list[tuple[Any, list[float], bool]], handles: list[points.Point]
                 ) -> list[tuple[Any, list[float], bool]]:
    """The path's strokes with each handle anchor (anchors 1, 3, 5... of every stroke, in the order
    points.pairs_from_strokes reads them) moved to `handles` (image coordinates), its control points
    moved with it; targets stay. Raises ValueError when the path no longer has that many handles."""
    out = []
    remaining = list(handles)
    for kind, floats, closed in strokes:
        floats = list(floats)
        anchors = len(floats) // points.FLOATS_PER_ANCHOR
        for a in range(0, anchors - anchors % 2, 2):
            if not remaining:
                raise ValueError("the path has more handles than the drag")
            x, y = remaining.pop(0)
            base = a * points.FLOATS_PER_ANCHOR
            dx, dy = x - floats[base + 2], y - floats[base + 3]
            for i in range(0, points.FLOATS_PER_ANCHOR, 2):
                floats[base + i] += dx
                floats[base + i + 1] += dy
        out.append((kind, floats, closed))
    if remaining:
        raise ValueError("the path has fewer handles than the drag")
    return out


@dataclass
class Session:
    """The backend session the panel drags on, and what it was made from (to tell whether the next
    Drag may continue it without inverting the picture again)."""

    session_id: str
    address: str
    model: Any  # link.ModelChoice
    crop: geometry.Rect  # the region sent (image coordinates)
    sent: tuple[int, int]  # the size it was sent at
    aligned: bool
    pti: str
    inversion: str  # the inversion preset
    source: int  # fingerprint of the crop's pixels as sent
    history: int = 0  # drags the backend can still undo


def may_continue(session: Session | None, address: str, model: str, pti: str, inversion: str, aligned: bool,
                 drag: points.DragPoints, source: int | None) -> tuple[bool, str]:
    """(continue the session, why) for a Drag with these settings and points; `source`: the fingerprint
    of the session's crop as the layer holds it now (None: not read, the session's crop was not usable)."""
    from .decision import normalise_address

    if session is None:
        return False, "new session: inverting the picture"
    if normalise_address(session.address) != normalise_address(address):
        return False, "inverting anew: the backend address changed"
    if model and model != session.model.name:
        return False, f"inverting anew: model '{model}' differs from the session's '{session.model.name}'"
    if pti != session.pti:
        return False, "inverting anew: the PTI setting changed"
    if inversion != session.inversion:
        return False, "inverting anew: the inversion setting changed"
    if aligned != session.aligned:
        return False, "inverting anew: the face alignment setting changed"
    for p in drag.all_points():
        if not session.crop.contains_point(p):
            return False, f"inverting anew: point ({p[0]:.0f}, {p[1]:.0f}) lies outside the session's crop"
    if source != session.source:
        return False, "inverting anew: the layer's pixels changed since the session began"
    return True, "continuing the session (no re-inversion)"


@dataclass
class Job:
    """One request for the worker. kind: "models" | "edit" | "continue" | "undo". A "continue" whose
    session the backend lost falls back to an "edit" with the same inputs."""

    kind: str
    serial: int = 0
    address: str = ""   # the backend to ask (read on GTK's thread: the worker never reads the settings)
    timeout_s: float = 30.0
    model: str = ""
    rgb: bytes = b""
    size: tuple[int, int] = (0, 0)
    handles: list[points.Point] = field(default_factory=list)
    targets: list[points.Point] = field(default_factory=list)
    mask: bytes | None = None
    params: dict[str, Any] = field(default_factory=dict)
    align: str = "off"
    result: str = "detail"
    session_id: str = ""
    context: Any = None  # the panel's own record of the job (crop, path, ...), handed back with the answer


@dataclass
class Answer:
    """What became of a job: ``result`` (protocol.Result) or ``error`` (PluginError); ``inverted``:
    the backend inverted the picture (a new session); ``models`` for a "models" job."""

    job: Job
    result: Any = None
    error: errors.PluginError | None = None
    inverted: bool = False
    models: list[Any] | None = None
    note: str = ""


class Mailbox:
    """Between the worker (put_*) and the GTK thread (take). Thread-safe; never blocks for long."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._preview: tuple[int, Any] | None = None
        self._progress: tuple[int, Any] | None = None
        self._texts: list[tuple[int, str]] = []
        self._answers: list[Answer] = []
        self.previews_in = 0
        self.previews_dropped = 0

    def put_progress(self, serial: int, message: Any) -> None:
        with self._lock:
            if getattr(message, "preview", None) is not None:
                self.previews_in += 1
                if self._preview is not None:
                    self.previews_dropped += 1   # GIMP has not painted the last one yet: only the newest counts
                self._preview = (serial, message)
            self._progress = (serial, message)
            text = getattr(message, "text", "")
            if text:
                self._texts.append((serial, text))

    def put_answer(self, answer: Answer) -> None:
        with self._lock:
            self._answers.append(answer)

    def take(self) -> tuple[tuple[int, Any] | None, tuple[int, Any] | None, list[tuple[int, str]], list[Answer]]:
        """(newest preview, newest progress, texts, answers) since the last take, each (job serial, message)."""
        with self._lock:
            out = (self._preview, self._progress, self._texts, self._answers)
            self._preview, self._progress, self._texts, self._answers = None, None, [], []
        return out


Connect = Callable[[str, float], Any]   # (address, timeout s) -> link.Backend (or a test double)


class Worker(threading.Thread):
    """Runs the panel's jobs one at a time on its own backend connection (made on first use, made
    again after the connection failed or when a job names another backend or timeout).
    ``stop()``/``cancel()`` act on the running job."""

    def __init__(self, connect: Connect, mailbox: Mailbox) -> None:
        super().__init__(name="draggan-live", daemon=True)
        self._connect = connect
        self.mailbox = mailbox
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._stop_flag = threading.Event()
        self._cancel_flag = threading.Event()
        self._backend: Any = None
        self._backend_for: tuple[str, float] | None = None
        self.busy = threading.Event()

    # -- the GTK thread's side ------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self._stop_flag.clear()
        self._cancel_flag.clear()
        self.busy.set()
        self._jobs.put(job)

    def stop(self) -> None:
        """End the running drag early and keep it (the backend answers the drag so far)."""
        self._stop_flag.set()

    def cancel(self) -> None:
        self._cancel_flag.set()

    def close(self, wait_s: float = 3.0) -> None:
        """Cancel what runs, end the thread (waits `wait_s` at most: the cancel reaches the backend)."""
        self._cancel_flag.set()
        self._jobs.put(None)
        if self.is_alive():
            self.join(wait_s)

    # -- the worker's side ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                try:
                    self.mailbox.put_answer(self._run(job))
                except errors.PluginError as exc:
                    self._drop_backend_after(exc)
                    self.mailbox.put_answer(Answer(job, error=exc))
                except Exception as exc:   # a bug: said, never a dead panel
                    import traceback

                    traceback.print_exc()
                    self._drop_backend_after(None)
                    self.mailbox.put_answer(Answer(job, error=errors.PluginError(
                        f"DragGAN: unexpected error in the panel ({type(exc).__name__}: {exc})")))
                finally:
                    if self._jobs.empty():
                        self.busy.clear()
        finally:
            if self._backend is not None:
                try:
                    self._backend.close()
                except Exception:
                    pass

    def _drop_backend_after(self, exc: errors.PluginError | None) -> None:
        """After a failure the connection may be unusable (the backend went away): the next job connects anew."""
        if self._backend is not None:
            try:
                self._backend.close()
            except Exception:
                pass
        self._backend = None

    def _run(self, job: Job) -> Answer:
        if self._backend is not None and self._backend_for != (job.address, job.timeout_s):
            self._drop_backend_after(None)
        if self._backend is None:
            self._backend = self._connect(job.address, job.timeout_s)
            self._backend_for = (job.address, job.timeout_s)
        backend = self._backend
        if job.kind == "models":
            return Answer(job, models=list(backend.models(refresh=True)))
        backend.refresh()   # a backend restarted since the last job is this connection's backend now

        def progress(message: Any) -> None:
            self.mailbox.put_progress(job.serial, message)

        if job.kind == "undo":
            return Answer(job, result=backend.undo(job.session_id, progress, job.result))
        note = ""
        if job.kind == "continue":
            try:
                result = backend.continue_session(job.session_id, job.size, job.handles, job.targets, job.mask,
                                                  job.params, progress, self._cancel_flag.is_set, job.model,
                                                  job.result, should_stop=self._stop_flag.is_set)
                return Answer(job, result=result)
            except link.SessionGone:
                note = "inverting anew: the backend no longer holds the session (restarted or expired)"
                self.mailbox.put_progress(job.serial, _Note(note))
        result = backend.edit(job.model, job.rgb, job.size, job.handles, job.targets, job.mask, job.params,
                              progress, self._cancel_flag.is_set, job.align, job.result,
                              should_stop=self._stop_flag.is_set)
        return Answer(job, result=result, inverted=True, note=note)


@dataclass
class _Note:
    """A progress-like message of the worker's own (a text for the panel's status line)."""

    text: str
    phase: str = "inversion"
    step: int = 0
    total: int = 0
    points: list[points.Point] = field(default_factory=list)
    inversion: Any = None
    preview: Any = None
