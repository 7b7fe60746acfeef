"""The pyzmq relay (GIMP's Python without pyzmq): framing, the unchanged client through the bridge
against real ZeroMQ servers (plain and CURVE), the link's fallback, and a bridge that ends with its
stdin and sends nothing of its own. The real-GIMP run with pyzmq hidden is in tests/gimp."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest
import zmq
from draggan_core import errors, link, relay

from draggan_wire import client as client_module
from draggan_wire import protocol, relay_bridge

from .scripted_router import ScriptedRouter, welcome


def test_framing_round_trip_and_refusals() -> None:
    frames = [b"send", b"7", b"", b"x" * 70000, bytearray(b"ba"), memoryview(b"mv")]
    stream = io.BytesIO(relay_bridge.frame_message(frames) * 2)
    want = [b"send", b"7", b"", b"x" * 70000, b"ba", b"mv"]
    assert relay_bridge.read_message(stream) == want
    assert relay_bridge.read_message(stream) == want
    assert relay_bridge.read_message(stream) is None                    # clean end of file
    with pytest.raises(relay_bridge.FramingError, match="inside a message"):
        relay_bridge.read_message(io.BytesIO(relay_bridge.frame_message([b"abc"])[:-1]))
    with pytest.raises(relay_bridge.FramingError, match="0 frames"):
        relay_bridge.read_message(io.BytesIO(b"\0\0\0\0"))
    with pytest.raises(relay_bridge.FramingError):
        relay_bridge.frame_message([])


class WelcomeServer(ScriptedRouter):
    """Answers every hello with a welcome; ``received`` lists what came."""

    def answer(self, ident: bytes, envelope: protocol.Envelope) -> object:
        return welcome(protocol.ModelEntry("tiny", 32, 32, True))


@pytest.fixture()
def relayed(monkeypatch: pytest.MonkeyPatch):
    """draggan_wire.client with the relay as its zmq (the bridge runs in this test's Python)."""
    monkeypatch.setenv(relay.PYTHON_ENV, sys.executable)
    shim = relay.module()
    monkeypatch.setattr(client_module, "import_zmq", lambda: shim)
    yield shim
    if relay._bridge is not None:
        relay._bridge.close()
        relay._bridge = None


def test_the_unchanged_client_speaks_through_the_bridge(relayed) -> None:
    server = WelcomeServer()
    try:
        with client_module.Client(server.address, timeout_s=5, connect_timeout_s=3, retries=1) as c:
            welcome = c.hello()
            assert [m.name for m in welcome.models] == ["tiny"]

        bridge = relay._bridge
        assert bridge is not None and bridge.alive() and bridge.version   # pyzmq's version, from the bridge
        assert bridge.relayed["out"] == 1 and bridge.relayed["in"] == 1
    finally:
        server.close()


def test_curve_keys_pass_through_the_bridge(relayed) -> None:
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    server = WelcomeServer((server_public, server_secret))
    try:
        keys = client_module.ClientKeys(server_public, client_public, client_secret)
        with client_module.Client(server.address, keys=keys, timeout_s=5, connect_timeout_s=3, retries=1) as c:
            assert c.hello().server == "test"
        wrong = client_module.ClientKeys(zmq.curve_keypair()[0], client_public, client_secret)
        with client_module.Client(server.address, keys=wrong, timeout_s=2, connect_timeout_s=1.5, retries=1) as c:
            with pytest.raises(protocol.ProtocolError) as info:
                c.hello()
        # the handshake failure reached the client through the relayed monitor
        assert info.value.code == "auth" and "server.key" in info.value.message
        assert server.received == ["hello"]
    finally:
        server.close()


def test_link_falls_back_to_the_relay_without_pyzmq(monkeypatch: pytest.MonkeyPatch) -> None:
    # pyzmq is hidden process-wide only for moments (other tests' threads may still use it): the
    # bridge is started before, so the fallback itself only registers the relay.
    saved = {name: sys.modules.get(name) for name in ("zmq", "zmq.utils", "zmq.utils.monitor")}

    def hidden(call):  # noqa: ANN001, ANN202
        sys.modules["zmq"] = None  # type: ignore[assignment]   # `import zmq` raises ImportError
        try:
            return call()
        finally:
            sys.modules.update(saved)

    monkeypatch.delenv(relay.PYTHON_ENV, raising=False)
    with pytest.raises(errors.PluginError, match="pyzmq"):     # nothing recorded: the old message
        hidden(link.import_pyzmq)
    monkeypatch.setenv(relay.PYTHON_ENV, sys.executable + "-does-not-exist")
    with pytest.raises(errors.PluginError, match="the relay failed too: cannot start the relay bridge"):
        hidden(link.import_pyzmq)
    monkeypatch.setenv(relay.PYTHON_ENV, sys.executable)
    relay.bridge()
    try:
        shim = hidden(lambda: (link.import_pyzmq(), sys.modules["zmq"])[::-1])
        assert shim[0] is shim[1] and shim[0].__version__ == "relay"   # registered as zmq, then restored here
    finally:
        if relay._bridge is not None:
            relay._bridge.close()
            relay._bridge = None


def test_relay_record_and_environment(tmp_path) -> None:
    assert relay.bridge_python(str(tmp_path), env={}) is None
    (tmp_path / relay.RELAY_FILE).write_text('{"python": "/venv/bin/python"}')
    assert relay.bridge_python(str(tmp_path), env={}) == "/venv/bin/python"
    assert relay.bridge_python(str(tmp_path), env={relay.PYTHON_ENV: "/other"}) == "/other"
    assert relay.bridge_command("/p", "/b.py") == ["/p", "-I", "-u", "/b.py"]   # GIMP's PYTHONPATH ignored


def test_orphaned_bridge_sends_nothing_and_exits_on_stdin_eof() -> None:
    """When GIMP kills the plug-in the bridge's stdin ends: it must exit, and until then it must not
    speak for the client (no heartbeats of its own), so the server sees the client fall silent."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-I", "-u", relay_bridge.__file__], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert relay_bridge.read_message(proc.stdout)[0] == b"ready"
        config = b'{"endpoint": "tcp://127.0.0.1:%d", "options": {"LINGER": 0}}' % port
        proc.stdin.write(relay_bridge.frame_message([b"open", b"1", config]))
        proc.stdin.write(relay_bridge.frame_message([b"send", b"1", b"ping-from-client"]))
        proc.stdin.flush()
        assert relay_bridge.read_message(proc.stdout) == [b"opened", b"1"]
        assert router.poll(5000)
        assert router.recv_multipart()[1:] == [b"ping-from-client"]
        assert not router.poll(1500)            # silence: the bridge sends nothing of its own
        started = time.monotonic()
        proc.stdin.close()                      # the plug-in is gone
        assert proc.wait(5) == 0 and time.monotonic() - started < 3
    finally:
        if proc.poll() is None:
            proc.kill()
        router.close(0)
        ctx.term()
