"""The plug-in's backend link over real ZeroMQ sockets on 127.0.0.1: unreachable backend, missing
pyzmq, the identity token that owns sessions (GIMP's folder, never the image), and how protocol
errors read to a user."""

from __future__ import annotations

import os
import stat
import sys

import pytest
import zmq
from draggan_core import errors, identity, link

from draggan_wire import protocol

from . import fakegimp
from .scripted_router import ScriptedRouter, refused_loopback_address, welcome


def test_unreachable_backend_says_how_to_start_it() -> None:
    with refused_loopback_address() as address:
        backend = link.Backend(address, 1.0, connect_timeout_s=0.3, retries=1)
        try:
            with pytest.raises(errors.PluginError) as info:
                backend.models()
        finally:
            backend.close()
    msg = info.value.message
    assert f"no answer from the backend at {address}" in msg and "draggan-backend serve" in msg
    assert not info.value.calling


def test_missing_pyzmq_gives_the_fix(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "zmq", None)      # `import zmq` now raises ImportError
    with pytest.raises(errors.PluginError) as info:
        link.Backend("tcp://127.0.0.1:5555", 1.0)
    assert "pyzmq" in info.value.message and "install.py --plugin-only" in info.value.message
    assert "restart GIMP" in info.value.message


class OneShotServer(ScriptedRouter):
    """Answers ``messages`` hellos with a welcome, then stops; records the routing ids and tokens."""

    def __init__(self, curve_pair: tuple[bytes, bytes] | None = None, messages: int = 2) -> None:
        self.identities: list[bytes] = []
        self.tokens: list[str] = []
        super().__init__(curve_pair, max_messages=messages)

    def answer(self, ident: bytes, envelope: protocol.Envelope) -> object:
        self.identities.append(ident)
        self.tokens.append(envelope.token)
        return welcome(protocol.ModelEntry("small", 64, 32, False), protocol.ModelEntry("tiny", 32, 32, True))


def test_every_run_presents_the_users_identity_token_from_gimps_folder() -> None:
    server = OneShotServer()
    try:
        with link.Backend(server.address, 2.0) as backend:
            models = backend.models()
            assert [(m.name, m.width, m.height, m.loaded) for m in models] == [
                ("small", 64, 32, False), ("tiny", 32, 32, True)]
            assert backend.pick_model("").name == "tiny"          # the first loaded one
            assert backend.pick_model("small").width == 64
            with pytest.raises(errors.PluginError, match="no model 'ffhq'.*installed: small, tiny"):
                backend.pick_model("ffhq")
        with link.Backend(server.address, 2.0) as next_run:       # a later plug-in run
            next_run.models()
    finally:
        server.close()
    path = identity.token_path()
    assert path.startswith(fakegimp.GIMP_DIR)                     # GIMP's per-user folder
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token = open(path).read().strip()
    assert server.tokens == [token, token] and protocol.TOKEN_PATTERN.fullmatch(token)
    # the routing id is not kept (it is only an address): each run gets libzmq's own
    assert server.identities[0] != server.identities[1]


@pytest.mark.parametrize("code, words", [
    ("unavailable", "no answer from the backend"),
    ("timeout", "draggan-backend serve"),
    ("busy", "is busy"),
    ("cancelled", "cancelled; the image was not changed"),
    ("out_of_memory", "ran out of memory"),
    ("version_mismatch", "do not match"),
    ("auth", "refused the connection"),
    ("bad_request", "rejected the request"),
    ("internal", "[internal] boom"),
])
def test_protocol_errors_read_as_actions(code: str, words: str) -> None:
    err = link.explain(protocol.ProtocolError(code, "boom"), "tcp://h:1", 5.0)
    assert err.message.startswith("DragGAN") and words in err.message
    unknown = link.explain(protocol.ProtocolError("unknown_model", "no such model"), "tcp://h:1", 5.0,
                           ["tiny"], "ffhq-512")
    assert "install.py --model ffhq-512" in unknown.message


def test_remote_backend_with_curve_keys_from_draggan_json() -> None:
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    server = OneShotServer((server_public, server_secret), messages=1)
    config = {"address": server.address.replace("127.0.0.1", "localhost"),
              "server_public_key": server_public.decode(), "client_public_key": client_public.decode(),
              "client_secret_key": client_secret.decode(), "keys_dir": "/nowhere"}
    try:
        with link.Backend(server.address, 2.0, plugin_config=config) as backend:
            assert [m.name for m in backend.models()] == ["small", "tiny"]
        # without the keys the encrypted server never answers
        with link.Backend(server.address, 2.0, connect_timeout_s=0.5, retries=1) as plain:
            with pytest.raises(errors.PluginError):
                plain.models()
    finally:
        server.close()
    assert link.curve_keys("tcp://10.0.0.1:5555", config) is None       # keys belong to their backend
    assert link.curve_keys(server.address, {"address": server.address}) is None


def test_a_local_backend_is_reached_with_the_users_keys(tmp_path, monkeypatch) -> None:
    """`draggan-backend serve` uses CURVE on loopback too, with keys it makes in the user's DragGAN
    config folder: the plug-in finds them there (no draggan.json needed), and without them it says
    what is missing."""
    from backend import keys as keys_mod

    monkeypatch.setenv("DRAGGAN_CONFIG_DIR", str(tmp_path / "config"))
    folder = tmp_path / "config" / "keys"
    keys_mod.init(folder)                                    # what the first `serve` makes
    from draggan_wire.client import read_public_key, read_secret_key

    secret = str(folder / "server.key_secret")
    server = OneShotServer((read_public_key(secret), read_secret_key(secret)), messages=1)
    try:
        with link.Backend(server.address, 2.0) as backend:
            assert [m.name for m in backend.models()] == ["small", "tiny"]
        (folder / "client.key_secret").rename(folder / "moved.key_secret")
        with link.Backend(server.address, 2.0, connect_timeout_s=0.5, retries=1) as keyless:
            with pytest.raises(errors.PluginError) as info:
                keyless.models()
        assert "requires CURVE keys" in info.value.message
    finally:
        server.close()
