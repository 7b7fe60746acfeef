"""Identities must cost something: a second local process must not lock everyone else out.

Real ZeroMQ sockets on 127.0.0.1 and a real server; the hostile side is a second process
(testkit/hostile.py) or, for another OS user, a forked child that drops to a throwaway user.

* The default `draggan-backend serve` uses CURVE on loopback with this user's keys: a process of
  another OS user reaches the port but gets no `welcome` (with no keys, with keys of its own).
* With identities that cost nothing (token mode, or 20 allowed CURVE keys in a studio), a process
  holding 20 of them fills the stores, the queue and the peer limit, and still an honest client's
  fresh edit succeeds; an honest client's session survives 1,000 minted identities and continues.
* `draggan-backend status` shows how full the stores, the queue and the connections are.
* Header parsing: duplicate keys, `hello` with protocol 0, lone surrogates: `bad_request`.
* A 10,000-message fuzz run from a second process: every message answered with a typed error.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from backend import keys as keys_mod
from backend.cli import main
from backend.server import Server
from draggan_wire import protocol as P
from draggan_wire.client import Client, ClientKeys, read_public_key, read_secret_key
from draggan_wire.protocol import ErrorCode, ProtocolError

from .conftest import PYTHON, REPO, SIDE, StoreRunner, start_server, subprocess_env, wait_until

TOKEN = "cd" * 32


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def quick_edit(steps: int = 1) -> P.Edit:
    return P.Edit(model="fake", handles=[(1.0, 1.0)], targets=[(2.0, 2.0)],
                  image=P.Image(SIDE, SIDE, 3, os.urandom(SIDE * SIDE * 3)),
                  params=P.EditParams(max_steps=steps, r1=10.0, r2=20.0, preview_every=0))


def raw_reply(sock: zmq.Socket, frames: list[bytes]) -> P.Envelope:
    sock.send_multipart(frames)
    assert sock.poll(10_000), "no reply"
    return P.decode(sock.recv_multipart(), allowed=P.REPLY_TYPES)


# -- header parsing ----------------------------------------------------------------------------


def test_duplicate_keys_protocol_below_one_and_lone_surrogates_are_bad_requests(
        tiny_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each case from a raw DEALER gets `bad_request` naming where; nothing of it reaches the log;
    the same connection's proper hello is welcomed afterwards."""
    server = start_server(StoreRunner(tiny_model))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    v = P.PROTOCOL_VERSION
    cases = {
        # the last "type" would win in json.loads: a ping that a second reader sees as a hello
        "duplicate type": (f'{{"v":{v},"type":"hello","id":"a1","token":"{TOKEN}","fields":{{}},"type":"ping"}}',
                           "header"),
        "duplicate token": (f'{{"v":{v},"type":"ping","id":"a2","token":"{TOKEN}","token":"{"ef" * 32}",'
                            '"fields":{}}', "header"),
        "duplicate field": (f'{{"v":{v},"type":"hello","id":"a3","token":"{TOKEN}","fields":{{"client":"a",'
                            '"client":"b","protocol":1}}', "header"),
        "hello protocol 0": (json.dumps({"v": v, "type": "hello", "id": "a4", "token": TOKEN,
                                         "fields": {"client": "x", "protocol": 0}}), "fields.protocol"),
        "hello protocol -5": (json.dumps({"v": v, "type": "hello", "id": "a5", "token": TOKEN,
                                          "fields": {"client": "x", "protocol": -5}}), "fields.protocol"),
        "surrogate client": (f'{{"v":{v},"type":"hello","id":"a6","token":"{TOKEN}",'
                             '"fields":{"client":"gimp\\ud800","protocol":1}}', "fields.client"),
        "surrogate model": (f'{{"v":{v},"type":"edit","id":"a7","token":"{TOKEN}","fields":{{"model":"\\udfff",'
                            '"handles":[[1,1]],"targets":[[2,2]],"image_id":"abc"}}', "fields.model"),
        "surrogate pair half": (f'{{"v":{v},"type":"hello","id":"a8","token":"{TOKEN}",'
                                '"fields":{"client":"\\ud83d x","protocol":1}}', "fields.client"),
    }
    caplog.set_level(logging.DEBUG, logger="draggan.backend")
    try:
        for label, (text, field_name) in cases.items():
            env = raw_reply(sock, [text.encode()])
            assert isinstance(env.message, P.Error), label
            assert (env.message.code, env.message.field) == (ErrorCode.BAD_REQUEST, field_name), (label, env.message)
            if field_name == "header":
                assert "duplicate key" in env.message.message, env.message.message
        # a real surrogate pair (escaped) is one valid character, and protocol 1 is a protocol number
        ok = (f'{{"v":{v},"type":"hello","id":"ok","token":"{TOKEN}",'
              '"fields":{"client":"gimp \\ud83d\\ude00","protocol":1}}')
        assert isinstance(raw_reply(sock, [ok.encode()]).message, P.Welcome)
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert "\ud800" not in logged and "\udfff" not in logged and "gimp" not in logged
        assert server.stats["rejected:internal"] == 0
    finally:
        sock.close(0)
        server.stop()


