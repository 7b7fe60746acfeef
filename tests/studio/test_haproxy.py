"""A studio setup: two `draggan-backend serve` replicas behind the real HAProxy (deploy/haproxy/haproxy.cfg,
used verbatim), on loopback, with CURVE end to end and the same keys on both replicas.

Each client connects from its own loopback source address (127.0.0.N), so the balancer's
source-address stickiness sees several "machines"."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend import keys as keys_mod
from draggan_wire import protocol as P
from draggan_wire.client import Client, ClientKeys
from draggan_wire.protocol import ErrorCode, ProtocolError

from ..backend.conftest import FAST, PYTHON, REPO, make_tiny_generator, subprocess_env

CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
CHECK = REPO / "deploy" / "haproxy" / "draggan-check"
MANIFESTS = REPO / "deploy" / "kubernetes" / "draggan.yaml"
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
ARTISTS = range(2, 16)  # 127.0.0.2 .. 127.0.0.15: one artist machine each
LONG = P.EditParams(max_steps=5000, lr=1e-6, r1=10.0, r2=20.0, preview_every=0)  # runs until cut (tiny lr)


def require_haproxy() -> str:
    """The haproxy binary; a skip when it is missing, a failure under CI=true (scripts/check.sh
    installs it there, so a missing one is a broken install step, not a reason to skip)."""
    if HAPROXY is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("haproxy is not installed (scripts/check.sh installs it with apt)", pytrace=False)
        pytest.skip("haproxy is not installed (apt-get install haproxy); the studio recipe needs the real one")
    return HAPROXY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Studio:
    """Two replicas + HAProxy, all real processes, in ``tmp``; the replicas share one keys folder
    (the same server key pair and allow-list, as docs/studio.md distributes them)."""

    def __init__(self, tmp: Path, model: Path) -> None:
        self.tmp, self.model = tmp, model
        self.keys_dir = tmp / "keys"
        keys_mod.create_pair(self.keys_dir, "server")
        # one key pair per artist machine (a CURVE key owns its jobs and sessions), all allowed in;
        # "intruder" is made but never allowed
        for name in [f"artist{n}" for n in ARTISTS] + ["haproxy-check"]:
            public, _secret = keys_mod.create_pair(self.keys_dir, name)
            keys_mod.allow(self.keys_dir, public, name)
        keys_mod.create_pair(self.keys_dir, "intruder")
        # The health check, laid out as docs/studio.md installs it: the script, and beside it keys/
        # with only the replicas' public key and the balancer's own client pair.
        check_dir = tmp / "check"
        (check_dir / "keys").mkdir(parents=True, mode=0o700)
        shutil.copy(CHECK, check_dir / "draggan-check")
        shutil.copy(self.keys_dir / "server.key", check_dir / "keys" / "server.key")
        shutil.copy(self.keys_dir / "haproxy-check.key_secret", check_dir / "keys" / "client.key_secret")
        self.check = check_dir / "draggan-check"
        # HAProxy runs the check with nothing but "external-check path" in its environment; this
        # stands in for the venv's draggan-backend script and runs this checkout with this Python.
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "draggan-backend").write_text(
            f"#!/bin/sh\nPYTHONPATH='{REPO}' exec '{PYTHON}' -m backend.cli \"$@\"\n")
        (bin_dir / "draggan-backend").chmod(0o755)
        self.check_path = f"{bin_dir}:/usr/bin:/bin"
        self.ports = [free_port(), free_port()]
        self.listen = free_port()
        self.replicas: list[subprocess.Popen | None] = [None, None]
        self.haproxy: subprocess.Popen | None = None
        for i in range(2):
            self.start_replica(i)
        # HAProxy counts a server up until its checks say otherwise: start it once both answer
        self.wait_healthy(0, 90)
        self.wait_healthy(1, 90)
        env = dict(os.environ, DRAGGAN_LISTEN=f"127.0.0.1:{self.listen}",
                   DRAGGAN_REPLICA_0=f"127.0.0.1:{self.ports[0]}", DRAGGAN_REPLICA_1=f"127.0.0.1:{self.ports[1]}",
                   DRAGGAN_HAPROXY_SOCKET=str(tmp / "haproxy.sock"), DRAGGAN_CHECK_COMMAND=str(self.check),
                   DRAGGAN_CHECK_PATH=self.check_path)
        haproxy = require_haproxy()
        checked = subprocess.run([haproxy, "-c", "-f", str(CFG)], env=env, capture_output=True, text=True,
                                 timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.haproxy_log = open(tmp / "haproxy.log", "w")
        self.haproxy = subprocess.Popen([haproxy, "-db", "-f", str(CFG)], env=env, stdout=self.haproxy_log,
                                        stderr=subprocess.STDOUT)
        self.keys = ClientKeys.from_dir(str(self.keys_dir), client_name="haproxy-check")

    def start_replica(self, i: int) -> None:
        log = open(self.tmp / f"replica{i}.log", "a")
        self.replicas[i] = subprocess.Popen(
            [PYTHON, "-m", "backend.cli", "serve", "--bind", f"tcp://127.0.0.1:{self.ports[i]}", "--curve",
             "--keys-dir", str(self.keys_dir), "--model", f"tiny={self.model}", "--device", "cpu",
             "--inversion-steps", "1", "--cache-dir", str(self.tmp / f"cache{i}"), "--no-preload",
             # one edit may wait behind the running one: a third gets 'busy' (tested below)
             "--queue", "1", "--heartbeat", "1.0"],
            cwd=REPO, env=dict(subprocess_env(), DRAGGAN_MODELS_DIR=str(self.tmp / "no-models")),
            stdout=subprocess.DEVNULL, stderr=log)

    def endpoint(self, source: int) -> str:
        # ZeroMQ's "source;destination" form: this client connects from 127.0.0.<source>
        return f"tcp://127.0.0.{source}:0;127.0.0.1:{self.listen}"

    def client(self, source: int, name: str = "", **kwargs: Any) -> Client:
        """A client at 127.0.0.<source> through the balancer, with that artist's key (or ``name``'s)."""
        kwargs.setdefault("timeout_s", 30)
        kwargs.setdefault("connect_timeout_s", 3.0)
        keys = ClientKeys.from_dir(str(self.keys_dir), client_name=name or f"artist{source}")
        return Client(self.endpoint(source), keys=keys, client_name=f"studio-{source}", **kwargs)

    def replica_instance(self, i: int) -> str:
        with Client(f"tcp://127.0.0.1:{self.ports[i]}", keys=self.keys, timeout_s=10) as c:
            return c.hello().instance

    def status(self, i: int) -> int:
        """Exit status of the health check, run as HAProxy runs it (its arguments, a bare environment)."""
        return subprocess.run([str(self.check), "NOT_USED", "NOT_USED", "127.0.0.1", str(self.ports[i])],
                              env={"PATH": self.check_path}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=30).returncode

    def wait_healthy(self, i: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.status(i) != 0:
            proc = self.replicas[i]
            assert proc is not None and proc.poll() is None, (self.tmp / f"replica{i}.log").read_text()
            assert time.monotonic() < deadline, f"replica {i} never answered"
            time.sleep(0.3)

    def servers_up(self) -> list[str]:
        """Names of the replicas HAProxy has in its pool now (runtime API)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.tmp / "haproxy.sock"))
            s.sendall(b"show servers state draggan_replicas\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        up = []
        for line in data.decode().splitlines():
            fields = line.split()
            # be_id be_name srv_id srv_name srv_addr srv_op_state ... (2 = running)
            if len(fields) > 5 and fields[1] == "draggan_replicas" and fields[5] == "2":
                up.append(fields[3])
        return up

    def wait_pool(self, expected: set[str], timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if set(self.servers_up()) == expected:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"pool never became {expected}: {self.servers_up()}\n"
                             + (self.tmp / "haproxy.log").read_text()[-2000:])

    def close(self) -> None:
        for proc in [self.haproxy, *self.replicas]:
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a test may have left one stopped
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [self.haproxy, *self.replicas]:
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.haproxy is not None:
            self.haproxy_log.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    require_haproxy()
    tmp = tmp_path_factory.mktemp("studio")
    model = make_tiny_generator(tmp / "tiny.pt")
    st = Studio(tmp, model)
    try:
        st.wait_pool({"gpu0", "gpu1"})
        yield st
    finally:
        st.close()


@pytest.fixture(scope="module")
def photo(studio: Studio) -> P.Image:
    """A 32x32 picture the tiny generator made (so the edit is in its domain)."""
    import numpy as np
    import torch

    import stylegan2

    G = stylegan2.load_generator(studio.model)
    with torch.no_grad():
        img = G.synthesis(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3))),
                          noise_mode="const")
    pixels = (img[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return P.Image(32, 32, 3, np.ascontiguousarray(pixels).tobytes())


def edit_request(photo: P.Image, params: P.EditParams = FAST) -> P.Edit:
    return P.Edit(model="tiny", handles=[(10.0, 12.0)], targets=[(16.0, 12.0)], image=photo, params=params)


def on_replicas(studio: Studio, sources: range) -> dict[int, int]:
    """For each replica (0, 1), the first artist address in ``sources`` that the balancer sends
    there, read from the welcome's instance id (each replica process has its own). The
    connections stay open while the next one is made, so leastconn spreads them."""
    instances = {studio.replica_instance(0): 0, studio.replica_instance(1): 1}
    found: dict[int, int] = {}
    opened = []
    try:
        for source in sources:
            client = studio.client(source)
            opened.append(client)
            found.setdefault(instances[client.hello().instance], source)
            if len(found) == 2:
                return found
    finally:
        for client in opened:
            client.close()
    raise AssertionError(f"the balancer sent every new address to one replica: {found}")


def until_dragging(client: Client, request_id: str) -> None:
    for message in client.stream(request_id):
        if isinstance(message, P.Progress) and message.phase == "drag" and message.step >= 1:
            return
    raise AssertionError("the edit finished before it could be interrupted")


def test_four_clients_get_results_and_drag_again_reaches_the_same_replica(studio: Studio, photo: P.Image) -> None:
    instances = {studio.replica_instance(0): 0, studio.replica_instance(1): 1}
    # four artist machines connect (and stay connected): leastconn gives each replica two
    clients = {source: studio.client(source) for source in (2, 3, 4, 5)}
    try:
        served_by = {source: instances[c.hello().instance] for source, c in clients.items()}
        assert sorted(served_by.values()) == [0, 0, 1, 1], served_by
        assert all(c.welcome is not None and c.welcome.auth == "curve" for c in clients.values())
        results: dict[int, P.Result] = {}
        failures: list[BaseException] = []

        def one_artist(source: int) -> None:
            try:
                # two artists per replica and a queue of 1 (for the busy test below): when both
                # arrive before the first edit has started, the second is told 'busy' and, as the
                # message asks, tries again in a moment
                for _attempt in range(40):
                    try:
                        results[source] = clients[source].edit(edit_request(photo))
                        return
                    except ProtocolError as exc:
                        if exc.code != ErrorCode.BUSY:
                            raise
                        time.sleep(0.5)
                raise AssertionError(f"artist {source} was told 'busy' for 20 s")
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=one_artist, args=(source,)) for source in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, failures
        assert sorted(results) == [2, 3, 4, 5]
        for result in results.values():
            assert (result.image.width, result.image.height) == (32, 32) and result.steps == FAST.max_steps
            assert result.session_id and result.session_id != "none"
    finally:
        for c in clients.values():
            c.close()
    for source, result in results.items():
        # "drag again" in a later plug-in run: a new connection from the same machine. Sessions
        # live only in the replica that made them, so this succeeds only on that replica...
        with studio.client(source) as client:
            assert instances[client.hello().instance] == served_by[source]
            again = client.continue_(P.Continue(session_id=result.session_id, handles=result.points,
                                                targets=[(18.0, 12.0)], params=FAST))
            assert again.session_id == result.session_id and again.steps == FAST.max_steps
        # ...as the other replica shows: it does not know the session (same key, same owner)
        other = 1 - served_by[source]
        artist = ClientKeys.from_dir(str(studio.keys_dir), client_name=f"artist{source}")
        with Client(f"tcp://127.0.0.1:{studio.ports[other]}", keys=artist, timeout_s=30) as direct:
            with pytest.raises(ProtocolError) as info:
                direct.continue_(P.Continue(session_id=result.session_id, handles=result.points,
                                            targets=[(18.0, 12.0)], params=FAST))
            assert info.value.code == ErrorCode.UNKNOWN_SESSION


def test_curve_runs_end_to_end_through_the_balancer(studio: Studio) -> None:
    # both replicas hold the same server key: a client pinning it reaches either (above); here a
    # key not on the shared allow-list, a wrong pinned server key and no keys at all are refused by
    # the replica behind HAProxy (which only forwards bytes), each with its own clear message
    quick = dict(timeout_s=5, connect_timeout_s=1.5, retries=1)
    with studio.client(20, name="intruder", **quick) as intruder, pytest.raises(ProtocolError) as refused:
        intruder.hello()
    assert refused.value.code == ErrorCode.AUTH and "allow-list" in refused.value.message
    artist = ClientKeys.from_dir(str(studio.keys_dir), client_name="artist2")
    wrong_server = ClientKeys(artist.client_public, artist.client_public, artist.client_secret)
    with Client(studio.endpoint(21), keys=wrong_server, **quick) as pinned, pytest.raises(ProtocolError) as bad:
        pinned.hello()
    assert bad.value.code == ErrorCode.AUTH and "server.key" in bad.value.message
    with Client(studio.endpoint(22), **quick) as plain, pytest.raises(ProtocolError) as none:
        plain.hello()
    assert none.value.code == ErrorCode.AUTH and "requires CURVE keys" in none.value.message
    # the replicas started with the same server key (their banners print it)
    banners = [(studio.tmp / f"replica{i}.log").read_text() for i in (0, 1)]
    server_key = studio.keys.server_public.decode()
    assert all(f"CURVE, server key {server_key}" in banner for banner in banners)


def test_a_replica_killed_mid_edit_fails_its_clients_clearly_others_carry_on_and_it_rejoins(
        studio: Studio, photo: P.Image) -> None:
    found = on_replicas(studio, range(6, 12))
    victim, survivor = 0, 1
    survivor_instance = studio.replica_instance(survivor)
    with studio.client(found[victim]) as doomed, studio.client(found[survivor]) as other:
        kept = doomed.edit(edit_request(photo))          # a session on the victim, lost with it
        other_session = other.edit(edit_request(photo))  # a session on the survivor
        doomed_job = doomed.submit(edit_request(photo, LONG))
        until_dragging(doomed, doomed_job)
        other_job = other.submit(edit_request(photo, LONG))
        until_dragging(other, other_job)
        # the victim is busy: one edit may wait behind the running one, the next is told 'busy'
        with studio.client(found[victim]) as waiting, studio.client(found[victim]) as third:
            waiting_job = waiting.submit(edit_request(photo))
            assert next(waiting.stream(waiting_job)).phase == "queued"
            with pytest.raises(ProtocolError) as busy:
                third.edit(edit_request(photo))
            assert busy.value.code == ErrorCode.BUSY and "busy" in busy.value.message
            waiting.cancel(waiting_job)
        proc = studio.replicas[victim]
        assert proc is not None
        proc.kill()
        proc.wait(timeout=10)
        # the victim's client is told its edit was lost (ZeroMQ reconnected it through the balancer
        # to the survivor, whose heartbeat answer carries another instance id)
        with pytest.raises(ProtocolError) as lost:
            for _ in doomed.stream(doomed_job):
                pass
        assert lost.value.code == ErrorCode.UNAVAILABLE and "run the edit again" in lost.value.message
        # the survivor's client goes on dragging through the kill, on the same connection
        steps: list[int] = []
        for message in other.stream(other_job):
            if isinstance(message, P.Progress) and message.phase == "drag":
                steps.append(message.step)
            if len(steps) >= 3:
                break
        assert steps == sorted(steps) and len(steps) == 3
        other.cancel(other_job)
        with pytest.raises(ProtocolError) as cancelled:
            for _ in other.stream(other_job):
                pass
        assert cancelled.value.code == ErrorCode.CANCELLED
        assert other.hello().instance == survivor_instance
        again = other.continue_(P.Continue(session_id=other_session.session_id, handles=other_session.points,
                                           targets=[(18.0, 12.0)], params=FAST))
        assert again.session_id == other_session.session_id
    # the dead replica leaves the pool within seconds (a check every 4 s, out after 2 failures)
    studio.wait_pool({f"gpu{survivor}"}, timeout=30)
    assert studio.status(victim) != 0 and studio.status(survivor) == 0
    # the victim's artist runs the filter again: served by the survivor, which does not hold the old
    # session (the plug-in then inverts anew and says why), and a fresh edit works
    with studio.client(found[victim]) as client:
        assert client.hello().instance == survivor_instance
        with pytest.raises(ProtocolError) as gone:
            client.continue_(P.Continue(session_id=kept.session_id, handles=kept.points,
                                        targets=[(18.0, 12.0)], params=FAST))
        assert gone.value.code == ErrorCode.UNKNOWN_SESSION
        assert client.edit(edit_request(photo)).steps == FAST.max_steps
    # the replica restarts and the pool recovers: new artists reach it again
    studio.start_replica(victim)
    studio.wait_pool({"gpu0", "gpu1"}, timeout=60)
    reborn = studio.replica_instance(victim)
    found = on_replicas(studio, range(12, 16))
    with studio.client(found[victim]) as client:
        assert client.hello().instance == reborn
        assert client.edit(edit_request(photo)).steps == FAST.max_steps


def test_the_docs_point_at_the_tested_recipe() -> None:
    """docs/studio.md presents the files this module runs (not a copy that could drift), and the
    Kubernetes manifests carry the same recipe (parsed when PyYAML happens to be installed)."""
    doc = (REPO / "docs" / "studio.md").read_text()
    for path in (CFG, CHECK, MANIFESTS):
        assert str(path.relative_to(REPO)) in doc, f"docs/studio.md does not name {path.relative_to(REPO)}"
    assert "[docs/studio.md](docs/studio.md)" in (REPO / "README.md").read_text()
    text = MANIFESTS.read_text()
    assert "\t" not in text
    assert "sessionAffinity: ClientIP" in text and "readinessProbe" in text
    try:
        import yaml  # not a dependency: used only when installed
    except ImportError:
        return
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = [d["kind"] for d in docs]
    assert "Deployment" in kinds and "Service" in kinds
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["draggan-backend", "status"] and "--keys-dir" in probe
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
