"""The server shares one socket among clients that may be hostile: a hostile local client in a SECOND
PROCESS (testkit/hostile.py) against a real server on 127.0.0.1. It cannot see, receive from or
touch another client's job, session, image or cache entry, whatever routing id it presents; small
PNGs do not stall the loop; oversized numbers and malformed ids are refused with typed errors;
connections past --max-peers are refused."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backend.server import owner_of_token
from draggan_wire import protocol as P
from draggan_wire.client import Client, new_token
from draggan_wire.protocol import ErrorCode, ProtocolError
from testkit.servers import GatedRunner, fake

from .conftest import FAST, PYTHON, REPO, SIDE, edit, real_runner, start_server, subprocess_env, wait_until


def hostile(mode: str, endpoint: str, args: dict[str, Any] | None = None, timeout: float = 300) -> dict[str, Any]:
    out = subprocess.run([PYTHON, "-m", "testkit.hostile", mode, endpoint, json.dumps(args or {})],
                         cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("victim_routing_id", [None, b"\x00\x6b\x8b\x45\x67"], ids=["automatic", "chosen-0x00"])
def test_no_routing_id_takes_over_a_running_edit(victim_routing_id: bytes | None) -> None:
    """Automatic ids 0x00 + 0x6B8B4567 + 0..10^4, chosen ids starting with 0x00, and the victim's
    exact id (leaked), each probed while the victim's edit runs: no progress, result, pong entry,
    cancel or session of the victim reaches the hostile process, and the victim loses nothing."""
    runner = GatedRunner()
    server = start_server(runner, max_peers=64, heartbeat_s=2.0)
    progress: list[P.Progress] = []
    outcome: dict[str, Any] = {}
    try:
        victim = Client(server.endpoint, timeout_s=120, routing_id=victim_routing_id)
        request_id = victim.submit(fake())
        wait_until(runner.started.is_set, what="the victim's edit to run")
        (conn, _), = server.jobs.keys()

        def follow() -> None:
            try:
                for message in victim.stream(request_id):
                    if isinstance(message, P.Result):
                        outcome["result"] = message
                    else:
                        progress.append(message)
            except ProtocolError as exc:
                outcome["error"] = exc

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        seen = hostile("takeover", server.endpoint, {"auto_ids": 10**4, "chosen": 200, "victim_id": conn.hex(),
                                                     "victim_request": request_id, "session_id": "victim-session",
                                                     "image_id": "victim-image", "wait_s": 0.15})
        before_release = len(progress)
        runner.release.set()
        reader.join(60)
        print(f"\ntakeover probe: {seen['probed_ids']} routing ids, {seen['messages']} messages, "
              f"{seen['replies']} replies {seen['codes']}; victim saw {before_release} progress messages")
        assert seen["probed_ids"] >= 10**4 + 200 + 3
        assert seen["foreign"] == []  # nothing of the victim's job reached the hostile process
        assert "error" not in outcome and outcome["result"].session_id == "victim-session"
        assert before_release > 10  # the victim kept receiving its progress throughout
        assert runner.runs == [owner_of_token(victim.token)]  # no hostile edit ever ran
        # the victim's session stays the victim's: it continues it; the hostile process cannot
        runner.release.set()
        again = victim.continue_(P.Continue(session_id="victim-session", handles=[(1.0, 1.0)],
                                            targets=[(2.0, 2.0)]))
        assert again.session_id == "victim-session"
        assert seen["codes"].get(ErrorCode.UNKNOWN_SESSION, 0) > 0
        victim.close()
    finally:
        server.stop()


def test_a_new_peer_on_a_dropped_victims_routing_id_gets_nothing_of_its_job() -> None:
    """The victim's process dies mid-edit; a hostile peer at once connects with the victim's exact
    routing id: the job was cancelled when the connection closed and its output is dropped."""
    runner = GatedRunner()
    server = start_server(runner)
    try:
        victim = Client(server.endpoint, timeout_s=60, routing_id=b"gimp-victim-id")
        request_id = victim.submit(fake())
        wait_until(runner.started.is_set, what="the victim's edit")
        victim.close()
        seen = hostile("takeover", server.endpoint, {"auto_ids": 0, "chosen": 0, "victim_id": b"gimp-victim-id".hex(),
                                                     "victim_request": request_id, "session_id": "victim-session",
                                                     "image_id": "victim-image", "wait_s": 0.5})
        runner.release.set()
        wait_until(lambda: server.jobs == {}, what="the victim's job to end")
        assert seen["foreign"] == [] and seen["replies"] > 0
        assert any(r.request_id == request_id and r.reason == "disconnected" for r in server.records)
    finally:
        server.stop()


def test_sessions_images_and_cache_are_per_owner_and_a_full_store_makes_room(tiny_model: Path, photo: P.Image,
                                                                              tmp_path: Path) -> None:
    """The hostile process sends the victim's photo (no cache hit: from_cache false), tries the
    victim's session and image ids, purges, and fills the stores: its own edits evict only its own;
    at the global cap a second identity still gets its edit, by taking the place of the owner that
    holds the most (the victim's older session, which then answers why it is gone), and the victim's
    most recent session survives and continues."""
    runner = real_runner(tiny_model, cache_dir=tmp_path / "latents", max_sessions=2, max_sessions_total=3,
                         max_images=2, max_images_total=3)
    server = start_server(runner)
    script = HOSTILE_STORES
    try:
        with Client(server.endpoint, timeout_s=60) as victim:
            first = victim.edit(edit(image=photo))
            assert first.inversion is not None and not first.inversion.from_cache
            latest = victim.edit(edit(image=photo))
            assert latest.inversion is not None and latest.inversion.from_cache  # the owner's own cache hits
            photo_file = tmp_path / "photo.raw"
            photo_file.write_bytes(photo.data)
            out = subprocess.run([PYTHON, "-c", script, server.endpoint, str(photo_file), first.session_id,
                                  first.image_id], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                                 timeout=300)
            assert out.returncode == 0, out.stderr
            seen = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"\nhostile store probe: {seen}")
            assert seen["from_cache"] is False  # the victim's photo is no cache hit for another owner
            assert seen["continue_victim"] == ErrorCode.UNKNOWN_SESSION
            assert seen["edit_victim_image"] == ErrorCode.UNKNOWN_IMAGE
            assert seen["purged"] == [1, 1]  # only its own
            assert seen["own_edits"] == ["result", "result", "result"]  # evicts only its own oldest
            # global cap (3 sessions: the victim's 2, the hostile's 1): a new identity still gets in;
            # the victim holds the most and gives up its least recently used, never its latest
            assert seen["second_identity"] == "result"
            again = victim.continue_(P.Continue(session_id=latest.session_id, handles=latest.points,
                                                targets=[(20.0, 12.0)], params=FAST))
            assert again.session_id == latest.session_id
            with pytest.raises(ProtocolError) as gone:
                victim.continue_(P.Continue(session_id=first.session_id, handles=first.points,
                                            targets=[(20.0, 12.0)], params=FAST))
            assert gone.value.code == ErrorCode.UNKNOWN_SESSION and "evicted to make room" in gone.value.message
    finally:
        server.stop()


HOSTILE_STORES = f"""
import json, sys
from draggan_wire import protocol as P
from draggan_wire.client import Client
from draggan_wire.protocol import ProtocolError
endpoint, photo_file, session_id, image_id = sys.argv[1:5]
image = P.Image({SIDE}, {SIDE}, 3, open(photo_file, 'rb').read())
params = P.EditParams(max_steps=2, r1=10.0, r2=20.0, preview_every=0)
def edit(**kw):
    return P.Edit(model='tiny', handles=[(10.0, 12.0)], targets=[(16.0, 12.0)], params=params, **kw)
def code(fn):
    try:
        fn()
        return 'result'
    except ProtocolError as exc:
        return exc.code
out = {{}}
with Client(endpoint, timeout_s=60) as c:
    r = c.edit(edit(image=image))
    out['from_cache'] = r.inversion.from_cache
    out['continue_victim'] = code(lambda: c.continue_(P.Continue(session_id=session_id, handles=[(10.0, 12.0)],
                                                                 targets=[(12.0, 12.0)])))
    out['edit_victim_image'] = code(lambda: c.edit(edit(image_id=image_id)))
    p = c.purge()
    out['purged'] = [p.images, p.sessions]
    out['own_edits'] = [code(lambda: c.edit(edit(image=image))) for _ in range(3)]
with Client(endpoint, timeout_s=60) as other:   # a second identity of the same hostile user
    out['second_identity'] = code(lambda: other.edit(edit(image=image)))
print(json.dumps(out))
"""


def test_hello_is_answered_within_a_second_with_ten_paeth_pngs_in_flight() -> None:
    """A PNG flood must not starve the loop: 2048 px Paeth PNGs (28 KB each) are checked from their
    header on the loop and never decoded there; with 10 in flight (and more coming) and a job running, hello answers."""
    runner = GatedRunner()
    server = start_server(runner, max_peers=64)
    proc: subprocess.Popen[str] | None = None
    try:
        with Client(server.endpoint, timeout_s=60) as busy:
            running = busy.submit(fake())
            wait_until(runner.started.is_set, what="a job to run")
            proc = subprocess.Popen([PYTHON, "-m", "testkit.hostile", "flood_png", server.endpoint,
                                     json.dumps({"count": 10, "seconds": 6.0})], cwd=REPO, env=subprocess_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "FLOODING"
            worst = 0.0
            for _ in range(5):
                with Client(server.endpoint, timeout_s=10, connect_timeout_s=5, retries=1) as probe:
                    started = time.monotonic()
                    probe.hello()
                    worst = max(worst, time.monotonic() - started)
                time.sleep(0.3)
            print(f"\nhello under a PNG flood: worst {worst * 1000:.0f} ms")
            assert worst <= 1.0
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            runner.release.set()
            busy.cancel(running)
        assert server.stats["rejected:internal"] == 0
    finally:
        runner.release.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
        server.stop()


def test_oversized_numbers_newline_ids_and_bool_versions_get_typed_errors() -> None:
    server = start_server(GatedRunner())
    try:
        seen = hostile("numbers", server.endpoint)["results"]
        print(f"\n{seen}")
        codes = set(seen.values())
        assert ErrorCode.INTERNAL not in codes and "no reply" not in codes
        assert all(code == ErrorCode.BAD_REQUEST for label, code in seen.items() if not label.startswith("v true"))
        assert [code for label, code in seen.items() if label.startswith("v true")] == [ErrorCode.VERSION_MISMATCH]
        assert len(seen) == 13 + 3
        assert server.stats["rejected:internal"] == 0
    finally:
        server.stop()


def test_client_reads_oversized_numbers_in_replies_as_bad_request() -> None:
    frames = [json.dumps({"v": P.PROTOCOL_VERSION, "type": "progress", "id": "r1",
                          "fields": {"phase": "drag", "loss": int("9" * 400)}}).encode()]
    with pytest.raises(ProtocolError) as info:
        P.decode(frames, allowed=P.REPLY_TYPES)
    assert info.value.code == ErrorCode.BAD_REQUEST and info.value.field == "fields.loss"


def test_connections_past_max_peers_make_room_and_the_server_stays_usable() -> None:
    """A second process opens 30 connections (each pings) against --max-peers 8: every new one gets
    in by closing an idle older one, the server never holds more than 8, and a client arriving while
    the 30 are held gets in too."""
    server = start_server(GatedRunner(), max_peers=8)
    proc = subprocess.Popen([PYTHON, "-m", "testkit.hostile", "connections", server.endpoint,
                             json.dumps({"count": 30})], cwd=REPO, env=subprocess_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        seen = json.loads(proc.stdout.readline())
        print(f"\nmax_peers 8, 30 connections: {seen}; closed to make room: {server.stats['shed:peers']}")
        assert seen["answered"] == 30 and server.stats["shed:peers"] >= 22
        wait_until(lambda: server.stores()["peers"] <= 8, what="the shed connections to close")
        with Client(server.endpoint, connect_timeout_s=2.0, retries=2) as late:  # while the 30 are held
            welcome = late.hello()
            assert welcome.limits["max_peers"] == 8 and welcome.stores["peers"] <= 8
        proc.stdin.write("done\n")
        proc.stdin.flush()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def test_connections_with_jobs_are_never_closed_then_a_newcomer_is_refused() -> None:
    """--max-peers 2, both connections holding a job (one running, one queued): nothing may make room,
    so a third connection is refused at the handshake, with a reason; the jobs go on."""
    runner = GatedRunner()
    server = start_server(runner, max_peers=2)
    try:
        with Client(server.endpoint, timeout_s=60) as a, Client(server.endpoint, timeout_s=60) as b:
            running = a.submit(fake())
            wait_until(runner.started.is_set, what="the first job")
            queued = b.submit(fake())
            assert next(b.stream(queued)).phase == "queued"
            with pytest.raises(ProtocolError) as info:
                with Client(server.endpoint, connect_timeout_s=1.0, retries=1) as late:
                    late.hello()
            assert info.value.code == ErrorCode.AUTH and "too many connections" in info.value.message
            assert server.stats["shed:peers"] == 0 and server.stats["refused:max_peers"] > 0
            runner.release.set()
            assert list(a.stream(running))[-1].session_id == "victim-session"
            assert list(b.stream(queued))[-1].session_id == "victim-session"
    finally:
        runner.release.set()
        server.stop()


def test_token_binds_the_connection_and_new_token_is_fresh() -> None:
    server = start_server(GatedRunner())
    try:
        with Client(server.endpoint) as client:
            client.hello()
            client.token = new_token()  # another identity on the same connection
            with pytest.raises(ProtocolError) as info:
                client.hello()
            assert info.value.code == ErrorCode.BAD_REQUEST and info.value.field == "header.token"
    finally:
        server.stop()
