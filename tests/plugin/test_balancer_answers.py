"""The plug-in behind a load balancer (docs/studio.md), over real ZeroMQ sockets: the replica it
reaches may not hold its session (unknown_session: invert anew and say why) or may be busy (say
so; nothing is written). The backend is a scripted ROUTER on 127.0.0.1 that answers as a replica
does; the plug-in runs with the fake GIMP through the real link.Backend and draggan_wire.client."""

from __future__ import annotations

from draggan_core import edit, errors, link, options, parasite

from draggan_wire import protocol

from . import fakegimp
from .conftest import FakeBackend
from .scripted_router import ScriptedRouter, welcome

SIDE = 16


class ScriptedReplica(ScriptedRouter):
    """Answers hello with a welcome (one 16x16 model), continue with ``continue_error`` and edit
    with ``edit_error`` or else a result; ``received`` lists the request types it saw."""

    def __init__(self, continue_error: tuple[str, str] | None = None,
                 edit_error: tuple[str, str] | None = None) -> None:
        self.continue_error, self.edit_error = continue_error, edit_error
        super().__init__()

    def answer(self, ident: bytes, envelope: protocol.Envelope) -> object:
        message = envelope.message
        if isinstance(message, protocol.Hello):
            return welcome(protocol.ModelEntry("tiny", SIDE, SIDE, True), instance="replica-b")
        if isinstance(message, protocol.Ping):
            return protocol.Pong(instance="replica-b")
        if isinstance(message, protocol.Continue) and self.continue_error:
            return protocol.Error(*self.continue_error)
        if isinstance(message, protocol.Edit):
            if self.edit_error:
                return protocol.Error(*self.edit_error)
            w, h = message.image.width, message.image.height   # protocol 4: RGBA in the crop's frame
            return protocol.Result(image=protocol.Image(w, h, 4, bytes([90, 90, 90, 255]) * w * h),
                                   points=message.targets, session_id="fresh", steps=2,
                                   inversion=protocol.InversionQuality(24.0, 0.1), frame="crop",
                                   landed=[True] * len(message.targets))
        return protocol.Error("bad_request", "not scripted")


def _scene_with_session(address: str):
    """A photo, its DragGAN layer (made through the fake backend) holding session 's1' at ``address``,
    and a path on it for the next drag."""
    image, layer = fakegimp.make_photo(60, 50, image_size=(60, 50))
    fakegimp.add_path(image, [[(20.0, 20.0), (26.0, 22.0)]])
    opts = options.Options(backend_address=address, max_steps=4, backend_timeout=10)
    first = edit.run_edit(image, [layer], opts, edit.Progress(), FakeBackend([("tiny", SIDE, SIDE)]))
    assert parasite.read_record(first.layer).session_id == "s1"
    fakegimp.log.clear()
    return image, first.layer, opts


def _real_link(address: str, timeout: float) -> link.Backend:
    return link.Backend(address, timeout, connect_timeout_s=2.0, retries=1)


def test_a_replica_without_the_session_gets_a_fresh_edit_and_the_user_is_told_why() -> None:
    replica = ScriptedReplica(continue_error=("unknown_session", "session 's1' is not held for this client"))
    try:
        image, result_layer, opts = _scene_with_session(replica.address)
        out = edit.run_edit(image, [result_layer], opts, edit.Progress(), _real_link)
    finally:
        replica.close()
    assert [t for t in replica.received if t in ("continue", "edit")] == ["continue", "edit"]
    assert not out.continued and parasite.read_record(out.layer).session_id == "fresh"
    shown = [c[1] for c in fakegimp.log if c[0] == "progress_set_text"]
    assert any("inverting anew: the backend no longer holds the previous session" in t for t in shown), shown


def test_a_busy_replica_is_told_to_the_user_and_nothing_is_written() -> None:
    replica = ScriptedReplica(edit_error=("busy", "the DragGAN backend is busy (1 edit running, 1 queued, the "
                                                  "queue limit); try again in a moment"))
    try:
        image, layer = fakegimp.make_photo(60, 50, image_size=(60, 50))
        fakegimp.add_path(image, [[(20.0, 20.0), (26.0, 22.0)]])
        opts = options.Options(backend_address=replica.address, max_steps=4, backend_timeout=10)
        try:
            edit.run_edit(image, [layer], opts, edit.Progress(), _real_link)
        except errors.PluginError as exc:
            message = exc.message
        else:
            raise AssertionError("a busy answer must reach the user as an error")
    finally:
        replica.close()
    assert "is busy" in message and "1 edit running" in message and "run the filter again" in message
    assert image.layers == [layer] and image.undo_groups == 0