def test_protocol_validation_alone() -> None:
    header = f'{{"v":{P.PROTOCOL_VERSION},"type":"ping","id":"r","token":"{TOKEN}","fields":{{}},"id":"s"}}'
    with pytest.raises(ProtocolError) as info:
        P.decode([header.encode()])
    assert info.value.code == ErrorCode.BAD_REQUEST and "duplicate key 'id'" in info.value.message
    assert P.peek_header(header.encode()) == ("", "")  # an ambiguous header names no request
    assert P.is_unicode_text("plain") and P.is_unicode_text("ü 😀") and not P.is_unicode_text("a\ud800")
    with pytest.raises(ProtocolError):
        P.decode(P.encode(P.Hello(client="x", protocol=0), "r", TOKEN))
    assert P.decode(P.encode(P.Hello(client="x", protocol=1), "r", TOKEN)).message.protocol == 1


# -- the hostile fuzz run ------------------------------------------------------------------------


def test_ten_thousand_malformed_messages_from_a_second_process_all_get_typed_errors(tiny_model: Path) -> None:
    server = start_server(StoreRunner(tiny_model))
    try:
        out = subprocess.run([PYTHON, "-m", "testkit.hostile", "fuzz", server.endpoint,
                              json.dumps({"count": 10_000})], cwd=REPO, env=subprocess_env(), capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"\nfuzz from a second process: {seen}")
        assert seen["sent"] >= 10_000 and seen["kinds"] == 21
        assert seen["no_reply"] == 0 and sum(seen["codes"].values()) == seen["sent"]
        # A rare mutation leaves a well-formed request naming a model, photo or session this server lacks
        assert set(seen["codes"]) <= {ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.UNKNOWN_TYPE,
                                      ErrorCode.VERSION_MISMATCH, ErrorCode.UNKNOWN_MODEL,
                                      ErrorCode.UNKNOWN_IMAGE, ErrorCode.UNKNOWN_SESSION}
        assert server.stats["rejected:internal"] == 0 and server.jobs == {}
        with Client(server.endpoint, timeout_s=30) as fresh:  # alive, and a fresh client edits
            assert fresh.hello().instance == server.instance
            assert fresh.edit(quick_edit()).steps == 1
    finally:
        server.stop()


# -- the default configuration against another OS user -------------------------------------------


@pytest.fixture()
def other_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway OS user (made with useradd, removed after). Needs root: skipped otherwise, failed
    under CI=true."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("useradd") is None:
        reason = "making a throwaway OS user needs root and useradd"
        if _ci():
            pytest.fail(reason + " (CI must run this test)", pytrace=False)
        pytest.skip(reason)
    name = f"dgprobe{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=60)


