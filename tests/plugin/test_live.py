"""The panel's network half (draggan_core/live.py) without GTK: the handle anchors that follow the
drag, when a Drag may continue the session, the mailbox that drops stale previews, and the worker
thread against the REAL server (backend.server with a runner that streams previews), plain, through
the pyzmq relay, with CURVE, and when the backend goes away mid-drag. The panel itself runs in the
real GIMP (tests/gimp/test_panel_real_gimp.py)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from draggan_core import errors, geometry, link, live, points, relay

from backend import keys
from backend.server import Server, ServerConfig
from draggan_wire import client as client_module
from draggan_wire import protocol as P
from draggan_wire.protocol import ErrorCode, ProtocolError

from .scripted_router import ScriptedRouter, welcome

SIDE = 16


# -- pure decisions ------------------------------------------------------------------------------


def stroke(*anchors: tuple[float, float]) -> tuple[str, list[float], bool]:
    floats: list[float] = []
    for x, y in anchors:
        floats += [x - 1, y, x, y, x + 1, y]   # in-control, anchor, out-control
    return ("BEZIER", floats, False)


def test_handle_anchors_follow_the_tracked_points_with_their_control_points() -> None:
    strokes = [stroke((10, 10), (20, 10)), stroke((30, 30), (40, 30), (50, 50), (60, 50))]
    moved = live.move_handles(strokes, [(12, 11), (33, 29), (52, 52)])
    anchors = [points.anchors_from_stroke_floats(f) for _k, f, _c in moved]
    assert anchors == [[(12, 11), (20, 10)], [(33, 29), (40, 30), (52, 52), (60, 50)]]   # targets stay
    assert moved[0][1][:6] == [11, 11, 12, 11, 13, 11]                                  # controls move along
    assert points.pairs_from_strokes(anchors, "p").handles == [(12, 11), (33, 29), (52, 52)]
    with pytest.raises(ValueError):
        live.move_handles(strokes, [(1, 1)])           # the user changed the path meanwhile: left alone
    with pytest.raises(ValueError):
        live.move_handles(strokes, [(1, 1)] * 4)


def test_a_drag_continues_the_session_only_on_the_same_picture_and_settings() -> None:
    model = link.ModelChoice("faces-128", 128, 128, True)
    session = live.Session("s1", "tcp://127.0.0.1:5555", model, geometry.Rect(0, 0, 100, 100), (100, 100),
                           False, "auto", "fast", source=7)
    drag = points.DragPoints([(10.0, 10.0)], [(20.0, 20.0)])

    def decide(**over: Any) -> tuple[bool, str]:
        args = dict(session=session, address="tcp://localhost:5555", model="", pti="auto", inversion="fast",
                    aligned=False, drag=drag, source=7)
        args.update(over)
        return live.may_continue(**args)

    assert decide() == (True, "continuing the session (no re-inversion)")
    assert decide(model="faces-128")[0]
    for over, words in ((dict(session=None), "new session"), (dict(address="tcp://10.0.0.2:5555"), "address"),
                        (dict(model="other"), "model 'other'"), (dict(pti="on"), "PTI"),
                        (dict(inversion="quality"), "inversion setting"), (dict(aligned=True), "alignment"),
                        (dict(source=8), "pixels changed"), (dict(source=None), "pixels changed"),
                        (dict(drag=points.DragPoints([(10.0, 10.0)], [(120.0, 20.0)])), "outside the session")):
        cont, reason = decide(**over)
        assert not cont and words in reason, (over, reason)


def test_previews_are_asked_for_by_the_crop_size() -> None:
    assert live.preview_every_for((256, 256)) == 1
    assert live.preview_every_for((1024, 1024)) == 4
    assert live.preview_every_for((2048, 2048)) == 16
    assert live.preview_every_for((20000, 20000)) == live.MAX_PREVIEW_EVERY


def test_the_mailbox_keeps_only_the_newest_preview() -> None:
    box = live.Mailbox()
    for step in range(1, 5):
        box.put_progress(3, P.Progress(phase="drag", step=step, total=9, preview=P.Image(1, 1, 4, bytes(4))))
    box.put_progress(3, P.Progress(phase="drag", step=5, total=9, text="done"))
    preview, progress, texts, answers = box.take()
    assert preview is not None and preview[0] == 3 and preview[1].step == 4      # the newest picture only
    assert progress is not None and progress[1].step == 5 and texts == [(3, "done")] and answers == []
    assert (box.previews_in, box.previews_dropped) == (4, 3)
    assert box.take() == (None, None, [], [])


# -- the worker against a real server ------------------------------------------------------------


class LiveRunner:
    """A runner without a model that behaves as EditRunner does for live drags: a preview every step,
    placed in the crop's frame; ``should_stop`` ends the drag with its result so far; sessions for
    continue and undo."""

    device = "cpu"

    def __init__(self, steps: int = 200, step_s: float = 0.02) -> None:
        self.steps = steps
        self.step_s = step_s
        self.sessions: set[str] = set()
        self.requests: list[str] = []

    def models(self) -> list[P.ModelEntry]:
        return [P.ModelEntry("fake", SIDE, SIDE, True)]

    def memory(self) -> tuple[int, int]:
        return (0, 0)

    def purge(self, owner: str) -> tuple[int, int]:
        return (0, 0)

    def precheck(self, owner: str, request: Any) -> None:
        if isinstance(request, (P.Continue, P.Undo)) and request.session_id not in self.sessions:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "no such session", "fields.session_id")

    def run(self, owner: str, request: Any, emit: Any, should_cancel: Any, should_stop: Any = None) -> P.Result:
        self.requests.append(request.TYPE)
        picture = P.Image(SIDE, SIDE, 4, bytes(SIDE * SIDE * 4))
        if isinstance(request, P.Undo):
            return P.Result(image=picture, points=[(1.0, 1.0)], session_id=request.session_id, history=0)
        step, stopped = 0, False
        while step < self.steps:
            if should_cancel():
                raise ProtocolError(ErrorCode.CANCELLED, "cancelled")
            if should_stop is not None and should_stop():
                stopped = True
                break
            step += 1
            time.sleep(self.step_s)
            emit(P.Progress(phase="drag", step=step, total=self.steps, points=[(1.0 + step / 100, 1.0)],
                            preview=P.Image(SIDE, SIDE, 4, bytes([step % 256]) * (SIDE * SIDE * 4)),
                            preview_frame="crop", preview_offset=(0, 0)))
        session_id = getattr(request, "session_id", "") or f"s{len(self.sessions) + 1}"
        self.sessions.add(session_id)
        return P.Result(image=picture, points=[(2.0, 1.0)], session_id=session_id, steps=step, stopped=stopped,
                        history=1)


def start(runner: Any, **config: Any) -> Server:
    config.setdefault("bind", "tcp://127.0.0.1:0")
    config.setdefault("heartbeat_s", 1.0)
    return Server(ServerConfig(**config), runner).start_thread()


def worker_for(address: str, timeout_s: float = 10.0, plugin_config: dict[str, Any] | None = None) -> live.Worker:
    token = client_module.new_token()
    worker = live.Worker(lambda a, t: link.Backend(a, t, connect_timeout_s=2.0, retries=1, token=token,
                                                   plugin_config=plugin_config), live.Mailbox())
    worker.address, worker.timeout_s = address, timeout_s   # the jobs' (the panel reads them from its settings)
    worker.start()
    return worker


def drag_job(worker: live.Worker, kind: str = "edit", session_id: str = "") -> live.Job:
    return live.Job(kind=kind, serial=1, address=worker.address, timeout_s=worker.timeout_s, model="fake",
                    rgb=bytes(SIDE * SIDE * 3), size=(SIDE, SIDE), handles=[(1.0, 1.0)], targets=[(9.0, 1.0)],
                    params={"max_steps": 200, "preview_every": 1, "preview_frame": "crop"}, session_id=session_id)


def collect(worker: live.Worker, until: Any, timeout_s: float = 30.0) -> tuple[list[Any], list[live.Answer]]:
    """Take from the worker's mailbox (as the panel's timer does) until ``until(previews, answers)``."""
    previews: list[Any] = []
    answers: list[live.Answer] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        preview, _progress, _texts, new = worker.mailbox.take()
        if preview is not None:
            previews.append(preview[1])
        answers += new
        if until(previews, answers):
            return previews, answers
        time.sleep(0.04)
    raise AssertionError(f"timed out: {len(previews)} previews, answers {answers}")


def drag_and_stop(worker: live.Worker) -> live.Answer:
    """A long drag, stopped after a few painted previews: its answer."""
    worker.submit(drag_job(worker))
    previews, _ = collect(worker, lambda p, a: len(p) >= 3)
    assert all(p.preview_frame == "crop" and p.preview.channels == 4 for p in previews)
    worker.stop()
    _, answers = collect(worker, lambda p, a: bool(a))
    return answers[0]


def test_the_worker_connects_to_the_backend_each_job_names() -> None:
    made: list[tuple[str, float]] = []

    class Stub:
        def __init__(self, address: str, timeout_s: float) -> None:
            made.append((address, timeout_s))

        def models(self, refresh: bool = False) -> list[Any]:
            return []

        def close(self) -> None:
            pass

    worker = live.Worker(Stub, live.Mailbox())
    worker.start()
    try:
        for n, (address, timeout_s) in enumerate((("tcp://a:1", 30.0), ("tcp://a:1", 30.0), ("tcp://b:1", 30.0),
                                                  ("tcp://b:1", 5.0)), start=1):
            worker.submit(live.Job(kind="models", serial=n, address=address, timeout_s=timeout_s))
            collect(worker, lambda p, a: bool(a))
        assert made == [("tcp://a:1", 30.0), ("tcp://b:1", 30.0), ("tcp://b:1", 5.0)]   # the same one is reused
    finally:
        worker.close()


def test_the_worker_streams_previews_and_stop_keeps_the_drag() -> None:
    runner = LiveRunner()
    server = start(runner)
    worker = worker_for(server.endpoint)
    try:
        answer = drag_and_stop(worker)
        assert answer.error is None and answer.inverted and answer.result.stopped
        assert 3 <= answer.result.steps < runner.steps
        assert not worker.busy.is_set()
        # Drag again on the session, then undo it
        worker.submit(drag_job(worker, "continue", answer.result.session_id))
        collect(worker, lambda p, a: len(p) >= 2)
        worker.stop()
        _, answers = collect(worker, lambda p, a: bool(a))
        assert answers[0].result is not None and answers[0].result.stopped and not answers[0].inverted
        worker.submit(live.Job(kind="undo", serial=2, address=worker.address, timeout_s=worker.timeout_s,
                               session_id=answer.result.session_id))
        _, answers = collect(worker, lambda p, a: bool(a))
        assert answers[0].result.history == 0
        assert runner.requests == ["edit", "continue", "undo"]
    finally:
        worker.close()
        server.stop()


def test_a_session_the_backend_lost_is_inverted_anew() -> None:
    runner = LiveRunner(steps=3)
    server = start(runner)
    worker = worker_for(server.endpoint)
    try:
        worker.submit(drag_job(worker, "continue", "gone"))
        _, answers = collect(worker, lambda p, a: bool(a))
        assert answers[0].inverted and "no longer holds the session" in answers[0].note
        assert runner.requests == ["edit"]
    finally:
        worker.close()
        server.stop()


@pytest.fixture()
def relayed(monkeypatch: pytest.MonkeyPatch):
    """draggan_wire.client with the relay as its zmq (the bridge runs in this test's Python)."""
    monkeypatch.setenv(relay.PYTHON_ENV, sys.executable)
    monkeypatch.setattr(client_module, "import_zmq", lambda: relay.module())
    yield
    if relay._bridge is not None:
        relay._bridge.close()
        relay._bridge = None


def test_the_worker_drags_and_stops_through_the_relay_bridge(relayed) -> None:
    server = start(LiveRunner())
    worker = worker_for(server.endpoint)
    try:
        answer = drag_and_stop(worker)
        assert answer.error is None and answer.result.stopped
        assert relay._bridge is not None and relay._bridge.relayed["type:stop_ok"] == 1
        assert relay._bridge.relayed["type:progress"] >= 3
    finally:
        worker.close()
        server.stop()


def test_the_worker_drags_and_stops_against_a_curve_server(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keys.init(folder)
    server_keys = keys.load_server_keys(folder)
    server = start(LiveRunner(), auth="curve", server_public_key=server_keys.public,
                   server_secret_key=server_keys.secret, allowed_clients_dir=str(server_keys.allowed_dir))
    address = server.endpoint   # draggan.json's address: the link uses its keys (a server without them refuses)
    config = {"address": address,
              "server_public_key": client_module.read_public_key(str(folder / "server.key")).decode(),
              "client_public_key": client_module.read_public_key(str(folder / "client.key_secret")).decode(),
              "client_secret_key": client_module.read_secret_key(str(folder / "client.key_secret")).decode()}
    worker = worker_for(address, plugin_config=config)
    try:
        answer = drag_and_stop(worker)
        assert answer.error is None and answer.result.stopped
        assert server.welcome().auth == "curve"
    finally:
        worker.close()
        server.stop()


class SilentBackend(ScriptedRouter):
    """Says welcome, then nothing at all: a backend that died (or a link that broke) mid-drag."""

    def answer(self, ident: bytes, envelope: Any) -> object:
        if envelope.type == "hello":
            return welcome(P.ModelEntry("fake", SIDE, SIDE, True))
        threading.Event().wait(3600)   # never answers (the serving thread dies with the test process)
        return None


def test_a_backend_that_goes_away_mid_drag_is_a_lost_connection() -> None:
    runner = LiveRunner()
    server = start(runner)
    worker = worker_for(server.endpoint)
    try:
        worker.submit(drag_job(worker))
        collect(worker, lambda p, a: len(p) >= 2)
        server.stop()                                # shuts down: the running job is told so
        _, answers = collect(worker, lambda p, a: bool(a))
        error = answers[0].error
        assert isinstance(error, errors.PluginError) and error.code == "shutting_down"
    finally:
        worker.close()
    silent = SilentBackend()
    worker = worker_for(silent.address, timeout_s=2.0)
    try:
        worker.submit(drag_job(worker))
        _, answers = collect(worker, lambda p, a: bool(a), timeout_s=20)
        error = answers[0].error
        assert isinstance(error, errors.PluginError) and error.code == "timeout"
        assert "no answer from the backend" in error.message
    finally:
        worker.close(wait_s=0.5)
        silent.stop.set()
