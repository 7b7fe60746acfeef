"""Fixtures for the backend tests: a tiny random generator file, a real server on 127.0.0.1 (real
engine + inversion on CPU), and a fake runner for the tests where the model is irrelevant
(scheduling, faults, security)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backend.edit_runner import EditRunner
from backend.server import Server
from draggan_wire import protocol
from draggan_wire.protocol import ErrorCode, ProtocolError
from testkit.servers import SIDE, start_server  # noqa: F401  (the backend tests import them from here)

REPO = Path(__file__).resolve().parents[2]
# Radii are "pixels at 512" (the engine scales them): 10 -> 1 px motion radius at 32 px.
FAST = protocol.EditParams(max_steps=4, r1=10.0, r2=20.0, preview_every=2)


def make_tiny_generator(path: Path, seed: int = 0) -> Path:
    import stylegan2

    torch.manual_seed(seed)
    G = stylegan2.Generator(z_dim=32, w_dim=32, img_resolution=SIDE, img_channels=3, channel_base=256,
                            channel_max=32, mapping_kwargs={"num_layers": 2})
    stylegan2.save_generator(G, path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_generator(tmp_path_factory.mktemp("models") / "tiny.pt")


@pytest.fixture(scope="session")
def photo(tiny_model: Path) -> protocol.Image:
    """A 32x32 RGB image the tiny generator can reproduce (its own output at a random latent)."""
    import stylegan2

    G = stylegan2.load_generator(tiny_model)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)))
        img = G.synthesis(ws, noise_mode="const")
    pixels = (img[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return protocol.Image(SIDE, SIDE, 3, np.ascontiguousarray(pixels).tobytes())


def real_runner(tiny_model: Path, **kwargs: Any) -> EditRunner:
    kwargs.setdefault("inversion_steps", 1)  # a short projection keeps the CPU tests quick
    kwargs.setdefault("cache_dir", None)
    return EditRunner(models={"tiny": tiny_model}, device="cpu", **kwargs)


@pytest.fixture(scope="session")
def real_server(tiny_model: Path) -> Iterator[Server]:
    """One real server for the session (the ST-LPIPS network loads once per process)."""
    server = start_server(real_runner(tiny_model), queue_limit=4)
    yield server
    server.stop()


def edit(handles: list[tuple[float, float]] | None = None, targets: list[tuple[float, float]] | None = None,
         image: protocol.Image | None = None, image_id: str | None = None,
         params: protocol.EditParams = FAST, model: str = "tiny", mask: protocol.Image | None = None,
         result: str = "detail") -> protocol.Edit:
    return protocol.Edit(model=model, handles=handles or [(10.0, 12.0)], targets=targets or [(16.0, 12.0)],
                         image=image, image_id=image_id, params=params, mask=mask, result=result)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` (bounded); fail naming ``what``. For waiting on server state, not timing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class FakeRunner:
    """A runner without a model, for scheduling/fault/security tests only: ``steps`` drag steps of
    ``step_s`` seconds each, honouring should_cancel; ``fail`` raises that exception instead."""

    device = "cpu"

    def __init__(self, steps: int = 5, step_s: float = 0.01, fail: BaseException | None = None) -> None:
        self.steps = steps
        self.step_s = step_s
        self.fail = fail
        self.started = threading.Event()
        self.runs = 0
        self.owners: list[str] = []

    def models(self) -> list[protocol.ModelEntry]:
        return [protocol.ModelEntry("fake", SIDE, SIDE, True)]

    def memory(self) -> tuple[int, int]:
        return (0, 0)

    def precheck(self, owner: str, request: Any) -> None:
        if isinstance(request, protocol.Edit) and request.model != "fake":
            raise ProtocolError(ErrorCode.UNKNOWN_MODEL, f"model '{request.model}' is not installed", "fields.model")

    def purge(self, owner: str) -> tuple[int, int]:
        return (0, 0)

    def run(self, owner: str, request: Any, emit: Callable[[protocol.Progress], None],
            should_cancel: Callable[[], bool], should_stop: Callable[[], bool] | None = None) -> protocol.Result:
        self.runs += 1
        self.owners.append(owner)
        self.started.set()
        if self.fail is not None:
            raise self.fail
        for step in range(1, self.steps + 1):
            if should_cancel():
                raise ProtocolError(ErrorCode.CANCELLED, "cancelled")
            time.sleep(self.step_s)
            emit(protocol.Progress(phase="drag", step=step, total=self.steps, points=[(1.0, 1.0)], loss=0.5))
        image = protocol.Image(SIDE, SIDE, 3, bytes(SIDE * SIDE * 3))
        return protocol.Result(image=image, points=[(1.0, 1.0)], session_id="s", image_id="i", steps=self.steps)


def fake_edit() -> protocol.Edit:
    return protocol.Edit(model="fake", handles=[(1.0, 1.0)], targets=[(2.0, 2.0)],
                         image=protocol.Image(SIDE, SIDE, 3, bytes(SIDE * SIDE * 3)))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
logging.getLogger("draggan.backend").setLevel(logging.INFO)


class StoreRunner(EditRunner):
    """The production EditRunner (its photo and session stores with their fair eviction, its
    prechecks, its 'evicted to make room' answers) with the model pipeline faked: an edit takes
    ``params.max_steps`` steps of ``step_s`` seconds and stores its photo and a session as the real
    one does; a continue needs a session this owner holds. For the fair-limit tests."""

    def __init__(self, tiny_model: Path, step_s: float = 0.01, **kwargs: Any) -> None:
        kwargs.setdefault("cache_dir", None)
        super().__init__(models={"fake": tiny_model}, device="cpu", **kwargs)
        self.step_s = step_s

    def _steps(self, total: int, emit: Callable[[protocol.Progress], None], should_cancel: Callable[[], bool]) -> None:
        for step in range(1, total + 1):
            if should_cancel():
                raise ProtocolError(ErrorCode.CANCELLED, "cancelled")
            time.sleep(self.step_s)
            emit(protocol.Progress(phase="drag", step=step, total=total, points=[(1.0, 1.0)], loss=0.5))

    def _result(self, session_id: str, image_id: str, steps: int) -> protocol.Result:
        return protocol.Result(image=protocol.Image(SIDE, SIDE, 3, bytes(SIDE * SIDE * 3)), points=[(1.0, 1.0)],
                               session_id=session_id, image_id=image_id, steps=steps)

    def _edit(self, owner: str, req: protocol.Edit, emit: Callable[[protocol.Progress], None],
              should_cancel: Callable[[], bool], should_stop: Callable[[], bool]) -> protocol.Result:
        import hashlib

        from backend.sessions import HeldSession

        if req.image is not None:
            assert isinstance(req.image, protocol.Image)
            pixels: Any = req.image.data
        else:
            assert req.image_id is not None
            pixels = self.images.get(owner, req.image_id)
            if pixels is None:
                raise self._unknown_image(req.image_id)
        self._steps(req.params.max_steps, emit, should_cancel)
        image_id = req.image_id or hashlib.sha256(owner.encode() + bytes(pixels)).hexdigest()[:32]
        self.images.put(owner, pixels, key=image_id)
        held = HeldSession(req.model, None, None, image_id, req.params, {}, (SIDE, SIDE))
        session_id = self.sessions.put(owner, held)
        return self._result(session_id, image_id, req.params.max_steps)

    def _continue(self, owner: str, req: protocol.Continue, emit: Callable[[protocol.Progress], None],
                  should_cancel: Callable[[], bool], should_stop: Callable[[], bool]) -> protocol.Result:
        held = self.sessions.get(owner, req.session_id)
        if held is None:
            raise self._unknown_session(req.session_id)
        params = req.params or held.params
        self._steps(params.max_steps, emit, should_cancel)
        return self._result(req.session_id, held.image_id, params.max_steps)