def probe_as(user: pwd.struct_passwd, endpoint: str, server_public: bytes, owner_keys_dir: Path) -> dict[str, Any]:
    """Fork, drop to ``user`` (setgroups, setgid, setuid) and try every way in that process has:
    no keys, a key pair of its own with the server's public key (which is not secret), the owner's
    keys folder, a plain TCP connection. Returns what it saw (JSON through a pipe).

    A fork of this interpreter rather than a new process: the test's Python lives under /root,
    which another user cannot execute; everything the child needs is imported already."""
    import encodings.idna  # noqa: F401 - imported lazily by socket and zmq: the child cannot read /root
    import ipaddress  # noqa: F401

    import zmq.utils.monitor  # noqa: F401

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            seen: dict[str, Any] = {"uid": os.getuid()}
            try:
                os.listdir(owner_keys_dir)
                seen["keys_dir"] = "readable"
            except PermissionError:
                seen["keys_dir"] = "permission denied"
            try:
                read_secret_key(str(owner_keys_dir / "client.key_secret"))
                seen["client_secret"] = "read"
            except ProtocolError as exc:
                seen["client_secret"] = exc.code
            host, port = endpoint[len("tcp://"):].rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5):
                seen["tcp"] = "connected"
            own_public, own_secret = zmq.curve_keypair()
            for label, client_keys in (("no keys", None),
                                       ("own keys", ClientKeys(server_public, own_public, own_secret))):
                try:
                    with Client(endpoint, keys=client_keys, connect_timeout_s=1.5, retries=2) as client:
                        seen[label] = f"welcome from {client.hello().instance}"
                except ProtocolError as exc:
                    seen[label] = f"{exc.code}: {exc.message}"
            os.write(write_end, json.dumps(seen).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, then the child exits
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], 1.0)
        if ready:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    else:
        os.kill(pid, 9)
    os.close(read_end)
    os.waitpid(pid, 0)
    return dict(json.loads(b"".join(chunks) or b'{"error": "no answer from the probe"}'))


def serve_cli(tmp_path: Path, tiny_model: Path, *extra: str) -> tuple[subprocess.Popen[str], str, Path]:
    from .test_server_restart import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / f"serve-{uuid.uuid4().hex[:6]}.log"
    proc = subprocess.Popen([PYTHON, "-m", "backend.cli", "serve", "--bind", address, *extra, "--model",
                             f"fake={tiny_model}", "--device", "cpu", "--no-cache", "--no-preload"],
                            cwd=REPO, env=subprocess_env(), stderr=log.open("w"), text=True)
    deadline = time.monotonic() + 120
    while "ready" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc, address, log


