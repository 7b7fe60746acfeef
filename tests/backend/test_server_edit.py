"""Edits end to end over real ZeroMQ sockets on 127.0.0.1 with the REAL inversion and drag engine
(a tiny random generator on CPU): round trip, continue, cancel, isolation, purge, errors, models."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from backend.models import DEFAULT_MODEL
from backend.server import Server
from draggan_wire import protocol as P
from draggan_wire.client import Client, new_token
from draggan_wire.protocol import ErrorCode, ProtocolError

from .conftest import FAST, SIDE, edit, make_tiny_generator, real_runner, start_server, wait_until


def loaded_models(client: Client) -> dict[str, bool]:
    """name -> loaded, leaving out the embedded default model (always listed, never loaded here)."""
    models = {m.name: m.loaded for m in client.hello().models}
    assert models.pop(DEFAULT_MODEL, False) is False
    return models


def test_round_trip_with_progress_previews_and_result(real_server: Server, photo: P.Image) -> None:
    seen: list[P.Progress] = []
    with Client(real_server.endpoint, timeout_s=60) as client:
        welcome = client.hello()
        assert welcome.protocol == P.PROTOCOL_VERSION and welcome.device == "cpu"
        # the embedded default model is always offered beside the ones the server was given
        listed = [(m.name, m.width, m.height) for m in welcome.models if m.name != DEFAULT_MODEL]
        assert listed == [("tiny", SIDE, SIDE)]
        result = client.edit(edit(image=photo, mask=P.Image(SIDE, SIDE, 1, bytes([255]) * SIDE * SIDE),
                                  result="model"), on_progress=seen.append)
    phases = [p.phase for p in seen]
    assert "inversion" in phases and "drag" in phases
    assert phases.index("inversion") < phases.index("drag")
    drag = [p for p in seen if p.phase == "drag"]
    assert drag[-1].step == FAST.max_steps and drag[-1].total == FAST.max_steps
    assert all(len(p.points) == 1 and p.loss is not None for p in drag)
    previews = [p.preview for p in drag if p.preview is not None]
    assert previews and all((im.width, im.height, im.channels) == (SIDE, SIDE, 3) for im in previews)
    # protocol 4: RGBA in the crop's frame; the whole crop is the model's frame here, all of it produced
    assert (result.image.width, result.image.height, result.image.channels) == (SIDE, SIDE, 4)
    assert result.frame == "crop" and result.offset == (0, 0) and len(result.landed) == 1
    rgba = np.frombuffer(result.image.data, np.uint8).reshape(SIDE, SIDE, 4)
    assert (rgba[..., 3] == 255).all()
    assert result.steps == FAST.max_steps and len(result.points) == 1
    assert result.session_id and result.image_id
    assert result.inversion is not None and np.isfinite(result.inversion.psnr)
    # the model's pixels: the drag changed the picture (the engine ran on the projected latent)
    assert rgba[..., :3].tobytes() != photo.data


def test_continue_drags_again_without_inverting(real_server: Server, photo: P.Image) -> None:
    with Client(real_server.endpoint, timeout_s=60) as client:
        first = client.edit(edit(image=photo, result="model"))
        phases: list[str] = []
        again = client.continue_(P.Continue(session_id=first.session_id, handles=first.points,
                                            targets=[(20.0, 12.0)], params=FAST),
                                 on_progress=lambda p: phases.append(p.phase))
        assert again.session_id == first.session_id and again.steps == FAST.max_steps
        assert "inversion" not in phases and "drag" in phases
        assert again.image.data != first.image.data
        # the cached photo is re-used by id (no image frame sent)
        by_id = client.edit(edit(image_id=first.image_id))
        assert by_id.image_id == first.image_id


def test_cancel_mid_drag_stops_within_one_step(tiny_model: Path, photo: P.Image) -> None:
    server = start_server(real_runner(tiny_model))
    try:
        with Client(server.endpoint, timeout_s=60) as client:
            # tiny lr: the drag cannot converge (and stop by itself) before the cancel arrives
            long = P.EditParams(max_steps=2000, lr=1e-6, r1=10.0, r2=20.0, preview_every=0)
            request_id = client.submit(edit(image=photo, params=long))
            with pytest.raises(ProtocolError) as info:
                for message in client.stream(request_id):
                    if isinstance(message, P.Progress) and message.phase == "drag" and message.step >= 3:
                        client.cancel(request_id)
            assert info.value.code == ErrorCode.CANCELLED
        record = server.records[-1]
        assert record.outcome == ErrorCode.CANCELLED and record.step_at_cancel is not None
        assert record.steps - record.step_at_cancel <= 1, record
        assert record.steps < 2000
        wait_until(lambda: server.jobs == {}, what="the cancelled job to be forgotten")
    finally:
        server.stop()


def test_second_client_cannot_use_first_clients_image_or_session(real_server: Server, photo: P.Image) -> None:
    with Client(real_server.endpoint, timeout_s=60) as alice, Client(real_server.endpoint, timeout_s=60) as eve:
        mine = alice.edit(edit(image=photo))
        with pytest.raises(ProtocolError) as info:
            eve.edit(edit(image_id=mine.image_id))
        assert info.value.code == ErrorCode.UNKNOWN_IMAGE and info.value.field == "fields.image_id"
        with pytest.raises(ProtocolError) as info:
            eve.continue_(P.Continue(session_id=mine.session_id, handles=[(1.0, 1.0)], targets=[(2.0, 2.0)]))
        assert info.value.code == ErrorCode.UNKNOWN_SESSION
        assert eve.purge() == P.Purged(images=0, sessions=0)  # eve's purge cannot touch alice's data
        # alice still can, until she purges
        alice.continue_(P.Continue(session_id=mine.session_id, handles=mine.points, targets=[(5.0, 5.0)],
                                   params=FAST))
        purged = alice.purge()
        assert purged.images >= 1 and purged.sessions >= 1
        with pytest.raises(ProtocolError) as info:
            alice.edit(edit(image_id=mine.image_id))
        assert info.value.code == ErrorCode.UNKNOWN_IMAGE and "purged" in info.value.message


def test_bad_requests_get_errors_a_person_can_act_on(real_server: Server, photo: P.Image) -> None:
    with Client(real_server.endpoint, timeout_s=60) as client:
        with pytest.raises(ProtocolError) as info:
            client.edit(edit(image=photo, model="ffhq-512"))
        assert info.value.code == ErrorCode.UNKNOWN_MODEL and "install.py --model ffhq-512" in info.value.message
        small = P.Image(16, 16, 3, bytes(16 * 16 * 3))   # any crop size goes; its points must lie on it
        with pytest.raises(ProtocolError) as info:
            client.edit(edit(image=small))
        assert info.value.code == ErrorCode.BAD_REQUEST and "outside the 16x16 image" in info.value.message
        assert info.value.field == "fields.targets[0]"
        with pytest.raises(ProtocolError) as info:
            client.edit(edit(image=photo, handles=[(40.0, 3.0)]))
        assert info.value.code == ErrorCode.BAD_REQUEST and info.value.field == "fields.handles[0]"
        with pytest.raises(ProtocolError) as info:
            client.edit(edit(image=photo, params=P.EditParams(max_steps=2, r1=1.0)))
        assert info.value.code == ErrorCode.BAD_REQUEST and "params.r1" in info.value.message
        assert client.ping().instance == real_server.instance  # the server is fine


def test_malformed_message_mid_job_does_not_disturb_it(real_server: Server, photo: P.Image) -> None:
    with Client(real_server.endpoint, timeout_s=60) as client, Client(real_server.endpoint) as other:
        other.hello()
        sent = []

        def on_progress(progress: P.Progress) -> None:
            if progress.phase == "drag" and not sent:
                # on the job's own connection and on another one
                client._socket.send_multipart([b'{"v":1,"type":"edit","id":"zz","fields":{"model":5}}'])
                client._socket.send_multipart([b"\xff\xfe garbage", b"x" * 100])
                other._socket.send_multipart([b"{", b"", b""])
                sent.append(True)

        result = client.edit(edit(image=photo, params=P.EditParams(max_steps=6, r1=10.0, r2=20.0)),
                             on_progress=on_progress)
        assert sent and result.steps == 6
        assert real_server.records[-1].outcome == "result"


def test_models_load_on_demand_and_lru_evicts_under_memory_budget(tiny_model: Path, tmp_path: Path,
                                                                  photo: P.Image) -> None:
    other = make_tiny_generator(tmp_path / "other.pt", seed=1)
    import stylegan2
    from backend.model_pool import module_bytes

    one_model = module_bytes(stylegan2.load_generator(tiny_model))
    runner = real_runner(tiny_model, max_memory=int(one_model * 1.5))
    runner.pool.extra["other"] = other
    server = start_server(runner)
    try:
        with Client(server.endpoint, timeout_s=60) as client:
            assert loaded_models(client) == {"tiny": False, "other": False}
            phases: list[str] = []
            first = client.edit(edit(image=photo), on_progress=lambda p: phases.append(p.phase))
            assert phases[0] == "loading" and phases.count("loading") == 1
            phases.clear()
            client.edit(edit(image=photo, model="other"), on_progress=lambda p: phases.append(p.phase))
            assert phases.count("loading") == 1 and phases.index("loading") < phases.index("inversion")
            client.welcome = None
            assert loaded_models(client) == {"tiny": False, "other": True}
            assert runner.pool.evictions == 1
            # the evicted model's sessions went with it
            with pytest.raises(ProtocolError) as info:
                client.continue_(P.Continue(session_id=first.session_id, handles=[(1.0, 1.0)],
                                            targets=[(2.0, 2.0)]))
            assert info.value.code == ErrorCode.UNKNOWN_SESSION
    finally:
        server.stop()


def test_no_cache_keeps_nothing(tiny_model: Path, photo: P.Image) -> None:
    server = start_server(real_runner(tiny_model, cache=False), cache=False)
    try:
        with Client(server.endpoint, timeout_s=60) as client:
            assert client.hello().cache is False
            result = client.edit(edit(image=photo))
            assert result.image_id == ""
            with pytest.raises(ProtocolError) as info:
                client.continue_(P.Continue(session_id=result.session_id, handles=[(1.0, 1.0)],
                                            targets=[(2.0, 2.0)]))
            assert info.value.code == ErrorCode.UNKNOWN_SESSION and "--no-cache" in info.value.message
        wait_until(lambda: server.jobs == {}, what="jobs to clear")
        assert len(server.runner.images) == 0 and len(server.runner.sessions) == 0  # type: ignore[attr-defined]
    finally:
        server.stop()


def test_latent_cache_is_reused_and_purge_deletes_the_clients_latents(tiny_model: Path, photo: P.Image,
                                                                      tmp_path: Path) -> None:
    cache_dir = tmp_path / "latents"
    server = start_server(real_runner(tiny_model, cache_dir=cache_dir))
    try:
        with Client(server.endpoint, timeout_s=60) as client, Client(server.endpoint, timeout_s=60) as other:
            first = client.edit(edit(image=photo))
            assert first.inversion is not None and not first.inversion.from_cache
            files = list(cache_dir.glob("*.pt"))
            assert len(files) == 1
            again = client.edit(edit(image=photo))
            assert again.inversion is not None and again.inversion.from_cache
            other.purge()  # another client's purge leaves them alone
            assert list(cache_dir.glob("*.pt")) == files
            client.purge()
            assert list(cache_dir.glob("*.pt")) == []
    finally:
        server.stop()


def test_the_identity_token_reaches_its_session_from_a_new_connection(real_server: Server, photo: P.Image) -> None:
    """Without CURVE the owner is the identity token: the next plug-in run (a new process, a new
    connection, a new routing id) that presents the same token reaches its session; another token,
    even on the very routing id that made the session, does not."""
    token = new_token()
    rid = b"gimp-draggan-" + bytes(uuid.uuid4().hex, "ascii")
    with Client(real_server.endpoint, timeout_s=60, routing_id=rid, token=token) as first_run:
        result = first_run.edit(edit(image=photo))
    with Client(real_server.endpoint, timeout_s=60, routing_id=rid) as stranger:  # the leaked routing id
        with pytest.raises(ProtocolError) as info:
            stranger.continue_(P.Continue(session_id=result.session_id, handles=result.points,
                                          targets=[(20.0, 12.0)], params=FAST))
        assert info.value.code == ErrorCode.UNKNOWN_SESSION
    with Client(real_server.endpoint, timeout_s=60, token=token) as next_run:
        again = next_run.continue_(P.Continue(session_id=result.session_id, handles=result.points,
                                              targets=[(20.0, 12.0)], params=FAST))
        assert again.session_id == result.session_id and again.steps == FAST.max_steps


def test_points_that_move_as_one_move_the_part_they_lie_on_in_the_photo_s_own_pixels(real_server: Server,
                                                                                    photo: P.Image) -> None:
    """Three points spread over the picture, all shifted 2 px right with no selection: the answer is
    the photo itself shifted (not the model's picture), says so, and reports every handle landed."""
    handles = [(8.0, 8.0), (22.0, 9.0), (15.0, 22.0)]
    targets = [(x + 2.0, y) for x, y in handles]
    with Client(real_server.endpoint, timeout_s=60) as client:
        result = client.edit(edit(handles=handles, targets=targets, image=photo))
    assert "move as one" in result.note and result.landed == [True, True, True]
    rgba = np.frombuffer(result.image.data, np.uint8).reshape(result.image.height, result.image.width, 4)
    assert result.offset == (0, 0) and (rgba[..., 3] == 255).all()
    original = np.frombuffer(photo.data, np.uint8).reshape(SIDE, SIDE, 3).astype(int)
    core = rgba[10:22, 10:22, :3].astype(int)            # inside the box's feathered edge
    assert np.abs(core - original[10:22, 8:20]).max() <= 1
    assert np.abs(core - original[10:22, 10:22]).max() > 10   # it really moved


def test_points_that_turn_as_one_may_move_a_box_well_around_them_and_say_so(real_server: Server,
                                                                           photo: P.Image) -> None:
    """Three spread points turned 10 degrees about their centre, no selection: the drag's motion may reach
    well around them (a head tilted to one side takes its hair and outline along), and the note says why."""
    handles = np.array([(8.0, 8.0), (22.0, 9.0), (15.0, 22.0)])
    centre = handles.mean(0)
    a = np.radians(10.0)
    turned = (handles - centre) @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + centre
    with Client(real_server.endpoint, timeout_s=60) as client:
        result = client.edit(edit(handles=[(float(x), float(y)) for x, y in handles],
                                  targets=[(float(x), float(y)) for x, y in turned], image=photo))
    assert "turn as one" in result.note and "move as one" not in result.note


def test_points_in_a_row_each_move_a_box_of_their_own_and_say_so(real_server: Server, photo: P.Image) -> None:
    """Two points in a row raised 1 px (a smile's corners), no selection: the note says each point moves a
    box around it, not the face between them; the picture comes back whole."""
    handles = [(6.0, 20.0), (26.0, 20.0)]
    with Client(real_server.endpoint, timeout_s=60) as client:
        result = client.edit(edit(handles=handles, targets=[(x, y - 1.0) for x, y in handles], image=photo))
    assert "row or a cluster" in result.note and "move as one" not in result.note
    assert len(result.landed) == 2 and (result.image.width, result.image.height) == (SIDE, SIDE)
