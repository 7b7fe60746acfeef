"""The plug-in's view of the backend: draggan_wire.client behind a small interface, errors turned
into PluginErrors that say what to do.

draggan_wire/ (the repository's wire package: protocol, client, relay bridge) is staged beside the
plug-in by install.py, as it is; pyzmq is imported only when a connection is made, so the plug-in
registers and shows its dialog without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import errors, identity


@dataclass(frozen=True)
class ModelChoice:
    name: str
    width: int
    height: int
    loaded: bool
    poor_stlpips: float = 0.0     # the model's "poor inversion" thresholds from welcome (0 = defaults)
    poor_psnr_db: float = 0.0
    alignment: str = "none"       # "ffhq": with align=auto the plug-in sends a native crop (protocol 3)
    framing: str = "any"          # "whole": the model draws whole subjects; the Auto crop sends the whole layer


def wire() -> tuple[Any, Any]:
    """(protocol, client) modules of the staged draggan_wire package, or a PluginError."""
    try:
        from draggan_wire import client, protocol
    except ImportError as exc:
        if getattr(exc, "name", "") == "zmq":
            raise errors.pyzmq_missing(str(exc)) from None
        raise errors.wire_missing(str(exc)) from None
    return protocol, client


def import_pyzmq() -> Any:
    """pyzmq, or a PluginError saying how to get it into GIMP's Python."""
    wire()  # draggan_wire adds the vendored pyzmq folder (install.py) to sys.path
    try:
        import zmq
    except ImportError as exc:
        from . import relay  # no pyzmq here (GIMP for Windows): relay through the backend venv's Python

        try:
            relayed = relay.install()
        except relay.ZMQError as relay_exc:
            raise errors.pyzmq_missing(f"{exc}; the relay failed too: {relay_exc}") from None
        if relayed is None:
            raise errors.pyzmq_missing(str(exc)) from None
        return relayed
    return zmq


def explain(exc: Exception, address: str, timeout_s: float, models: list[str] | None = None,
            model: str = "") -> errors.PluginError:
    """A protocol.ProtocolError (or anything else from the client) as a PluginError for the user;
    its ``code`` is the protocol's."""
    code = getattr(exc, "code", "")
    error = _explain(code, getattr(exc, "message", None) or str(exc), address, timeout_s, models, model)
    error.code = code if isinstance(code, str) else ""
    return error


def _explain(code: str, message: str, address: str, timeout_s: float, models: list[str] | None,
             model: str) -> errors.PluginError:
    if code in ("unavailable", "timeout"):
        return errors.backend_unreachable(address, timeout_s, message)
    if code == "unknown_model":
        return errors.model_not_available(model, models or [], message)
    if code == "busy":
        return errors.backend_busy(address, message)
    if code == "cancelled":
        return errors.cancelled()
    if code == "out_of_memory":
        return errors.PluginError(
            f"DragGAN: the backend at {address} ran out of memory ({message}). Use a smaller model, "
            "turn PTI off, or close other GPU programs on the server, then try again."
        )
    if code == "version_mismatch":
        return errors.PluginError(f"DragGAN: plug-in and backend do not match: {message}")
    if code == "auth":
        return errors.PluginError(f"DragGAN: the backend at {address} refused the connection: {message}")
    if code == "bad_request":
        return errors.PluginError(f"DragGAN: the backend rejected the request: {message}", calling=True)
    if code:
        return errors.backend_failed(address, f"[{code}] {message}")
    return errors.backend_failed(address, message)


