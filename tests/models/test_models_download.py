"""Model downloads against a real HTTP server on 127.0.0.1: success, resume, checksum, errors."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backend import models

PAYLOAD = bytes(range(256)) * 4096 * 3          # 3 MiB: several 1 MiB chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _State:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []   # (path, Range header)
        self.cuts_left = 0          # responses to cut halfway (after sending headers + half)
        self.ignore_range = False
        self.errors_left = 0        # /flaky answers 500 this many times first
        self.lock = threading.Lock()


@pytest.fixture()
def server() -> Iterator[tuple[str, _State]]:
    state = _State()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:   # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.path, rng))
            if self.path == "/missing.pkl":
                self.send_error(404, "Not Found")
                return
            if self.path == "/broken.pkl":
                self.send_error(500, "Internal Server Error")
                return
            if self.path == "/flaky.pkl":
                with state.lock:
                    fail = state.errors_left > 0
                    state.errors_left -= 1
                if fail:
                    self.send_error(503, "Service Unavailable")
                    return
            start = 0
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
            body = PAYLOAD[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with state.lock:
                cut = state.cuts_left > 0
                state.cuts_left -= 1
            if cut:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _dl(name: str, folder: Path, url: str, **kw: object) -> Path:
    lines: list[str] = []
    kw.setdefault("retries", 2)
    path = models.download_model(name, folder=folder, url=url, out=lines.append,
                                 progress_stream=io.StringIO(), backoff_s=0.01, timeout_s=10, **kw)
    return path


def test_download_success_records_hash_and_prints_licence(server, tmp_path: Path) -> None:
    base, state = server
    lines: list[str] = []
    progress = io.StringIO()
    path = models.download_model("ffhq-512", folder=tmp_path, url=base + "/ffhq.pkl", out=lines.append,
                                 progress_stream=progress, backoff_s=0.01)
    assert path == tmp_path / "stylegan2-ffhq-512x512.pkl"
    assert path.read_bytes() == PAYLOAD
    assert lines[1].startswith("licence: NVIDIA Source Code License-NC")
    assert any(line.startswith("downloading ") for line in lines[:4])   # licence comes before the download
    assert "3.1/3.1 MB 100%" in progress.getvalue()
    assert models.expected_sha256("ffhq-512", tmp_path) == PAYLOAD_SHA
    assert not list(tmp_path.glob("*.part"))
    assert models.resolve_model("ffhq-512", folder=tmp_path, verify=True) == path
    info = {m.name: m for m in models.available_models(folder=tmp_path)}["ffhq-512"]
    assert info.installed and info.path == path
    # A second call does not download again.
    n = len(state.requests)
    models.download_model("ffhq-512", folder=tmp_path, url=base + "/ffhq.pkl", out=lines.append)
    assert len(state.requests) == n and lines[-1].startswith("ffhq-512 is already installed")


def test_resume_after_cut_connection(server, tmp_path: Path) -> None:
    base, state = server
    state.cuts_left = 1
    path = _dl("lions-512", tmp_path, base + "/lions.pkl")
    assert path.read_bytes() == PAYLOAD
    ranges = [r for _p, r in state.requests]
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(PAYLOAD) // 2}-"      # resumed where the cut left it
    assert len(ranges) == 2


def test_cut_without_retries_keeps_part_then_resumes_next_call(server, tmp_path: Path) -> None:
    base, state = server
    state.cuts_left = 1
    with pytest.raises(models.DownloadError, match=r"after 1 attempt.*connection lost.*run the same command"):
        _dl("horses-256", tmp_path, base + "/horses.pkl", retries=0)
    final = tmp_path / models.REGISTRY["horses-256"].filename
    part = final.with_name(final.name + models.PART_SUFFIX)
    assert not final.exists() and part.stat().st_size == len(PAYLOAD) // 2
    assert not {m.name: m for m in models.available_models(folder=tmp_path)}["horses-256"].installed
    with pytest.raises(models.UnknownModelError, match="not installed"):
        models.resolve_model("horses-256", folder=tmp_path)
    assert _dl("horses-256", tmp_path, base + "/horses.pkl").read_bytes() == PAYLOAD
    assert state.requests[-1][1] == f"bytes={len(PAYLOAD) // 2}-"
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path: Path) -> None:
    base, state = server
    state.cuts_left, state.ignore_range = 1, True
    assert _dl("dogs-1024", tmp_path, base + "/dogs.pkl").read_bytes() == PAYLOAD


def test_checksum_mismatch_installs_nothing(server, tmp_path: Path) -> None:
    base, _state = server
    # Trust on first use: a hash recorded earlier for this name that the server's file no longer has.
    models._record(tmp_path, "elephants-512", "stylegan2_elephants_512_pytorch.pkl", "0" * 64, 1, "earlier")
    with pytest.raises(models.ChecksumMismatchError, match=f"has sha256 {PAYLOAD_SHA}, expected 0000"):
        _dl("elephants-512", tmp_path, base + "/elephants.pkl")
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]   # no model file, no .part


@pytest.mark.parametrize(("path", "pattern"), [
    ("/missing.pkl", r"HTTP 404 Not Found \(the file is not there"),
    ("/broken.pkl", r"failed after 3 attempt\(s\): HTTP 500"),
])
def test_server_errors_fail_clearly(server, tmp_path: Path, path: str, pattern: str) -> None:
    base, state = server
    with pytest.raises(models.DownloadError, match=pattern):
        _dl("afhqcat-512", tmp_path, base + path)
    assert list(tmp_path.iterdir()) == []
    assert len(state.requests) == (1 if "404" in pattern else 3)   # 4xx is not retried, 5xx is (bounded)


def test_transient_server_error_is_retried(server, tmp_path: Path) -> None:
    base, state = server
    state.errors_left = 1
    assert _dl("cat-256", tmp_path, base + "/flaky.pkl").read_bytes() == PAYLOAD


def test_unreachable_server(tmp_path: Path) -> None:
    import socket
    with socket.socket() as s:      # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(models.DownloadError, match="cannot connect"):
        _dl("car-512", tmp_path, f"http://127.0.0.1:{port}/car.pkl", retries=1)


def test_cancel_keeps_part(server, tmp_path: Path) -> None:
    base, _state = server
    calls = iter(range(100))
    with pytest.raises(models.DownloadCancelled, match="kept"):
        _dl("ffhq-512", tmp_path, base + "/ffhq.pkl", should_cancel=lambda: next(calls) >= 1)
    assert (tmp_path / "stylegan2-ffhq-512x512.pkl.part").stat().st_size == models.CHUNK_BYTES
    assert _dl("ffhq-512", tmp_path, base + "/ffhq.pkl").read_bytes() == PAYLOAD


def test_manual_and_embedded_are_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(models.UnknownModelError, match="drive.google.com.*--model-file PATH human-512"):
        models.download_model("human-512", folder=tmp_path, out=None)
    with pytest.raises(models.UnknownModelError, match="unknown model 'nope'"):
        models.download_model("nope", folder=tmp_path, out=None)
