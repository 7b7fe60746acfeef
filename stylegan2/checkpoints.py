"""Load generators from official checkpoints without running any code from the file.

Three formats:

* **Official StyleGAN2-ADA / StyleGAN3 PyTorch pickles** (every checkpoint DragGAN offers).  They
  embed module source and rebuild objects through ``torch_utils.persistence``.  A restricted
  unpickler resolves only the handful of globals the format needs, each to a function of ours;
  persistent objects become inert :class:`_PersistentStub` records (class name + init kwargs +
  state), from which we build *our* :class:`~stylegan2.networks.Generator` and load the weights.
  Storage blobs (``torch.storage._load_from_bytes``, which would call ``torch.load`` with
  ``weights_only=False``) are decoded by our own function with ``weights_only=True``.
* **Legacy TensorFlow StyleGAN2 pickles** (``stylegan2-car-config-f.pkl``, ...): the same
  restricted unpickler, numpy arrays allowed, variables converted by name.
* **Our own format** (models the project trains): a ``torch.save`` dict of config + state dict,
  loaded with ``weights_only=True``.

Anything unexpected raises :class:`CheckpointError` with one clear message; nothing runs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .networks import Generator

OWN_FORMAT = "draggan-gimp/stylegan2-generator"
OWN_FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint could not be loaded; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------
# Inert records the restricted unpickler builds instead of running the file's code.


class _PersistentStub:
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` would have rebuilt."""

    def __init__(self, meta: Any) -> None:
        if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
            raise CheckpointError("malformed persistent object in the pickle (expected a class record)")
        if meta.get("version") not in (5, 6):
            raise CheckpointError(f"unsupported torch_utils.persistence version {meta.get('version')!r}")
        self.class_name = str(meta.get("class_name"))
        self.module_src = str(meta.get("module_src", ""))
        state = meta["state"]
        if not isinstance(state, dict):
            raise CheckpointError(f"persistent {self.class_name} has no state dict")
        self.state: dict[str, Any] = state
        self.init_args = state.get("_init_args", ())
        self.init_kwargs = state.get("_init_kwargs", {})


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class _TFNetworkStub:
    """Stand-in for ``dnnlib.tflib.network.Network``: keeps the pickled state, nothing else."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError("malformed TensorFlow network record")
        self.state = state

    def variables(self, prefix: str = "") -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, value in self.state.get("variables", []):
            out[prefix + str(name)] = value
        for name, comp in dict(self.state.get("components", {})).items():
            if not isinstance(comp, _TFNetworkStub):
                raise CheckpointError(f"TensorFlow component {name!r} is not a network")
            out.update(comp.variables(prefix + str(name) + "/"))
        return out


def _load_storage_from_bytes(blob: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes`` that cannot run code."""
    if not isinstance(blob, (bytes, bytearray)):
        raise CheckpointError("storage record is not a byte string")
    try:
        return torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refused a tensor storage blob that holds more than tensor data: {exc}") from exc


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                       requires_grad: bool = False, backward_hooks: Any = None, metadata: Any = None
                       ) -> torch.Tensor:
    if isinstance(storage, torch.UntypedStorage):
        raise CheckpointError("untyped storage without dtype in tensor record")
    if not isinstance(storage, torch.TypedStorage):
        raise CheckpointError(f"tensor record refers to {type(storage).__name__}, not a storage")
    t = torch.empty(0, dtype=storage.dtype)
    t.set_(storage._untyped_storage, int(storage_offset), tuple(int(s) for s in size),
           tuple(int(s) for s in stride))
    return t


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None,
                       *state: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("parameter record does not hold a tensor")
    return torch.nn.Parameter(data, requires_grad=False)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CheckpointError(f"refused numpy scalar of dtype {dtype!r}")
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("numpy scalar record without raw bytes")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _numpy_dtype(*args: Any) -> np.dtype:
    if not args or not isinstance(args[0], str):
        raise CheckpointError("malformed numpy dtype record")
    dt = np.dtype(args[0])
    if dt.hasobject:
        raise CheckpointError("refused numpy object dtype")
    return dt


def _numpy_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise CheckpointError("numpy reconstruct of something other than ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


_COMMON_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _PersistentStub,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
}
_TF_GLOBALS: dict[tuple[str, str], Any] = {
    ("dnnlib.tflib.network", "Network"): _TFNetworkStub,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}
_ALLOWED = {**_COMMON_GLOBALS, **_TORCH_GLOBALS, **_TF_GLOBALS}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refused to load: the pickle references the global '{module}.{name}', which a "
                "StyleGAN2 checkpoint never needs (the file may be malicious or of another kind)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("refused to load: the pickle uses persistent ids (not a network pickle)")