class Backend:
    """A connection to one backend. Use as a context manager; every method raises PluginError."""

    def __init__(self, address: str, timeout_s: float, connect_timeout_s: float = 2.0, retries: int = 2,
                 plugin_config: dict[str, Any] | None = None, token: str | None = None) -> None:
        self.address = address
        self.timeout_s = float(timeout_s)
        self.protocol, client_module = wire()
        import_pyzmq()
        self._models: list[ModelChoice] = []
        kwargs: dict[str, Any] = dict(timeout_s=self.timeout_s, connect_timeout_s=connect_timeout_s,
                                      retries=retries, client_name="gimp-draggan")
        keys = curve_keys(address, plugin_config or {})
        try:
            if keys is not None:
                kwargs["keys"] = client_module.ClientKeys(*keys)
            else:
                # The backend uses CURVE on every address, loopback included: a local one's keys are
                # in the DragGAN config folder of the user who runs it (`draggan-backend serve` makes
                # them), which is this user's; a server started with --insecure-tokens needs none.
                kwargs["keys"] = client_module.ClientKeys.for_endpoint(address)
        except Exception as exc:
            raise explain(exc, address, connect_timeout_s * retries) from None
        try:
            # The user's identity (GIMP's config folder): the backend files this user's sessions
            # under it, so "drag again" in a later run (a new process) reaches them.
            kwargs["token"] = token if token is not None else identity.load_token()
            self._client = client_module.Client(address, **kwargs)
        except Exception as exc:  # the client raises ProtocolError; anything else is a bug shown plainly
            raise explain(exc, address, connect_timeout_s * retries) from None
        self._connect_wait = connect_timeout_s * retries

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def models(self, refresh: bool = False) -> list[ModelChoice]:
        """Handshake (once, or again with `refresh`) and the models the backend serves, with their sizes."""
        if refresh:
            self._models = []
            self._client.welcome = None
        if not self._models:
            try:
                welcome = self._client.hello()
            except Exception as exc:
                raise explain(exc, self.address, self._connect_wait) from None
            self._models = [ModelChoice(m.name, m.width, m.height, m.loaded, getattr(m, "poor_stlpips", 0.0),
                                        getattr(m, "poor_psnr_db", 0.0), getattr(m, "alignment", "none"),
                                        getattr(m, "framing", "any"))
                            for m in welcome.models]
            if not self._models:
                raise errors.PluginError(
                    f"DragGAN: the backend at {self.address} serves no models. Install one on the server "
                    "(`python install.py --model NAME`) and restart `draggan-backend serve`."
                )
        return self._models

    def pick_model(self, wanted: str) -> ModelChoice:
        """The model named `wanted` ("" = the first loaded one, else the first listed)."""
        return choose_model(self.models(), wanted)

    def refresh(self) -> None:
        """Handshake again (a long-lived connection, the panel's, before each job): a backend that
        restarted since the last job is then this connection's backend, not a lost one."""
        try:
            self._client.welcome = None
            self._client.hello()
        except Exception as exc:
            raise explain(exc, self.address, self._connect_wait) from None

    def _run(self, request: Any, on_progress: Callable[[Any], None], should_cancel: Callable[[], bool],
             model: str, should_stop: Callable[[], bool] | None = None) -> Any:
        try:
            if should_stop is None:
                return self._client.run(request, on_progress=on_progress, should_cancel=should_cancel)
            return self._client.run(request, on_progress=on_progress, should_cancel=should_cancel,
                                    should_stop=should_stop)
        except errors.PluginError:
            raise
        except Exception as exc:
            if getattr(exc, "code", "") == "unknown_session":
                raise SessionGone(str(exc)) from None
            raise explain(exc, self.address, self.timeout_s, [m.name for m in self._models], model) from None

    def edit(self, model: str, rgb: bytes, size: tuple[int, int], handles: list[tuple[float, float]],
             targets: list[tuple[float, float]], mask: bytes | None, params: dict[str, Any],
             on_progress: Callable[[Any], None], should_cancel: Callable[[], bool], align: str = "off",
             result: str = "detail", should_stop: Callable[[], bool] | None = None) -> Any:
        """Invert the crop `rgb` (3 bytes per pixel, `size` = (width, height) pixels, up to 2048 a side)
        and drag; -> protocol.Result, RGBA in the crop's frame (protocol 4). align "auto": the backend
        aligns the face for a model with an alignment; result "detail" or "model"."""
        p = self.protocol
        w, h = size
        request = p.Edit(model=model, handles=handles, targets=targets,
                         image=p.Image(w, h, 3, rgb),
                         mask=None if mask is None else p.Image(w, h, 1, mask),
                         params=p.EditParams(**params), align=align, result=result)
        return self._run(request, on_progress, should_cancel, model, should_stop)

    def continue_session(self, session_id: str, size: tuple[int, int], handles: list[tuple[float, float]],
                         targets: list[tuple[float, float]], mask: bytes | None, params: dict[str, Any],
                         on_progress: Callable[[Any], None], should_cancel: Callable[[], bool],
                         model: str = "", result: str | None = None,
                         should_stop: Callable[[], bool] | None = None) -> Any:
        """Drag again from the session's latent (no inversion); raises SessionGone when the
        backend no longer holds it."""
        p = self.protocol
        w, h = size
        request = p.Continue(session_id=session_id, handles=handles, targets=targets,
                             mask=None if mask is None else p.Image(w, h, 1, mask),
                             params=p.EditParams(**params), result=result)
        return self._run(request, on_progress, should_cancel, model, should_stop)

    def undo(self, session_id: str, on_progress: Callable[[Any], None], result: str | None = None) -> Any:
        """Take back the session's last drag (protocol 4): the result of the state before it; raises
        SessionGone when the backend no longer holds the session."""
        request = self.protocol.Undo(session_id=session_id, result=result)
        return self._run(request, on_progress, lambda: False, "")


def curve_keys(address: str, plugin_config: dict[str, Any]) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) Z85 keys from draggan.json (written by
    `install.py`: this machine's backend, or `--remote`'s) when `address` is the backend that file
    is for; None otherwise (then the DragGAN keys folder is used, when it has keys)."""
    from .decision import normalise_address

    configured = plugin_config.get("address")
    names = ("server_public_key", "client_public_key", "client_secret_key")
    values = [plugin_config.get(n) for n in names]
    if not isinstance(configured, str) or normalise_address(configured) != normalise_address(address):
        return None
    if not all(isinstance(v, str) and v for v in values):
        return None
    server_public, client_public, client_secret = (str(v).encode("ascii") for v in values)
    return server_public, client_public, client_secret


class SessionGone(Exception):
    """The backend no longer holds the session (restarted, expired, purged): invert anew."""


def choose_model(models: list[Any], wanted: str) -> Any:
    """The model named `wanted` among `models` ("" = the first loaded one, else the first listed)."""
    if not wanted:
        loaded = [m for m in models if m.loaded]
        return (loaded or models)[0]
    for m in models:
        if m.name == wanted:
            return m
    raise errors.model_not_available(wanted, [m.name for m in models])
