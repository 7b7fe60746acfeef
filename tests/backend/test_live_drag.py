"""Live drags over real ZeroMQ sockets with the REAL engine (tiny random generator on CPU): previews
placed in the crop's frame, ``stop`` (the drag so far becomes the result), ``undo`` (the session's
history of drag states) and a cancel that leaves the session as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.server import Server
from draggan_wire import protocol as P
from draggan_wire.client import Client
from draggan_wire.protocol import ErrorCode, ProtocolError

from .conftest import SIDE, edit, real_runner, start_server, wait_until

# tiny lr: the drag cannot reach its target (and stop by itself) before the test stops it
LONG = P.EditParams(max_steps=2000, lr=1e-6, r1=10.0, r2=20.0, preview_every=1, preview_frame="crop")
SHORT = P.EditParams(max_steps=4, r1=10.0, r2=20.0, preview_every=2, preview_frame="crop")


@pytest.fixture()
def server(tiny_model: Path):
    server = start_server(real_runner(tiny_model))
    yield server
    server.stop()


def test_previews_in_the_crop_frame_sit_where_the_result_goes(server: Server, photo: P.Image) -> None:
    # a crop twice the model's size: previews and result are RGBA at the crop's resolution
    big = np.kron(np.frombuffer(photo.data, np.uint8).reshape(SIDE, SIDE, 3), np.ones((2, 2, 1), np.uint8))
    crop = P.Image(2 * SIDE, 2 * SIDE, 3, big.tobytes())
    seen: list[P.Progress] = []
    with Client(server.endpoint, timeout_s=60) as client:
        result = client.edit(edit(image=crop, handles=[(20.0, 24.0)], targets=[(32.0, 24.0)], params=SHORT,
                                  result="model"), on_progress=seen.append)
    previews = [p for p in seen if p.preview is not None]
    assert len(previews) >= 2
    for p in previews:
        assert p.preview_frame == "crop" and p.preview is not None
        assert (p.preview.width, p.preview.height, p.preview.channels) == (2 * SIDE, 2 * SIDE, 4)
        assert p.preview_offset == result.offset == (0, 0)
    # a preview shows the latent a step tracked on (before its update): the last one is a step behind the result
    assert previews[-1].step == SHORT.max_steps and previews[-1].preview != result.image
    assert (result.image.width, result.image.height) == (previews[-1].preview.width, previews[-1].preview.height)
    # the model's frame (default) stays RGB at the model's size
    with Client(server.endpoint, timeout_s=60) as client:
        seen.clear()
        client.edit(edit(image=photo, params=P.EditParams(max_steps=2, r1=10.0, r2=20.0, preview_every=1)),
                    on_progress=seen.append)
    assert all(p.preview_frame == "model" and p.preview.channels == 3 for p in seen if p.preview is not None)


def test_stop_ends_the_drag_and_answers_the_state_so_far(server: Server, photo: P.Image) -> None:
    with Client(server.endpoint, timeout_s=60) as client:
        request_id = client.submit(edit(image=photo, params=LONG, result="model"))
        last_preview = None
        result = None
        for message in client.stream(request_id):
            if isinstance(message, P.Result):
                result = message
            elif message.preview is not None:
                last_preview = message
                if message.step == 3:
                    client.stop(request_id)
        assert result is not None and result.stopped and 3 <= result.steps < LONG.max_steps
        assert "stopped by the client" in result.note and result.history == 1
        assert last_preview is not None and last_preview.step == result.steps
        record = server.records[-1]
        assert record.outcome == "result" and record.steps == result.steps
        assert server.stats["stop"] == 1
        # the session continues from the stopped state
        again = client.continue_(P.Continue(session_id=result.session_id, handles=result.points,
                                            targets=[(20.0, 12.0)], params=SHORT))
        assert again.steps == SHORT.max_steps and not again.stopped and again.history == 2


def test_stop_before_the_drag_keeps_nothing_and_stop_of_an_unknown_job_stops_nothing(
        server: Server, photo: P.Image) -> None:
    with Client(server.endpoint, timeout_s=60) as client:
        request_id = client.submit(edit(image=photo, params=LONG))
        with pytest.raises(ProtocolError) as info:
            for message in client.stream(request_id):
                if isinstance(message, P.Progress) and message.phase in ("loading", "inversion"):
                    client.stop(request_id)
        assert info.value.code == ErrorCode.CANCELLED and "before its drag began" in info.value.message
        client._send(P.Stop(job="nothing-here"), "s1")
        env = client._recv(10)
        assert env is not None and env.message == P.StopOk(stopping=0)


def test_undo_restores_the_earlier_result_byte_for_byte(server: Server, photo: P.Image) -> None:
    with Client(server.endpoint, timeout_s=60) as client:
        # the model's pixels (a random model's drag moves no content the picture's own pixels would follow)
        first = client.edit(edit(image=photo, params=SHORT, result="model"))
        assert first.history == 1          # the inversion's state, before any drag
        second = client.continue_(P.Continue(session_id=first.session_id, handles=first.points,
                                             targets=[(20.0, 12.0)], params=SHORT))
        assert second.history == 2 and second.image != first.image
        back = client.undo(first.session_id)
        assert back.image == first.image and back.offset == first.offset
        assert back.points == first.points and back.landed == first.landed and back.history == 1
        # and the session drags on from there: the same drag again gives the same picture
        again = client.continue_(P.Continue(session_id=first.session_id, handles=first.points,
                                            targets=[(20.0, 12.0)], params=SHORT))
        assert again.image == second.image
        client.undo(first.session_id)
        start = client.undo(first.session_id)   # before the first drag: the handles as they were given
        assert start.history == 0 and start.points == [(10.0, 12.0)]
        with pytest.raises(ProtocolError) as info:
            client.undo(first.session_id)
        assert info.value.code == ErrorCode.BAD_REQUEST and "no drag left to undo" in info.value.message
        with pytest.raises(ProtocolError) as info:
            client.undo("no-such-session")
        assert info.value.code == ErrorCode.UNKNOWN_SESSION
        # the picture's own pixels moved ("detail"): the same bytes after an undo too
        detail = client.edit(edit(image=photo, params=SHORT))
        client.continue_(P.Continue(session_id=detail.session_id, handles=detail.points, targets=[(20.0, 12.0)],
                                    params=SHORT))
        assert client.undo(detail.session_id).image == detail.image


def test_a_cancelled_drag_leaves_the_session_as_it_was(server: Server, photo: P.Image) -> None:
    with Client(server.endpoint, timeout_s=60) as client:
        first = client.edit(edit(image=photo, params=SHORT))
        request_id = client.submit(P.Continue(session_id=first.session_id, handles=first.points,
                                              targets=[(20.0, 12.0)], params=LONG))
        with pytest.raises(ProtocolError) as info:
            for message in client.stream(request_id):
                if isinstance(message, P.Progress) and message.step == 3:
                    client.cancel(request_id)
        assert info.value.code == ErrorCode.CANCELLED
        wait_until(lambda: server.jobs == {}, what="the cancelled job to end")
        back = client.undo(first.session_id)   # the cancelled drag left no state behind: this undoes the first
        assert back.history == 0


def test_undo_is_a_request_of_its_own_on_the_wire() -> None:
    token = "ab" * 32
    for message in (P.Undo(session_id="s1"), P.Undo(session_id="s1", result="model"), P.Stop(job="c1-2")):
        assert P.decode(P.encode(message, "r1", token)).message == message
    with pytest.raises(ProtocolError) as info:
        P.decode(P.encode(P.Stop(job=""), "r1", token))
    assert info.value.field == "fields.job"


def test_a_continue_stopped_before_its_first_step_changes_nothing(tiny_model: Path, photo: P.Image) -> None:
    runner = real_runner(tiny_model)
    owner = "tok:test"
    first = runner.run(owner, edit(image=photo, params=SHORT, result="model"), lambda p: None, lambda: False)
    again = runner.run(owner, P.Continue(session_id=first.session_id, handles=first.points, targets=[(20.0, 12.0)],
                                         params=SHORT), lambda p: None, lambda: False, should_stop=lambda: True)
    assert again.stopped and again.steps == 0 and again.history == first.history == 1
    assert again.image == first.image and again.points == first.points
