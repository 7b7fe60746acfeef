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
def _fresh_fake():
    fakegimp.reset()
    yield


class FakeBackend:
    """Stands in for draggan_core.link.Backend: one model, answers edit/continue with the input
    image inverted (edit) or the last result brightened (continue), records every call."""

    def __init__(self, models: list[tuple[str, int, int]] | None = None, psnr: float = 24.0,
                 stlpips: float = 0.15) -> None:
        from draggan_core import link

        self.models_list = [link.ModelChoice(n, w, h, True) for n, w, h in (models or [("tiny", 16, 16)])]
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.psnr, self.stlpips = psnr, stlpips
        self.fail_with: Exception | None = None
        self.session_gone = False
        self.sessions = 0
        self.address = ""
        self.undo_depth_seen: list[int] = []
        self.session_prefix = "s"

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

    def edit(self, model, rgb, size, handles, targets, mask, params, on_progress, should_cancel):
        self._note_undo()
        self.calls.append(("edit", dict(model=model, rgb=rgb, size=size, handles=handles, targets=targets,
                                        mask=mask, params=params)))
        quality = protocol.InversionQuality(self.psnr, self.stlpips)
        on_progress(protocol.Progress(phase="inversion", step=5, total=10, inversion=quality))
        on_progress(protocol.Progress(phase="drag", step=3, total=params["max_steps"]))
        if should_cancel():
            from draggan_core import errors
            raise errors.cancelled()
        self.sessions += 1
        w, h = size
        session = "none" if self.session_prefix == "none" else f"{self.session_prefix}{self.sessions}"
        return protocol.Result(image=protocol.Image(w, h, 3, bytes(255 - b for b in rgb)), points=targets,
                               session_id=session, inversion=quality, steps=3)

    def continue_session(self, session_id, size, handles, targets, mask, params, on_progress, should_cancel,
                         model=""):
        from draggan_core import link

        self._note_undo()
        self.calls.append(("continue", dict(session_id=session_id, size=size, handles=handles,
                                            targets=targets, mask=mask, params=params)))
        if self.session_gone:
            raise link.SessionGone("unknown session")
        on_progress(protocol.Progress(phase="drag", step=1, total=params["max_steps"]))
        w, h = size
        return protocol.Result(image=protocol.Image(w, h, 3, bytes([200]) * (w * h * 3)), points=targets,
                               session_id=session_id, steps=1)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls if kind in ("edit", "continue")]


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend()
