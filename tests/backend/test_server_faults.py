"""Faults and load over real sockets on 127.0.0.1: vanished clients, fuzzing, slow clients, queue
and busy, out-of-memory and internal errors, 8 concurrent clients, inactivity-based timeouts.

Tests that print figures (fuzz counts, load latencies) show them with ``pytest -s``.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import zmq

from backend.server import Server
from draggan_wire import protocol as P
from draggan_wire.client import Client, new_token
from draggan_wire.protocol import ErrorCode, ProtocolError
from testkit.fuzz import fuzz_messages, send_and_count_replies, valid_edit_header

from .conftest import (
    PYTHON,
    REPO,
    SIDE,
    FakeRunner,
    edit,
    fake_edit,
    real_runner,
    start_server,
    subprocess_env,
    wait_until,
)

KILLED_CLIENT = """
import sys, time
from draggan_wire import protocol as P
from draggan_wire.client import Client, new_token
endpoint, image_file = sys.argv[1], sys.argv[2]
image = P.Image({side}, {side}, 3, open(image_file, 'rb').read())
client = Client(endpoint, timeout_s=60)
client.hello()
# A tiny learning rate over a long distance: the drag cannot reach its target (and stop by
# itself) before the client is killed, however well the engine converges.
rid = client.submit(P.Edit(model='tiny', image=image, handles=[(4.0, 4.0)], targets=[(28.0, 28.0)],
                           params=P.EditParams(max_steps=5000, lr=1e-6, r1=10.0, r2=20.0, preview_every=0)))
for message in client.stream(rid):
    if getattr(message, 'phase', '') == 'drag':
        print('DRAGGING', flush=True)
        break
