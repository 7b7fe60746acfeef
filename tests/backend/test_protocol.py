"""The wire protocol alone: round trips, validation errors that name the field, PNG, stdlib-only import."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from draggan_wire import protocol as P
from draggan_wire.protocol import ErrorCode, ProtocolError

from .conftest import PYTHON, REPO, subprocess_env

RGB = P.Image(5, 4, 3, bytes(range(60)))
MASK = P.Image(5, 4, 1, bytes([0, 255] * 10))


TOKEN = "ab" * 32


def roundtrip(message: P.Message, rid: str = "r1") -> P.Envelope:
    env = P.decode(P.encode(message, rid, TOKEN))
    assert env.id == rid and env.type == message.TYPE
    return env


@pytest.mark.parametrize("message", [
    P.Hello(client="gimp 3.0"),
    P.Edit(model="tiny", handles=[(1.5, 2.0)], targets=[(3.0, 4.25)], image=RGB, mask=MASK,
           params=P.EditParams(max_steps=7, latent="w", pti=True, inversion="quality", preview_every=0)),
    P.Edit(model="tiny", handles=[(1, 2)], targets=[(3, 4)], image_id="abc123"),
    P.Continue(session_id="s1", handles=[(1, 2)], targets=[(3, 4)], mask=MASK),
    P.Continue(session_id="s1", handles=[(1, 2)], targets=[(3, 4)], params=P.EditParams(lr=0.01)),
    P.Cancel(job="c1-2"), P.Cancel(), P.Ping(), P.Purge(),
    P.Welcome(server="0.1", protocol=2, device="cuda", models=[P.ModelEntry("m", 512, 384, True)],
              memory_total=10, memory_used=3, heartbeat_s=0.5, instance="abc", auth="curve"),
    P.Progress(phase="drag", step=3, total=10, points=[(1.0, 2.0)], loss=0.25, preview=RGB,
               inversion=P.InversionQuality(psnr=25.0, stlpips=0.2, from_cache=True)),
    P.Progress(phase="queued", position=2, text="waiting"),
    P.Result(image=RGB, points=[(1.0, 2.0)], session_id="s", image_id="i", steps=4, seconds=1.5,
             inversion=P.InversionQuality(30.0, 0.1)),
    # protocol 4: the result mode, the region without a mask, PTI left to the model, the landed verdict
    # and the local colour figure
    P.Edit(model="tiny", handles=[(1, 2)], targets=[(3, 4)], image=RGB, result="model",
           params=P.EditParams(pti=None, region="whole")),
    P.Continue(session_id="s1", handles=[(1, 2)], targets=[(3, 4)], result="detail"),
    P.Result(image=P.Image(2, 2, 4, bytes(16)), points=[(1.0, 2.0), (3.0, 4.0)], session_id="s", frame="crop",
             offset=(7, 9), landed=[True, False],
             inversion=P.InversionQuality(30.0, 0.1, colour=33.5, colour_at=(64, 70))),
    P.Error(code=ErrorCode.BUSY, message="busy", field="", trace_id="t"),
    P.Pong(instance="x", jobs=["a", "b"]), P.CancelOk(cancelled=1), P.Purged(images=2, sessions=1),
    # protocol 4, live drags: previews placed in the crop's frame, stop, undo and the session's history
    P.Edit(model="tiny", handles=[(1, 2)], targets=[(3, 4)], image=RGB,
           params=P.EditParams(preview_every=1, preview_frame="crop")),
    P.Progress(phase="drag", step=2, total=9, points=[(1.0, 2.0)], preview=P.Image(2, 2, 4, bytes(16)),
               preview_frame="crop", preview_offset=(5, 6)),
    P.Stop(job="c1-2"), P.StopOk(stopping=1), P.Undo(session_id="s1"), P.Undo(session_id="s1", result="model"),
    P.Result(image=P.Image(2, 2, 4, bytes(16)), points=[(1.0, 2.0)], session_id="s", stopped=True, history=3),
])
def test_every_message_round_trips(message: P.Message) -> None:
    assert roundtrip(message).message == message


def test_protocol_4_fields_are_checked_and_absent_ones_take_their_defaults() -> None:
    assert P.PROTOCOL_VERSION == 4
    bare = roundtrip(P.Edit(model="tiny", handles=[(1, 2)], targets=[(3, 4)], image=RGB)).message
    assert bare.result == "detail" and bare.params.pti is None and bare.params.region == "points"
    assert "pti" not in P.EditParams().to_fields()          # None = the model's own: no field at all
    header, *frames = P.encode(P.Edit(model="tiny", handles=[(1, 2)], targets=[(3, 4)], image=RGB), "r1", TOKEN)
    for path, value, field_name in ((("fields", "result"), "pixels", "fields.result"),
                                    (("fields", "params", "region"), "face", "fields.params.region"),
                                    (("fields", "params", "pti"), "yes", "fields.params.pti")):
        doc = json.loads(header)
        target = doc
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
        with pytest.raises(ProtocolError) as info:
            P.decode([json.dumps(doc).encode(), *frames])
        assert info.value.code == ErrorCode.BAD_REQUEST and info.value.field == field_name
    header, *frames = P.encode(P.Result(image=RGB, points=[(1.0, 2.0)], session_id="s", landed=[True]), "r1")
    doc = json.loads(header)
    doc["fields"]["landed"] = ["yes"]
    with pytest.raises(ProtocolError, match="fields.landed"):
        P.decode([json.dumps(doc).encode(), *frames])


def test_live_drag_fields_are_checked_and_absent_ones_take_their_defaults() -> None:
    bare = roundtrip(P.Progress(phase="drag", step=1, total=2, preview=RGB)).message
    assert bare.preview_frame == "model" and bare.preview_offset == (0, 0)
    assert roundtrip(P.Edit(model="tiny", handles=[(1, 2)], targets=[(3, 4)], image=RGB)).message.params.preview_frame \
        == "model"
    result = roundtrip(P.Result(image=RGB, points=[(1.0, 2.0)], session_id="s")).message
    assert result.stopped is False and result.history == 0
    cases = [
        (P.Progress(phase="drag", preview=RGB, preview_frame="crop"), ("fields", "preview_frame"), "face",
         "fields.preview_frame"),
        (P.Progress(phase="drag", preview=RGB, preview_frame="crop"), ("fields", "preview_offset"), [1, -2],
         "fields.preview_offset"),
        (P.Result(image=RGB, points=[(1.0, 2.0)], session_id="s"), ("fields", "history"), -1, "fields.history"),
        (P.Result(image=RGB, points=[(1.0, 2.0)], session_id="s"), ("fields", "stopped"), "yes", "fields.stopped"),
        (P.Edit(model="tiny", handles=[(1, 2)], targets=[(3, 4)], image=RGB), ("fields", "params", "preview_frame"),
         "layer", "fields.params.preview_frame"),
        (P.Undo(session_id="s1"), ("fields", "session_id"), "../x", "fields.session_id"),
        (P.Undo(session_id="s1"), ("fields", "result"), "pixels", "fields.result"),
        (P.Stop(job="c1"), ("fields", "job"), None, "fields.job"),
    ]
    for message, path, value, field_name in cases:
        header, *frames = P.encode(message, "r1", TOKEN)
        doc = json.loads(header)
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(ProtocolError) as info:
            P.decode([json.dumps(doc).encode(), *frames])
        assert info.value.code == ErrorCode.BAD_REQUEST and info.value.field == field_name, (path, info.value)
    # stop and undo carry no binary frames
    with pytest.raises(ProtocolError, match="at most 0 binary frames"):
        P.decode([P.encode(P.Undo(session_id="s1"), "r1", TOKEN)[0], b"x"])


def test_png_frames_round_trip_and_decode_pillow_filters() -> None:
    message = P.Edit(model="tiny", handles=[(1, 2)], targets=[(3, 4)], image=RGB, image_format="png")
    frames = P.encode(message, "r1", TOKEN)
    assert frames[1].startswith(b"\x89PNG") and json.loads(frames[0])["fields"]["image"]["format"] == "png"
    assert P.decode(frames).message.image == RGB
    rng = np.random.default_rng(0)
    for mode, channels in (("RGB", 3), ("RGBA", 4), ("L", 1)):
        # a smooth image with noise makes Pillow's optimiser use every filter type
        base = np.add.outer(np.arange(37), np.arange(41)).astype(np.uint8)
        pixels = np.stack([base + rng.integers(0, 3, base.shape, dtype=np.uint8) for _ in range(channels)], -1)
        buf = io.BytesIO()
        PILImage.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode).save(buf, "PNG", optimize=True)
        assert P.decode_png(buf.getvalue()) == P.Image(41, 37, channels, pixels.tobytes())


def header(type_: str = "edit", fields: object = None, v: object = P.PROTOCOL_VERSION, rid: object = "r1",
           token: object = TOKEN) -> bytes:
    return json.dumps({"v": v, "type": type_, "id": rid, "token": token,
                       "fields": fields if fields is not None else {}}).encode()


def edit_fields(**over: object) -> dict:
    fields = {"model": "tiny", "handles": [[1, 2]], "targets": [[3, 4]],
              "image": {"frame": 1, "format": "raw", "shape": [4, 5, 3]}}
    fields.update(over)
    return fields


@pytest.mark.parametrize("frames, code, field_name, words", [
    ([b"{not json"], ErrorCode.BAD_REQUEST, "header", "JSON"),
    ([b"[1, 2]"], ErrorCode.BAD_REQUEST, "header", "object"),
    ([header(v=99)], ErrorCode.VERSION_MISMATCH, "v", "protocol version 99"),
    ([header(type_="explode")], ErrorCode.UNKNOWN_TYPE, "header.type", "unknown message type"),
    ([header(rid="bad id with spaces")], ErrorCode.BAD_REQUEST, "header.id", "A-Z"),
    ([header(fields=edit_fields(handles=[[1, "a"]])), RGB.data], ErrorCode.BAD_REQUEST, "fields.handles[0]",
     "two finite numbers"),
    ([header(fields=edit_fields(targets=[[1, 2], [3, 4]])), RGB.data], ErrorCode.BAD_REQUEST, "fields.targets",
     "2 targets for 1 handles"),
    ([header(fields=edit_fields(handles=[[1, 2]] * 65, targets=[[1, 2]] * 65)), RGB.data], ErrorCode.TOO_LARGE,
     "fields.handles", "at most 64"),
    ([header(fields=edit_fields()), RGB.data[:-1]], ErrorCode.BAD_REQUEST, "fields.image", "needs 60"),
    ([header(fields=edit_fields())], ErrorCode.BAD_REQUEST, "fields.image.frame", "binary frames"),
    ([header(fields=edit_fields()), RGB.data, RGB.data], ErrorCode.BAD_REQUEST, "frames", "not referenced"),
    ([header(fields=edit_fields(image={"frame": 1, "shape": [4, 5, 2]})), bytes(40)], ErrorCode.BAD_REQUEST,
     "fields.image.shape", "channels"),
    ([header(fields=edit_fields(image={"frame": 1, "shape": [4000, 5, 3]})), bytes(60)], ErrorCode.TOO_LARGE,
     "fields.image.shape", "2048"),
    ([header(fields=edit_fields(image={"frame": 1, "format": "jpeg"})), RGB.data], ErrorCode.BAD_REQUEST,
     "fields.image.format", "raw, png"),
    ([header(fields=edit_fields(image={"frame": 1, "format": "png"})), b"GIF89a"], ErrorCode.BAD_REQUEST,
     "fields.image", "not a PNG"),
    ([header(fields=edit_fields(image={"frame": 1, "shape": [4, 5, 3], "dtype": "float32"})), RGB.data],
     ErrorCode.BAD_REQUEST, "fields.image.dtype", "uint8"),
    ([header(fields=edit_fields(params={"max_steps": 0})), RGB.data], ErrorCode.BAD_REQUEST,
     "fields.params.max_steps", "1..5000"),
    ([header(fields=edit_fields(params={"lr": "fast"})), RGB.data], ErrorCode.BAD_REQUEST, "fields.params.lr",
     "finite number"),
    ([header(fields=edit_fields(params={"latent": "z"})), RGB.data], ErrorCode.BAD_REQUEST,
     "fields.params.latent", "w, w+"),
    ([header(fields=edit_fields(params={"turbo": True})), RGB.data], ErrorCode.BAD_REQUEST,
     "fields.params.turbo", "unknown parameter"),
    ([header(fields=edit_fields(model="../../etc/passwd")), RGB.data], ErrorCode.BAD_REQUEST, "fields.model",
     "A-Z"),
    ([header(fields=edit_fields(image_id="abc")), RGB.data], ErrorCode.BAD_REQUEST, "fields.image",
     "exactly one"),
    ([header(fields=edit_fields(mask={"frame": 2, "shape": [4, 5, 3]})), RGB.data, RGB.data],
     ErrorCode.BAD_REQUEST, "fields.mask", "channels"),
    ([header(fields=edit_fields(mask={"frame": 2, "shape": [2, 2]})), RGB.data, bytes(4)], ErrorCode.BAD_REQUEST,
     "fields.mask", "mask is 2x2"),
    ([header(type_="ping"), b"x"], ErrorCode.BAD_REQUEST, "frames", "at most 0 binary"),
    ([header(type_="continue", fields={"session_id": "s", "handles": [[1, 2]]})], ErrorCode.BAD_REQUEST,
     "fields.targets", "missing"),
    ([header(), b"", b"", b""], ErrorCode.TOO_LARGE, "frames", "at most 3"),
    ([b" " * (P.MAX_HEADER_BYTES + 1)], ErrorCode.TOO_LARGE, "header", "bytes"),
    ([b"[" * 50000 + b"]" * 50000][:1], ErrorCode.TOO_LARGE, "header", "bytes"),
    ([b"[" * 20000 + b"]" * 20000], ErrorCode.BAD_REQUEST, "header", "JSON"),
    ([json.dumps({"v": 1, "type": "edit", "id": "r", "fields": edit_fields(handles=[[float("nan"), 1]])})
      .encode(), RGB.data], ErrorCode.BAD_REQUEST, "header", "NaN"),
])
def test_invalid_messages_raise_typed_errors_naming_the_field(frames: list[bytes], code: str, field_name: str,
                                                              words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        P.decode(frames, allowed=P.REQUEST_TYPES)
    assert info.value.code == code, info.value
    assert info.value.field == field_name, info.value
    assert words in info.value.message, info.value


def test_replies_are_not_accepted_as_requests() -> None:
    frames = P.encode(P.Pong(), "r1")
    with pytest.raises(ProtocolError) as info:
        P.decode(frames, allowed=P.REQUEST_TYPES)
    assert info.value.code == ErrorCode.UNKNOWN_TYPE and "hello" in info.value.message


def test_png_decoder_refuses_bombs_and_truncation() -> None:
    png = RGB.to_png()
    with pytest.raises(ProtocolError, match="truncated|bytes after inflating|corrupt"):
        P.decode_png(png[:-20])
    # a header claiming 2049 px is refused before inflating anything
    big = P.Image(1, 1, 1, b"\0").to_png().replace(b"\x00\x00\x00\x01\x00\x00\x00\x01", b"\x00\x00\x08\x01" * 2, 1)
    with pytest.raises(ProtocolError) as info:
        P.decode_png(big)
    assert info.value.code in (ErrorCode.TOO_LARGE, ErrorCode.BAD_REQUEST)


BLOCKER = textwrap.dedent("""
    import sys
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('zmq', 'numpy', 'torch', 'PIL'):
                raise ImportError('blocked for this test: ' + name)
    sys.meta_path.insert(0, Blocker())