def _unpickle(data: bytes) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RuntimeError, OverflowError, MemoryError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"the file is corrupt or truncated ({type(exc).__name__}: {exc})") from exc


# ----------------------------------------------------------------------------------------------
# Official PyTorch pickles.


def _collect_state(stub: _PersistentStub, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a persistent module record into a state dict with NVIDIA's names."""
    state: dict[str, torch.Tensor] = {}
    for kind in ("_parameters", "_buffers"):
        for name, value in dict(stub.state.get(kind, {})).items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is not a tensor")
            if kind == "_buffers" and name in stub.state.get("_non_persistent_buffers_set", set()):
                continue
            state[prefix + name] = value
    for name, child in dict(stub.state.get("_modules", {})).items():
        if child is None:
            continue
        if not isinstance(child, _PersistentStub):
            raise CheckpointError(f"submodule {prefix}{name} is not a network record")
        state.update(_collect_state(child, prefix + name + "."))
    return state


_SUPPORTED_KWARGS = {"z_dim", "w_dim", "c_dim", "img_resolution", "img_channels", "mapping_kwargs",
                     "synthesis_kwargs", "channel_base", "channel_max", "num_fp16_res", "conv_clamp",
                     "architecture", "resample_filter", "use_noise", "activation", "fp16_channels_last",
                     "fused_modconv_default", "square", "resize"}


def _plain(value: Any) -> Any:
    """Builtin containers and scalars only, so the file loads with ``weights_only=True``
    (e.g. ``torch.__version__`` is a str subclass that the safe unpickler refuses)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _generator_from_official(stub: Any) -> Generator:
    if not isinstance(stub, _PersistentStub):
        raise CheckpointError("the pickle's G_ema is not a network record")
    if stub.class_name != "Generator":
        raise CheckpointError(f"G_ema is a {stub.class_name}, not a Generator")
    state = _collect_state(stub)
    if any(k.startswith("synthesis.input.") for k in state) or "SynthesisInput" in stub.module_src:
        raise CheckpointError("this is a StyleGAN3 generator; only StyleGAN2 generators are supported")
    kwargs = _plain(dict(stub.init_kwargs))
    args = list(stub.init_args)
    for key, value in zip(["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"], args):
        kwargs[key] = value
    unknown = set(kwargs) - _SUPPORTED_KWARGS
    if unknown:
        raise CheckpointError(f"unsupported generator options {sorted(unknown)} in the checkpoint")
    if kwargs.pop("resize", None) is not None:
        raise CheckpointError("generators with an output resize are not supported")
    square = kwargs.pop("square", True)
    synthesis_kwargs = dict(kwargs.pop("synthesis_kwargs", {}) or {})
    for key in list(kwargs):
        if key not in ("z_dim", "w_dim", "c_dim", "img_resolution", "img_channels", "mapping_kwargs"):
            synthesis_kwargs[key] = kwargs.pop(key)
    if not square:  # StyleGAN-Human: width is half the height at every block
        kwargs["img_width"] = kwargs["img_resolution"] // 2
    try:
        G = Generator(synthesis_kwargs=synthesis_kwargs, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build a generator from the checkpoint's options: {exc}") from exc
    _load_state(G, state)
    return G


def _load_state(G: Generator, state: dict[str, torch.Tensor]) -> None:
    own = G.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not match the generator: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{key}: shape {tuple(value.shape)} in the file, "
                                  f"{tuple(own[key].shape)} expected")
    G.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


# ----------------------------------------------------------------------------------------------
# Legacy TensorFlow pickles.


def _tf_kwargs(tf_G: _TFNetworkStub) -> dict[str, Any]:
    kw = dict(tf_G.state.get("static_kwargs", {}))
    known = {"latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "fmap_base", "fmap_max",
             "architecture", "resample_kernel", "use_noise", "nonlinearity", "mapping_layers", "label_fmaps",
             "mapping_fmaps", "mapping_nonlinearity", "mapping_lrmul", "w_avg_beta", "truncation_psi",
             "truncation_cutoff", "style_mixing_prob", "structure", "conditioning", "fused_modconv",
             "num_fp16_res", "conv_clamp", "dlatent_avg_beta", "randomize_noise", "is_template_graph",
             "components", "func_name", "fmap_decay", "fmap_min", "dtype"}
    unknown = set(kw) - known
    if unknown:
        raise CheckpointError(f"unknown TensorFlow generator option(s) {sorted(unknown)}")
    if int(tf_G.state.get("version", 0)) < 4:
        raise CheckpointError("TensorFlow pickle version too old (StyleGAN2 pickles are version 4)")

    def get(name: str, default: Any) -> Any:
        value = kw.get(name, default)
        return default if value is None else value

    return dict(
        z_dim=int(get("latent_size", 512)), c_dim=int(get("label_size", 0)), w_dim=int(get("dlatent_size", 512)),
        img_resolution=int(get("resolution", 1024)), img_channels=int(get("num_channels", 3)),
        mapping_kwargs=dict(num_layers=int(get("mapping_layers", 8)),
                            embed_features=kw.get("label_fmaps"), layer_features=kw.get("mapping_fmaps"),
                            activation=get("mapping_nonlinearity", "lrelu"),
                            lr_multiplier=float(get("mapping_lrmul", 0.01)),
                            w_avg_beta=float(get("w_avg_beta", 0.995))),
        synthesis_kwargs=dict(channel_base=int(get("fmap_base", 16384)) * 2, channel_max=int(get("fmap_max", 512)),
                              num_fp16_res=int(get("num_fp16_res", 0)), conv_clamp=kw.get("conv_clamp"),
                              architecture=get("architecture", "skip"),
                              resample_filter=list(get("resample_kernel", [1, 3, 3, 1])),
                              use_noise=bool(get("use_noise", True)), activation=get("nonlinearity", "lrelu")),
    )


def tf_to_torch_name_map(G: Generator) -> dict[str, tuple[str, str]]:
    """Our parameter name -> (TF variable name, transform) for a TF StyleGAN2 generator.

    Transforms: ``"T"`` transpose a dense weight, ``"conv"`` HWIO -> OIHW, ``"conv_flip"`` same
    with a spatial flip (TF's transposed-conv weights), ``"const"`` drop the batch axis,
    ``"noise"`` take ``[0, 0]``, ``"bias+1"`` modulation bias offset, ``""`` as is.
    """
    names: dict[str, tuple[str, str]] = {"mapping.w_avg": ("dlatent_avg", "")}
    for i in range(G.mapping.num_layers):
        names[f"mapping.fc{i}.weight"] = (f"mapping/Dense{i}/weight", "T")
        names[f"mapping.fc{i}.bias"] = (f"mapping/Dense{i}/bias", "")
    if G.c_dim:
        names["mapping.embed.weight"] = ("mapping/LabelEmbed/weight", "T")
        names["mapping.embed.bias"] = ("mapping/LabelEmbed/bias", "")
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        tf = f"synthesis/{res}x{res}"
        log2 = res.bit_length() - 1
        layers: list[tuple[str, str, str, int]] = []
        if res == 4:
            names["synthesis.b4.const"] = ("synthesis/4x4/Const/const", "const")
            layers.append(("conv1", "Conv", "conv", 0))
        else:
            layers.append(("conv0", "Conv0_up", "conv_flip", log2 * 2 - 5))
            layers.append(("conv1", "Conv1", "conv", log2 * 2 - 4))
        for ours, theirs, transform, noise_idx in layers:
            p = f"synthesis.b{res}.{ours}"
            names[f"{p}.weight"] = (f"{tf}/{theirs}/weight", transform)
            names[f"{p}.bias"] = (f"{tf}/{theirs}/bias", "")
            names[f"{p}.noise_const"] = (f"synthesis/noise{noise_idx}", "noise")
            names[f"{p}.noise_strength"] = (f"{tf}/{theirs}/noise_strength", "")
            names[f"{p}.affine.weight"] = (f"{tf}/{theirs}/mod_weight", "T")
            names[f"{p}.affine.bias"] = (f"{tf}/{theirs}/mod_bias", "bias+1")
        if hasattr(block, "torgb"):
            names[f"synthesis.b{res}.torgb.weight"] = (f"{tf}/ToRGB/weight", "conv")
            names[f"synthesis.b{res}.torgb.bias"] = (f"{tf}/ToRGB/bias", "")
            names[f"synthesis.b{res}.torgb.affine.weight"] = (f"{tf}/ToRGB/mod_weight", "T")
            names[f"synthesis.b{res}.torgb.affine.bias"] = (f"{tf}/ToRGB/mod_bias", "bias+1")
        if hasattr(block, "skip"):
            names[f"synthesis.b{res}.skip.weight"] = (f"{tf}/Skip/weight", "conv_flip")
    return names


def _apply_tf_transform(value: np.ndarray, transform: str) -> np.ndarray:
    if transform == "T":
        return value.transpose()
    if transform == "conv":
        return value.transpose(3, 2, 0, 1)
    if transform == "conv_flip":
        return value[::-1, ::-1].transpose(3, 2, 0, 1)
    if transform == "const":
        return value[0]
    if transform == "noise":
        return value[0, 0]
    if transform == "bias+1":
        return value + 1
    return value


def _generator_from_tf(tf_G: _TFNetworkStub) -> Generator:
    kwargs = _tf_kwargs(tf_G)
    try:
        G = Generator(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build a generator from the TensorFlow options: {exc}") from exc
    tf_vars = tf_G.variables()
    # Some TF networks keep ToRGB per level of detail ("orig" architecture).
    for name in list(tf_vars):
        m = re.fullmatch(r"ToRGB_lod(\d+)/(.*)", name)
        if m:
            r = G.img_resolution // (2 ** int(m.group(1)))
            tf_vars[f"synthesis/{r}x{r}/ToRGB/{m.group(2)}"] = tf_vars[name]
    state: dict[str, torch.Tensor] = {}
    own = G.state_dict()
    for ours, (theirs, transform) in tf_to_torch_name_map(G).items():
        if theirs not in tf_vars:
            raise CheckpointError(f"TensorFlow variable {theirs!r} (for {ours}) is missing")
        value = tf_vars[theirs]
        if not isinstance(value, np.ndarray) or value.dtype.hasobject:
            raise CheckpointError(f"TensorFlow variable {theirs!r} is not a numeric array")
        state[ours] = torch.from_numpy(np.array(_apply_tf_transform(value, transform)))  # copy, 0-d stays 0-d
    for key, value in own.items():
        if key.endswith("resample_filter"):
            state[key] = value
    _load_state(G, state)
    return G


# ----------------------------------------------------------------------------------------------
# Our own format.


def save_generator(G: Generator, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
    """Write ``G`` in our format: loadable with ``torch.load(weights_only=True)``; atomic."""
    path = Path(path)
    payload = {
        "format": OWN_FORMAT,
        "version": OWN_FORMAT_VERSION,
        "config": _plain(G.config),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in G.state_dict().items()},
        "meta": _plain(dict(meta or {})),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _generator_from_own(payload: Any) -> tuple[Generator, dict[str, Any]]:
    if not isinstance(payload, dict) or payload.get("format") != OWN_FORMAT:
        raise CheckpointError("this torch file is not a generator saved by this project "
                              "(no 'format' marker); official models are .pkl files")
    if payload.get("version") != OWN_FORMAT_VERSION:
        raise CheckpointError(f"generator file version {payload.get('version')!r} is not supported "
                              f"(expected {OWN_FORMAT_VERSION})")
    config = payload.get("config")
    state = payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise CheckpointError("generator file lacks its config or state dict")
    try:
        G = Generator(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"generator file has an invalid config: {exc}") from exc
    _load_state(G, state)
    return G, dict(payload.get("meta") or {})


# ----------------------------------------------------------------------------------------------
# Entry point.


def load_generator(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Generator:
    """Load a generator from an official pickle, a TF StyleGAN2 pickle or our own ``.pt`` file.

    Returns our :class:`Generator` in eval mode with ``requires_grad_(False)`` on ``device``.
    The model's metadata (our format only) is in ``G.meta``.
    Raises :class:`CheckpointError` (one clear message) for missing, corrupt, truncated,
    wrong-kind or malicious files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if not data:
        raise CheckpointError(f"checkpoint {path} is empty")
    meta: dict[str, Any] = {}
    try:
        G = _load_from_bytes(data, meta)
    except CheckpointError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from None
    G.meta = meta  # type: ignore[assignment]
    return G.eval().requires_grad_(False).to(device)


def _load_from_bytes(data: bytes, meta: dict[str, Any]) -> Generator:
    if data[:2] == b"PK":  # zip container: torch.save's format (ours)
        try:
            payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"not a loadable generator file ({text})") from exc
        G, own_meta = _generator_from_own(payload)
        meta.update(own_meta)
        return G
    if data[:1] != b"\x80":
        raise CheckpointError("not a pickle or torch file (unknown header)")
    obj = _unpickle(data)
    if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, _TFNetworkStub) for n in obj):
        return _generator_from_tf(obj[2])  # (G, D, Gs): Gs is the moving average used for inference
    if isinstance(obj, dict):
        if "G_ema" not in obj:
            kinds = ", ".join(sorted(str(k) for k in obj)) or "nothing"
            raise CheckpointError(f"the pickle holds no generator (G_ema); it holds {kinds}")
        return _generator_from_official(obj["G_ema"])
    raise CheckpointError(f"the pickle holds a {type(obj).__name__}, not a network dict")