def test_default_serve_lets_no_process_of_another_os_user_in(other_user: pwd.struct_passwd, tiny_model: Path,
                                                              tmp_path: Path) -> None:
    """`draggan-backend serve` as it starts by default (loopback, keys made on first use in this
    user's config folder): the other user's process reaches the port but cannot read the keys and
    gets no welcome, with no keys or with a key pair of its own. This user's processes get in. The
    same probe against `serve --insecure-tokens` is welcomed: the keys are what keeps it out."""
    keys_dir = keys_mod.default_keys_dir()  # $DRAGGAN_CONFIG_DIR/keys: the tests' own config folder
    proc, address, log = serve_cli(tmp_path, tiny_model)
    try:
        banner = log.read_text()
        assert "auth     : CURVE, server key" in banner, banner
        assert (keys_dir / "server.key_secret").stat().st_mode & 0o077 == 0
        assert (keys_dir / "client.key_secret").stat().st_mode & 0o077 == 0
        server_public = read_public_key(str(keys_dir / "server.key"))
        seen = probe_as(other_user, address, server_public, keys_dir)
        print(f"\nanother OS user ({other_user.pw_name}) against the default serve: {seen}")
        assert seen.get("uid") == other_user.pw_uid, seen
        assert seen["tcp"] == "connected"  # the port is reachable ...
        assert seen["keys_dir"] == "permission denied" and seen["client_secret"] == ErrorCode.AUTH
        assert seen["no keys"].startswith("auth:") and "requires CURVE keys" in seen["no keys"]
        assert seen["own keys"].startswith("auth:") and "allow-list" in seen["own keys"]  # ... no welcome
        with Client(address, keys=ClientKeys.for_endpoint(address), connect_timeout_s=2.0) as mine:
            assert mine.hello().auth == "curve"  # this user's processes find the keys and get in
        status = subprocess.run([PYTHON, "-m", "backend.cli", "status", "--address", address], cwd=REPO,
                                env=subprocess_env(), capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "auth     : curve (CURVE keys" in status.stdout, status.stderr
    finally:
        proc.send_signal(2)
        proc.wait(30)
    tokens, address, log = serve_cli(tmp_path, tiny_model, "--insecure-tokens")
    try:
        assert "NONE (--insecure-tokens)" in log.read_text()
        seen = probe_as(other_user, address, server_public, keys_dir)
        print(f"the other user against serve --insecure-tokens: {seen}")
        assert seen["no keys"].startswith("welcome from")
        status = subprocess.run([PYTHON, "-m", "backend.cli", "status", "--address", address, "--insecure-tokens"],
                                cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "INSECURE identity tokens" in status.stdout, status.stderr
    finally:
        tokens.send_signal(2)
        tokens.wait(30)


# -- fair limits for identities that cost nothing ---------------------------------------------------


def curve_setup(tmp_path: Path, hostile: int) -> tuple[dict[str, Any], Path, dict[str, ClientKeys]]:
    """A studio's keys: the server pair, two honest artists and ``hostile`` keys of one hostile
    process, all allowed in. -> (server config, the hostile's keys folder, honest keys by name)."""
    keys_dir = tmp_path / "studio-keys"
    keys_mod.init(keys_dir, client=False)
    honest = {}
    for name in ("old", "new"):
        _public, secret = keys_mod.create_pair(keys_dir, name)
        keys_mod.allow(keys_dir, keys_dir / f"{name}.key", name)
        honest[name] = ClientKeys(read_public_key(str(keys_dir / "server.key")), read_public_key(str(secret)),
                                  read_secret_key(str(secret)))
    hostile_dir = tmp_path / "hostile-keys"
    hostile_dir.mkdir(mode=0o700)
    shutil.copy(keys_dir / "server.key", hostile_dir / "server.key")
    for i in range(hostile):
        public, secret = keys_mod.create_pair(hostile_dir, f"hostile{i}")
        keys_mod.allow(keys_dir, public, f"hostile{i}")
    server_keys = keys_mod.load_server_keys(keys_dir)
    config = dict(auth="curve", server_public_key=server_keys.public, server_secret_key=server_keys.secret,
                  allowed_clients_dir=str(server_keys.allowed_dir))
    return config, hostile_dir, honest


@pytest.mark.parametrize("mode", ["tokens", "curve-20-keys"])
def test_twenty_identities_filling_every_limit_do_not_stop_an_honest_client(mode: str, tiny_model: Path,
                                                                             tmp_path: Path) -> None:
    """A second process with 20 identities fills the photo and session stores, keeps the queue full
    (a long edit running, two identities with two waiting each, the rest resubmitting whenever
    refused or pushed out) and holds more connections than --max-peers. An honest client's fresh
    edit still succeeds. An honest client whose session was made before keeps it, and its continue
    succeeds while the process mints 1,000 more identities (new tokens; with CURVE, new connections
    of its keys in turn), each with a hello and an edit."""
    config: dict[str, Any] = {}
    hog_args: dict[str, Any] = {"count": 20, "edits": 4, "long_steps": 50}
    honest: dict[str, ClientKeys | None] = {"old": None, "new": None}
    if mode != "tokens":
        config, hostile_dir, curve_keys = curve_setup(tmp_path, 20)
        hog_args["keys_dir"] = str(hostile_dir)
        honest = dict(curve_keys)
    runner = StoreRunner(tiny_model, step_s=0.01)
    server = start_server(runner, max_peers=16, queue_limit=4, heartbeat_s=1.0, **config)
    old = Client(server.endpoint, keys=honest["old"], timeout_s=120)
    proc: subprocess.Popen[str] | None = None
    try:
        held = old.edit(quick_edit())  # made before the crowd came
        proc = subprocess.Popen([PYTHON, "-m", "testkit.hostile", "hog", server.endpoint, json.dumps(hog_args)],
                                cwd=REPO, env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "the hostile process died"
        ready = json.loads(line)["ready"]
        full = server.stores()
        print(f"\n[{mode}] the hostile process holds: {ready}; server: {full}")
        assert full["sessions"] == full["sessions_max"] and full["photos"] == full["photos_max"]
        assert full["queue"] == full["queue_max"] and full["running"] == 1
        assert full["peers"] >= full["peers_max"] - 1 and server.stats["shed:peers"] > 0
        # a new honest client: it gets a connection, a place in the queue and room in the stores
        started = time.monotonic()
        with Client(server.endpoint, keys=honest["new"], timeout_s=120) as new:
            fresh = new.edit(quick_edit())
        print(f"[{mode}] the new client's edit: {time.monotonic() - started:.1f} s, session {fresh.session_id}")
        assert fresh.steps == 1 and fresh.session_id
        # 1,000 more identities while the earlier client drags again on its session
        proc.stdin.write("mint 1000\n")
        proc.stdin.flush()
        continues: list[str] = []
        minted: dict[str, Any] = {}

        def read_minted() -> None:
            assert proc is not None and proc.stdout is not None
            minted.update(json.loads(proc.stdout.readline())["minted"])

        reader = threading.Thread(target=read_minted, daemon=True)
        reader.start()
        while reader.is_alive():
            again = old.continue_(P.Continue(session_id=held.session_id, handles=[(1.0, 1.0)],
                                             targets=[(3.0, 3.0)], params=P.EditParams(max_steps=1)))
            continues.append(again.session_id)
            time.sleep(0.2)
        reader.join()
        after = server.stores()
        print(f"[{mode}] minting: {minted}; {len(continues)} continues of the earlier session, all served; "
              f"server: {after}")
        assert minted["minted"] == 1000 and len(continues) >= 3
        assert set(continues) == {held.session_id}
        assert old.continue_(P.Continue(session_id=held.session_id, handles=[(1.0, 1.0)], targets=[(3.0, 3.0)],
                                        params=P.EditParams(max_steps=1))).session_id == held.session_id
        assert after["evicted_for_room"] > 0 and after["bumped"] > 0
        assert server.stats["rejected:internal"] == 0
    finally:
        old.close()
        if proc is not None:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


# -- status ----------------------------------------------------------------------------------------


def test_status_shows_how_full_the_stores_queue_and_connections_are(tiny_model: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config, _hostile, honest = curve_setup(tmp_path, 0)
    runner = StoreRunner(tiny_model, max_sessions=4, max_images=4, max_sessions_total=5, max_images_total=6)
    server: Server = start_server(runner, queue_limit=3, max_peers=9, **config)
    keys_for_status = tmp_path / "status-keys"
    keys_for_status.mkdir(mode=0o700)
    shutil.copy(tmp_path / "studio-keys" / "server.key", keys_for_status / "server.key")
    shutil.copy(tmp_path / "studio-keys" / "old.key_secret", keys_for_status / "client.key_secret")
    try:
        with Client(server.endpoint, keys=honest["old"]) as a, Client(server.endpoint, keys=honest["new"]) as b:
            for _ in range(3):
                a.edit(quick_edit())
            b.edit(quick_edit())
            assert main(["status", "--address", server.endpoint, "--keys-dir", str(keys_for_status)]) == 0
        out = capsys.readouterr().out
        print(out)
        assert "auth     : curve" in out
        assert "stores   : 4 of 6 photos (67% full), 4 of 5 drag sessions (80% full), held by 2 client(s)" in out
        assert "waiting  : 0 of 3 queue places (0% full)" in out
        assert "of 9 connections" in out and "peers    :" in out
        welcome_stores = Client(server.endpoint, keys=honest["new"]).hello().stores
        assert welcome_stores["sessions_max"] == 5 and welcome_stores["queue_max"] == 3
    finally:
        server.stop()


def test_status_of_a_token_mode_server_says_so(tiny_model: Path, tmp_path: Path) -> None:
    proc, address, log = serve_cli(tmp_path, tiny_model, "--insecure-tokens")
    try:
        assert "!! --insecure-tokens" in log.read_text()
        out = subprocess.run([PYTHON, "-m", "backend.cli", "status", "--address", address, "--insecure-tokens"],
                             cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "auth     : none (INSECURE identity tokens" in out.stdout
        assert "stores   : 0 of 64 photos (0% full), 0 of 32 drag sessions (0% full)" in out.stdout
        assert "of 16 connections" in out.stdout
    finally:
        proc.send_signal(2)
        proc.wait(30)


def test_keys_are_made_on_first_serve_in_a_private_folder(tiny_model: Path, tmp_path: Path) -> None:
    config_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    env_keys = config_dir / "keys"
    old = os.environ["DRAGGAN_CONFIG_DIR"]
    os.environ["DRAGGAN_CONFIG_DIR"] = str(config_dir)
    try:
        proc, address, log = serve_cli(tmp_path, tiny_model)
    finally:
        os.environ["DRAGGAN_CONFIG_DIR"] = old
    try:
        assert "(keys made now)" in log.read_text()
        assert env_keys.stat().st_mode & 0o077 == 0
        for name in ("server.key_secret", "client.key_secret"):
            assert (env_keys / name).stat().st_mode & 0o777 == 0o600
        assert (env_keys / "allowed_clients" / "local.key").is_file()
        with Client(address, keys=ClientKeys.for_endpoint(address, str(env_keys)), connect_timeout_s=2.0) as c:
            assert c.hello().auth == "curve"
    finally:
        proc.send_signal(2)
        proc.wait(30)
    wait_until(lambda: proc.poll() is not None, what="the server to stop")


def test_a_full_store_makes_room_from_the_owner_holding_the_most() -> None:
    """OwnedStore's rules alone: the biggest holder gives up its least recently used item, never its
    most recent; among single-item owners the latest to come gives way; pinned items stay; a
    tombstone says why an item is gone, to its owner only; pressure counts both sides of a push."""
    from backend.stores import OwnedStore

    store = OwnedStore(max_items=4, retention_s=3600, max_total=6, what="sessions")
    honest = store.put("honest", "h1")
    hog = [store.put("hog", f"x{i}") for i in range(4)]  # its own limit
    store.put("crowd-1", "c1")
    assert len(store) == 6
    store.put("newcomer", "n1")  # full: the hog (4 items) gives up its least recently used
    assert not store.contains("hog", hog[0]) and store.contains("hog", hog[3])
    assert store.evicted("hog", hog[0]) == "room" and store.evicted("honest", hog[0]) == ""
    assert store.pressure("hog") == 1 and store.pressure("newcomer") == 1 and store.pressure("honest") == 0
    for i in range(2, 6):  # then the hog down to its most recent, then the crowd churns itself
        store.put(f"crowd-{i}", f"c{i}")
    assert store.contains("hog", hog[3]) and store.contains("honest", honest)
    for i in range(6, 40):  # 34 more one-item owners: each evicts the latest single owner
        store.put(f"crowd-{i}", f"c{i}")
    assert store.contains("honest", honest) and store.contains("hog", hog[3])
    with store.pinned(honest):
        assert store.has_room("another")
    blocked = OwnedStore(max_items=1, retention_s=3600, max_total=1)
    key = blocked.put("a", 1)
    with blocked.pinned(key):
        assert not blocked.has_room("b")
        with pytest.raises(ProtocolError) as info:
            blocked.put("b", 2)
        assert info.value.code == ErrorCode.BUSY
    assert blocked.has_room("b")