""")


def test_protocol_and_client_import_with_only_the_standard_library(tmp_path: Path) -> None:
    """The draggan_wire package alone, copied as install.py stages it (nothing else of the project
    beside it), with zmq, numpy, torch and PIL blocked: the protocol works, the client module imports,
    and making a Client says how to get pyzmq."""
    shutil.copytree(REPO / "draggan_wire", tmp_path / "draggan_wire", ignore=shutil.ignore_patterns("__pycache__"))
    script = BLOCKER + textwrap.dedent("""
        from draggan_wire import protocol, client
        frames = protocol.encode(protocol.Hello(client='gimp'), 'r1', 'cd' * 32)
        assert protocol.decode(frames).message.client == 'gimp'
        image = protocol.Image(2, 1, 3, bytes(6))
        assert protocol.decode_png(image.to_png()) == image
        try:
            client.Client('tcp://127.0.0.1:1')
        except protocol.ProtocolError as exc:
            print('CLIENT-ERROR', exc.code, exc.message)
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('zmq', 'numpy', 'torch', 'PIL', 'backend'))
        print('HEAVY', heavy)
    """)
    out = subprocess.run([PYTHON, "-c", script], cwd=tmp_path, env={**subprocess_env(), "PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert "CLIENT-ERROR unavailable pyzmq is not available" in out.stdout and "pip install pyzmq" in out.stdout


def test_protocol_module_imports_nothing_but_stdlib() -> None:
    script = BLOCKER + "import draggan_wire.protocol as p; print(p.PROTOCOL_VERSION)"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == str(P.PROTOCOL_VERSION), out.stderr
