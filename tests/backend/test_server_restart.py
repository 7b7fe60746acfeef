"""The real `draggan-backend serve` process: killed and restarted mid-job, then SIGTERM mid-job."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from draggan_wire import protocol as P
from draggan_wire.client import Client
from draggan_wire.protocol import ErrorCode, ProtocolError

from .conftest import PYTHON, REPO, edit, subprocess_env

# tiny lr: these jobs must still be running when the test interrupts them
LONG = P.EditParams(max_steps=5000, lr=1e-6, r1=10.0, r2=20.0, preview_every=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int, tiny_model: Path, cache_dir: Path, log: Path) -> subprocess.Popen:
    # stderr to a file: a pipe nobody reads could fill up and block the server
    # token mode: this test is about restarts, not keys (test_identities.py covers the default)
    return subprocess.Popen([PYTHON, "-m", "backend.cli", "serve", "--bind", f"tcp://127.0.0.1:{port}",
                             "--insecure-tokens",
                             "--model", f"tiny={tiny_model}", "--device", "cpu", "--heartbeat", "1.0",
                             "--inversion-steps", "1", "--cache-dir", str(cache_dir)],
                            cwd=REPO, env=subprocess_env(), stderr=log.open("w"), text=True)


def until_dragging(client: Client, request_id: str) -> None:
    for message in client.stream(request_id):
        if isinstance(message, P.Progress) and message.phase == "drag":
            return
    raise AssertionError("the edit finished before it could be interrupted")


@pytest.mark.slow
def test_server_killed_and_restarted_mid_job_then_sigterm_mid_job(tiny_model: Path, photo: P.Image,
                                                                  tmp_path: Path) -> None:
    port = free_port()
    first = serve(port, tiny_model, tmp_path, tmp_path / "first.log")
    second: subprocess.Popen | None = None
    try:
        # generous handshake retries: the process needs a few seconds to import torch
        with Client(f"tcp://127.0.0.1:{port}", timeout_s=90, connect_timeout_s=2.0, retries=60) as client:
            instance = client.hello().instance
            request_id = client.submit(edit(image=photo, params=LONG))
            until_dragging(client, request_id)
            first.kill()
            first.wait(10)
            second = serve(port, tiny_model, tmp_path, tmp_path / "second.log")
            with pytest.raises(ProtocolError) as info:
                for _ in client.stream(request_id):
                    pass
            # the restarted server answers the heartbeat with a new instance id
            assert info.value.code == ErrorCode.UNAVAILABLE and "restarted" in info.value.message
            # a new edit on the new server works
            assert client.hello().instance != instance
            result = client.edit(edit(image=photo))
            assert result.steps == edit().params.max_steps
            # SIGTERM mid-job: the client is told, the process exits cleanly
            request_id = client.submit(edit(image=photo, params=LONG))
            until_dragging(client, request_id)
            second.send_signal(signal.SIGTERM)
            with pytest.raises(ProtocolError) as info:
                for _ in client.stream(request_id):
                    pass
            assert info.value.code == ErrorCode.SHUTTING_DOWN and "shutting down" in info.value.message
        assert second.wait(30) == 0
        log = (tmp_path / "second.log").read_text()
        assert "signal 15: stopping" in log and "stopped" in log
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
