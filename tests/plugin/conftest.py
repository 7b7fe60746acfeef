"""Fast plug-in tests: the fake `gi.repository` (fakegimp.py) and the plug-in staged by install.py.

The plug-in is staged exactly as users get it (`install.py --plugin-only --gimp-dir DIR`), and its
folder goes on sys.path, so `draggan_core` and `draggan_wire` import as they do inside GIMP.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from . import fakegimp

REPO = Path(__file__).resolve().parents[2]

fakegimp.install()
_STAGE = Path(tempfile.mkdtemp(prefix="draggan-plugin-tests-"))
atexit.register(shutil.rmtree, _STAGE, True)
_staged = subprocess.run([sys.executable, str(REPO / "install.py"), "--plugin-only", "--gimp-dir",
                          str(_STAGE / "plug-ins")], capture_output=True, text=True, timeout=120)
if _staged.returncode != 0:
    raise RuntimeError("install.py --plugin-only failed:\n" + _staged.stdout + _staged.stderr)
PLUGIN_DIR = _STAGE / "plug-ins" / "draggan"
sys.path.insert(0, str(PLUGIN_DIR))

from draggan_wire import protocol  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_fake(tmp_path_factory, monkeypatch):
    fakegimp.reset()
    # an empty DragGAN config folder: the scripted servers here run without CURVE, and keys that
    # other tests (a `serve`) left in the session's folder would make the plug-in use them
    monkeypatch.setenv("DRAGGAN_CONFIG_DIR", str(tmp_path_factory.mktemp("draggan-config")))
    yield


class FakeBackend:
    """Stands in for draggan_core.link.Backend (protocol 4): one model, answers edit with the crop it
    was sent inverted and continue with grey, as RGBA in the crop's frame; records every call."""

    def __init__(self, models: list[tuple[str, int, int]] | None = None, psnr: float = 24.0,
                 stlpips: float = 0.15, aligned: tuple[str, ...] = (), whole: tuple[str, ...] = ()) -> None:
        from draggan_core import link

        self.models_list = [link.ModelChoice(n, w, h, True, alignment="ffhq" if n in aligned else "none",
                                             framing="whole" if n in whole else "any")
                            for n, w, h in (models or [("tiny", 16, 16)])]
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.psnr, self.stlpips = psnr, stlpips
        self.fail_with: Exception | None = None
        self.session_gone = False
        self.sessions = 0
        self.address = ""
        self.undo_depth_seen: list[int] = []
        self.session_prefix = "s"
        self.geometry: dict[str, Any] = {}   # each session's (produced area, its box)
        self.aligned_sessions: set[str] = set()
        self.stall = False   # edit answers the handles where they started (a drag that never moved)

    # the factory edit.run_edit calls
    def __call__(self, address: str, timeout: float) -> FakeBackend:
        self.address = address
        self.calls.append(("connect", {"address": address, "timeout": timeout}))
        if self.fail_with is not None:
            raise self.fail_with
        return self

    def __enter__(self) -> FakeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.append(("close", {}))

    def pick_model(self, wanted: str) -> Any:
        from draggan_core import errors

        if not wanted:
            return self.models_list[0]
        for m in self.models_list:
            if m.name == wanted:
                return m
        raise errors.model_not_available(wanted, [m.name for m in self.models_list])

    def _note_undo(self) -> None:
        self.undo_depth_seen.extend(img.undo_depth for img in fakegimp.all_images)

    def edit(self, model, rgb, size, handles, targets, mask, params, on_progress, should_cancel, align="off",
             result="detail"):
        self._note_undo()
        self.calls.append(("edit", dict(model=model, rgb=rgb, size=size, handles=handles, targets=targets,
                                        mask=mask, params=params, align=align, result=result)))
        quality = protocol.InversionQuality(self.psnr, self.stlpips)
        chosen = next(m for m in self.models_list if m.name == model)
        if align == "auto" and chosen.alignment != "none":
            return self._aligned(rgb, size, handles, targets, on_progress, quality)
        on_progress(protocol.Progress(phase="inversion", step=5, total=10, inversion=quality))
        on_progress(protocol.Progress(phase="drag", step=3, total=params["max_steps"]))
        if should_cancel():
            from draggan_core import errors
            raise errors.cancelled()
        self.sessions += 1
        session = "none" if self.session_prefix == "none" else f"{self.session_prefix}{self.sessions}"
        # the whole crop is the model's frame: RGBA of all of it, every pixel produced
        self.geometry[session] = self._whole(size)
        return self._crop_result(size, session, handles if self.stall else targets, quality,
                                 lambda x, y, w: [255 - b for b in rgb[(y * w + x) * 3:(y * w + x) * 3 + 3]],
                                 aligned=False)

    # The aligned edit as the server answers it (protocol 3): RGBA in the region's frame, alpha 255 on
    # the "produced area" -- here a diamond of radius `face_radius` around the first handle, cut where
    # it runs over the region's edge (the padding of a face near the layer's edge) -- cut to that
    # area's bounding box at its offset. `no_face`: the unaligned box (a square, all produced).
    face_radius = 30
    no_face = False

    def _produced(self, size, centre):
        w, h = size
        cx, cy = int(round(centre[0])), int(round(centre[1]))
        r = self.face_radius
        inside = [[(abs(x - cx) + abs(y - cy) <= r) if not self.no_face else (abs(x - cx) <= r and abs(y - cy) <= r)
                   for x in range(w)] for y in range(h)]
        xs = [x for y in range(h) for x in range(w) if inside[y][x]]
        ys = [y for y in range(h) for x in range(w) if inside[y][x]]
        return inside, (min(xs), min(ys), max(xs) + 1, max(ys) + 1)

    def _whole(self, size):
        w, h = size
        return [[True] * w for _ in range(h)], (0, 0, w, h)

    def _crop_result(self, size, session, points, quality, value, aligned=True):
        inside, (x0, y0, x1, y1) = self.geometry[session]
        w = size[0]
        out = bytearray()
        for y in range(y0, y1):
            for x in range(x0, x1):
                # the server zeroes colour outside the produced area too
                out += bytes(value(x, y, w)) + b"\xff" if inside[y][x] else b"\x00" * 4
        note = ""
        if aligned:
            note = ("no face found: editing without alignment" if self.no_face
                    else "face aligned (rotated +20 deg, 2.00 crop px per model px)")
        return protocol.Result(image=protocol.Image(x1 - x0, y1 - y0, 4, bytes(out)), points=points,
                               session_id=session, inversion=quality, steps=3, frame="crop", offset=(x0, y0),
                               alignment="ffhq" if aligned and not self.no_face else "none", note=note,
                               landed=[not self.stall] * len(points))

    def _aligned(self, rgb, size, handles, targets, on_progress, quality):
        note = ("no face found: editing without alignment" if self.no_face
                else "face aligned (rotated +20 deg, 2.00 crop px per model px)")
        on_progress(protocol.Progress(phase="inversion", step=0, total=0, text=note))
        on_progress(protocol.Progress(phase="inversion", step=5, total=10, inversion=quality))
        self.sessions += 1
        session = "none" if self.session_prefix == "none" else f"{self.session_prefix}{self.sessions}"
        self.geometry[session] = self._produced(size, handles[0])
        self.aligned_sessions.add(session)
        return self._crop_result(size, session, targets, quality,
                                 lambda x, y, w: [255 - b for b in rgb[(y * w + x) * 3:(y * w + x) * 3 + 3]])

    def continue_session(self, session_id, size, handles, targets, mask, params, on_progress, should_cancel,
                         model="", result=None):
        from draggan_core import link

        self._note_undo()
        self.calls.append(("continue", dict(session_id=session_id, size=size, handles=handles,
                                            targets=targets, mask=mask, params=params, result=result)))
        if self.session_gone:
            raise link.SessionGone("unknown session")
        on_progress(protocol.Progress(phase="drag", step=1, total=params["max_steps"]))
        return self._crop_result(size, session_id, targets, None, lambda x, y, w: [200, 200, 200],
                                 aligned=session_id in self.aligned_sessions)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls if kind in ("edit", "continue")]


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend()