time.sleep(600)   # alive but silent until killed
"""


def test_client_killed_mid_job_gets_its_job_aborted(tiny_model: Path, photo: P.Image, tmp_path: Path) -> None:
    server = start_server(real_runner(tiny_model), heartbeat_s=0.5)
    image_file = tmp_path / "photo.raw"
    image_file.write_bytes(photo.data)
    proc = subprocess.Popen([PYTHON, "-c", KILLED_CLIENT.format(side=SIDE), server.endpoint, str(image_file)],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "DRAGGING"
        wait_until(lambda: len(server.jobs) == 1 and server.current is not None, what="the job to run")
        proc.kill()  # what GIMP's status-bar cancel does to a plug-in
        proc.wait(10)
        killed = time.monotonic()
        # the socket monitor reports the closed connection at once; silence (heartbeats) is the fallback
        wait_until(lambda: server.stats["cancel:disconnected"] + server.stats["aborted_vanished"] == 1, timeout=30,
                   what="the vanished-client abort")
        wait_until(lambda: server.jobs == {} and server.current is None, what="the aborted job to end")
        print(f"\njob aborted {time.monotonic() - killed:.2f} s after the client was killed (heartbeat 0.5 s)")
        record = server.records[-1]
        assert record.outcome == ErrorCode.CANCELLED and record.reason in ("disconnected", "vanished")
        assert record.steps < 5000
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def test_fuzz_thousands_of_malformed_messages_server_still_answers(real_server: Server) -> None:
    messages = fuzz_messages(random.Random(1234))
    ctx = zmq.Context.instance()
    started = time.monotonic()
    sent, codes, no_reply = send_and_count_replies(real_server.endpoint, messages)
    # frames over MAXMSGSIZE: libzmq drops such a connection before buffering the frame
    for _ in range(3):
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(real_server.endpoint)
        big.send_multipart([json.dumps(valid_edit_header()).encode(), bytes(P.MAX_MESSAGE_BYTES + 1)])
        sent["over_maxmsgsize"] += 1
        big.close(0)
    seconds = time.monotonic() - started
    print(f"\nfuzz: {sum(sent.values())} malformed messages in {seconds:.1f} s")
    for kind, count in sorted(sent.items()):
        print(f"  {kind:<22} {count:>5}")
    print("  replies by error code: " + ", ".join(f"{c}={n}" for c, n in sorted(codes.items())))
    assert no_reply == 0
    assert sum(codes.values()) == sum(sent.values()) - sent["over_maxmsgsize"]
    assert set(codes) <= {ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.UNKNOWN_TYPE,
                          ErrorCode.VERSION_MISMATCH}
    with Client(real_server.endpoint, timeout_s=10) as client:
        assert client.hello().instance == real_server.instance
    assert real_server.stats["rejected:internal"] == 0 and real_server.jobs == {}


def test_slow_client_does_not_block_others(real_server: Server, photo: P.Image) -> None:
    ctx = zmq.Context.instance()
    slow = ctx.socket(zmq.DEALER)  # submits an edit with a preview every step, then never reads
    slow.setsockopt(zmq.LINGER, 0)
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.connect(real_server.endpoint)
    trickle = socket.create_connection(("127.0.0.1", int(real_server.endpoint.rsplit(":", 1)[1])))
    stop = threading.Event()

    def slow_heartbeats() -> None:  # alive (pings) but reading nothing; a byte-a-second raw TCP peer too
        i = 0
        while not stop.wait(0.3):
            slow.send_multipart(P.encode(P.Ping(), f"sp{i}", token))
            try:
                trickle.send(b"\xff")
            except OSError:
                pass
            i += 1

    params = P.EditParams(max_steps=15, r1=10.0, r2=20.0, preview_every=1)
    token = new_token()
    slow.send_multipart(P.encode(edit(image=photo, params=params), "slow1", token))
    beat = threading.Thread(target=slow_heartbeats, daemon=True)
    beat.start()
    try:
        wait_until(lambda: any(job.request_id == "slow1" for job in real_server.jobs.values()),
                   what="the slow client's job")
        with Client(real_server.endpoint, timeout_s=60) as client:
            assert client.hello().instance == real_server.instance  # answered while the slow job runs
            result = client.edit(edit(image=photo))
            assert result.steps == edit().params.max_steps
        wait_until(lambda: real_server.jobs == {}, what="both jobs to end")
        outcomes = {r.request_id: r.outcome for r in real_server.records}
        assert outcomes["slow1"] == "result"
    finally:
        stop.set()
        beat.join(5)
        trickle.close()
        slow.close(0)


def test_queue_busy_and_cancel_of_a_queued_job() -> None:
    runner = FakeRunner(steps=400, step_s=0.01)
    server = start_server(runner, queue_limit=1)
    try:
        with Client(server.endpoint) as a, Client(server.endpoint) as b, Client(server.endpoint) as c:
            running = a.submit(fake_edit())
            wait_until(runner.started.is_set, what="the first job to start")
            queued = b.submit(fake_edit())
            first = next(b.stream(queued))
            assert isinstance(first, P.Progress) and first.phase == "queued" and first.position == 1
            with pytest.raises(ProtocolError) as info:
                c.edit(fake_edit())
            assert info.value.code == ErrorCode.BUSY and "queue" in info.value.message
            with pytest.raises(ProtocolError) as info:  # one edit per connection at a time
                a.edit(fake_edit())
            assert info.value.code == ErrorCode.BUSY and running in info.value.message
            b.cancel(queued)
            with pytest.raises(ProtocolError) as info:
                list(b.stream(queued))
            assert info.value.code == ErrorCode.CANCELLED
            a.cancel(running)
            with pytest.raises(ProtocolError) as info:
                list(a.stream(running))
            assert info.value.code == ErrorCode.CANCELLED
        assert runner.runs == 1  # the queued job never ran
    finally:
        server.stop()


def test_out_of_memory_and_internal_errors_are_typed_and_survived(caplog: pytest.LogCaptureFixture) -> None:
    runner = FakeRunner(steps=2)
    server = start_server(runner)
    try:
        with Client(server.endpoint) as client:
            for exc in (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                        MemoryError()):
                runner.fail = exc
                with pytest.raises(ProtocolError) as info:
                    client.edit(fake_edit())
                assert info.value.code == ErrorCode.OUT_OF_MEMORY and "--device cpu" in info.value.message
            runner.fail = RuntimeError("boom")
            with pytest.raises(ProtocolError) as info:
                client.edit(fake_edit())
            assert info.value.code == ErrorCode.INTERNAL and info.value.trace_id
            assert info.value.trace_id in info.value.message
            assert any(info.value.trace_id in r.getMessage() and r.exc_info for r in caplog.records)
            runner.fail = None
            assert client.edit(fake_edit()).steps == 2  # and the next edit works
    finally:
        server.stop()


def test_timeouts_are_about_inactivity_not_total_time() -> None:
    server = start_server(FakeRunner(steps=25, step_s=0.1), heartbeat_s=0.2)
    try:
        with Client(server.endpoint, timeout_s=1.0) as client:  # the job takes ~2.5 s > timeout_s
            result = client.edit(fake_edit())
            assert result.steps == 25
    finally:
        server.stop()


def test_client_reports_a_server_that_is_not_there() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"tcp://127.0.0.1:{port}", connect_timeout_s=0.3, retries=2) as client:
        with pytest.raises(ProtocolError) as info:
            client.hello()
    assert info.value.code == ErrorCode.UNAVAILABLE
    assert "draggan-backend serve" in info.value.message and str(port) in info.value.message


def test_load_eight_concurrent_clients_none_lost_or_hung(tiny_model: Path, photo: P.Image) -> None:
    server = start_server(real_runner(tiny_model), queue_limit=4)
    outcomes: dict[int, tuple[str, float, bool]] = {}
    barrier = threading.Barrier(8)

    def one_client(index: int) -> None:
        queued = False

        def on_progress(progress: P.Progress) -> None:
            nonlocal queued
            queued = queued or progress.phase == "queued"

        with Client(server.endpoint, timeout_s=120) as client:
            client.hello()
            barrier.wait(30)
            started = time.monotonic()
            try:
                client.edit(edit(image=photo, params=P.EditParams(max_steps=3, r1=10.0, r2=20.0)),
                            on_progress=on_progress)
                outcome = "served"
            except ProtocolError as exc:
                outcome = exc.code
            outcomes[index] = (outcome, time.monotonic() - started, queued)

    threads = [threading.Thread(target=one_client, args=(i,), daemon=True) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a client hung"
        counts = collections.Counter(o for o, _, _ in outcomes.values())
        print(f"\nload: 8 clients, queue limit 4: {dict(counts)}; "
              f"{sum(q for _, _, q in outcomes.values())} saw 'queued' progress")
        for index, (outcome, seconds, queued) in sorted(outcomes.items()):
            print(f"  client {index}: {outcome:<7} {seconds:6.2f} s{'  (queued first)' if queued else ''}")
        assert len(outcomes) == 8
        assert set(counts) <= {"served", ErrorCode.BUSY}
        assert counts["served"] >= 4  # at least a full queue's worth is always served
        assert sum(q for o, _, q in outcomes.values() if o == "served") >= 1
        wait_until(lambda: server.jobs == {}, what="the queue to drain")
    finally:
        server.stop()


def test_client_cancel_reaches_a_silent_job() -> None:
    """should_cancel is polled while the server says nothing (e.g. loading a model)."""
    server = start_server(FakeRunner(steps=50, step_s=0.5))
    try:
        with Client(server.endpoint) as client:
            with pytest.raises(ProtocolError) as info:
                client.edit(fake_edit(), should_cancel=lambda: True)
            assert info.value.code == ErrorCode.CANCELLED
        wait_until(lambda: len(server.records) == 1, what="the job record")
        assert server.records[0].reason == "client" and server.records[0].steps <= 1
    finally:
        server.stop()


def test_a_new_run_with_the_same_token_is_not_blocked_by_the_killed_runs_job() -> None:
    """The plug-in killed mid-edit and run again: the old connection closes, so its job is cancelled
    at once (socket monitor), and the new run (same identity token, new connection) is served."""
    runner = FakeRunner(steps=400, step_s=0.01)
    server = start_server(runner)
    token = new_token()
    try:
        old_run = Client(server.endpoint, token=token)
        old_id = old_run.submit(fake_edit())
        wait_until(runner.started.is_set, what="the old run's job")
        runner.steps = 2
        old_run.close()  # the process is killed
        with Client(server.endpoint, token=token) as new_run:
            assert new_run.edit(fake_edit()).steps == 2  # not 'busy'
        outcomes = {r.request_id: (r.outcome, r.reason) for r in server.records}
        assert outcomes[old_id] == (ErrorCode.CANCELLED, "disconnected")
    finally:
        server.stop()
