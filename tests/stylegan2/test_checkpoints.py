"""Safe loading: official-format pickles, malicious payloads, TF conversion, our format, bad files."""

from __future__ import annotations

import io
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import stylegan2
from stylegan2 import CheckpointError
from stylegan2.checkpoints import tf_to_torch_name_map


def tiny_generator(seed: int = 0, **overrides) -> stylegan2.Generator:
    torch.manual_seed(seed)
    kwargs = dict(z_dim=16, w_dim=16, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                  mapping_kwargs={"num_layers": 2})
    kwargs.update(overrides)
    G = stylegan2.Generator(**kwargs)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
        G.mapping.w_avg.normal_()
    return G.eval()


def render(G, seed=3):
    z = torch.from_numpy(np.random.RandomState(seed).randn(2, G.z_dim))
    with torch.no_grad():
        return G.synthesis(G.mapping(z, truncation_psi=0.7), noise_mode="const")


# -- fake official modules, registered only while a test writes a pickle ---------------------------

@pytest.fixture
def official_modules(monkeypatch):
    """Modules named like NVIDIA's so that pickle writes the same globals the official files hold."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called: our loader must not resolve it to this
        raise AssertionError("the loader ran the file's reconstructor")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    for name, mod in {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
                      "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


class _Persistent:
    """Pickles like a torch_utils.persistence object: reduce to (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, fn, class_name, state, src="class Generator: ..."):
        self.fn, self.meta = fn, dict(type="class", version=6, module_src=src, class_name=class_name, state=state)

    def __reduce__(self):
        return (self.fn, (self.meta,))


def official_record(module: torch.nn.Module, fn, EasyDict, class_name, init_kwargs, src="..."):
    """A persistent record of ``module`` with nested records for its children (as NVIDIA's pickles)."""
    state = {
        "training": False,
        "_parameters": {k: v for k, v in module._parameters.items()},
        "_buffers": {k: v for k, v in module._buffers.items()},
        "_non_persistent_buffers_set": set(),
        "_modules": {k: official_record(m, fn, EasyDict, type(m).__name__, {}) for k, m in module._modules.items()},
        "_init_args": (),
        "_init_kwargs": EasyDict(init_kwargs),
    }
    return _Persistent(fn, class_name, state, src)


def write_official_pickle(path: Path, G, mods, extra=None, class_name="Generator", src="..."):
    cfg = G.config
    init_kwargs = dict(z_dim=cfg["z_dim"], w_dim=cfg["w_dim"], img_resolution=cfg["img_resolution"],
                       img_channels=cfg["img_channels"], c_dim=0, mapping_kwargs=mods.EasyDict(cfg["mapping_kwargs"]),
                       **cfg["synthesis_kwargs"])
    rec = official_record(G, mods.reconstruct, mods.EasyDict, class_name, init_kwargs, src)
    data = {"G": rec, "D": rec, "G_ema": rec, "augment_pipe": None, "training_set_kwargs": None}
    data.update(extra or {})
    path.write_bytes(pickle.dumps(data, protocol=4))


def test_official_format_round_trip(tmp_path, official_modules):
    G = tiny_generator()
    write_official_pickle(tmp_path / "g.pkl", G, official_modules)
    loaded = stylegan2.load_generator(tmp_path / "g.pkl")
    assert torch.equal(render(G), render(loaded))


def test_malicious_global_at_top_level_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G_ema": Evil()}, protocol=4))
    with pytest.raises(CheckpointError, match=r"posix\.mkdir|os\.mkdir"):
        stylegan2.load_generator(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_malicious_payload_inside_a_storage_blob_is_refused(tmp_path, official_modules):
    marker = tmp_path / "pwned-from-storage"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    blob = io.BytesIO()
    torch.save(Evil(), blob, _use_new_zipfile_serialization=False)  # the legacy format storages use

    class StorageRecord:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (blob.getvalue(),))

    G = tiny_generator()
    write_official_pickle(tmp_path / "g.pkl", G, official_modules)
    # Same file, with one more storage record hidden in the generator's state.
    rec = official_record(G, official_modules.reconstruct, official_modules.EasyDict, "Generator", {})
    rec.meta["state"]["_extra_storage"] = StorageRecord()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G_ema": rec}, protocol=4))
    with pytest.raises(CheckpointError, match="storage blob"):
        stylegan2.load_generator(tmp_path / "evil.pkl")
    assert not marker.exists()
    # The payload is live: what torch's own _load_from_bytes does (weights_only=False) runs it.
    torch.load(io.BytesIO(blob.getvalue()), weights_only=False)
    assert marker.is_dir()


def test_discriminator_only_and_stylegan3_give_clear_errors(tmp_path, official_modules):
    G = tiny_generator()
    rec = official_record(G, official_modules.reconstruct, official_modules.EasyDict, "Discriminator", {})
    (tmp_path / "d.pkl").write_bytes(pickle.dumps({"D": rec}, protocol=4))
    with pytest.raises(CheckpointError, match="no generator"):
        stylegan2.load_generator(tmp_path / "d.pkl")
    (tmp_path / "d2.pkl").write_bytes(pickle.dumps({"G_ema": rec}, protocol=4))
    with pytest.raises(CheckpointError, match="Discriminator, not a Generator"):
        stylegan2.load_generator(tmp_path / "d2.pkl")
    write_official_pickle(tmp_path / "sg3.pkl", G, official_modules, src="class SynthesisInput(torch.nn.Module): ...")
    with pytest.raises(CheckpointError, match="StyleGAN3"):
        stylegan2.load_generator(tmp_path / "sg3.pkl")


def test_own_format_round_trip_and_weights_only(tmp_path):
    G = tiny_generator(img_resolution=32, img_width=16)
    # torch.__version__ is a str subclass: meta must still load with weights_only=True.
    stylegan2.save_generator(G, tmp_path / "g.pt", meta={"name": "tiny", "iterations": 3, "torch": torch.__version__})
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    assert payload["format"].endswith("stylegan2-generator")
    loaded = stylegan2.load_generator(tmp_path / "g.pt")
    assert torch.equal(render(G), render(loaded))
    assert loaded.meta == {"name": "tiny", "iterations": 3, "torch": str(torch.__version__)}
    assert (loaded.img_height, loaded.img_width) == (32, 16)


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated-pickle", "truncated-torch",
                                  "plain-torch-dict", "wrong-shapes"])
def test_bad_files_give_one_clear_error(tmp_path, official_modules, kind):
    path = tmp_path / "bad"
    G = tiny_generator()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"GIF89a not a model")
    elif kind == "truncated-pickle":
        write_official_pickle(tmp_path / "full.pkl", G, official_modules)
        data = (tmp_path / "full.pkl").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-torch":
        stylegan2.save_generator(G, tmp_path / "full.pt")
        data = (tmp_path / "full.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "plain-torch-dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "wrong-shapes":
        stylegan2.save_generator(G, path)
        payload = torch.load(path, weights_only=True)
        payload["config"]["w_dim"] = 32
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        stylegan2.load_generator(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    expected = {"missing": "not found", "empty": "empty", "garbage": "unknown header",
                "truncated-pickle": "corrupt or truncated", "truncated-torch": "not a loadable",
                "plain-torch-dict": "not a generator saved by this project", "wrong-shapes": "shape"}[kind]
    assert expected in message


# -- legacy TensorFlow pickles ----------------------------------------------------------------------

_TF_INVERSE = {
    "T": lambda a: a.transpose(),
    "conv": lambda a: a.transpose(2, 3, 1, 0),
    "conv_flip": lambda a: a.transpose(2, 3, 1, 0)[::-1, ::-1],
    "const": lambda a: a[None],
    "noise": lambda a: a[None, None],
    "bias+1": lambda a: a - 1,
    "": lambda a: a,
}


def test_tensorflow_pickle_is_converted(tmp_path, monkeypatch):
    G = tiny_generator(seed=5)
    network_mod = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, state):
            self._state = state

        def __getstate__(self):
            return self._state

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    network_mod.Network = Network
    for name in ("dnnlib", "dnnlib.tflib"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "dnnlib.tflib.network", network_mod)

    # TF keeps variables per component; write them where a TF StyleGAN2 pickle has them.
    sd = G.state_dict()
    comps: dict[str, list] = {"mapping": [], "synthesis": [], "": []}
    for ours, (theirs, transform) in tf_to_torch_name_map(G).items():
        value = np.array(_TF_INVERSE[transform](sd[ours].numpy()))  # copy; keeps 0-d scalars 0-d
        comp, _, local = theirs.partition("/") if "/" in theirs else ("", "", theirs)
        comps[comp].append((local, value))
    static = dict(latent_size=16, dlatent_size=16, resolution=16, num_channels=3, fmap_base=64, fmap_max=16,
                  mapping_layers=2, truncation_psi=0.5)

    def net(name, variables, components=None):
        return Network(dict(version=4, name=name, static_kwargs=static, components=components or {},
                            build_module_src="def G_main(): pass", build_func_name="G_main", variables=variables))

    Gs = net("G", comps[""], {"mapping": net("G_mapping", comps["mapping"]),
                              "synthesis": net("G_synthesis", comps["synthesis"])})
    (tmp_path / "tf.pkl").write_bytes(pickle.dumps((Gs, net("D", []), Gs), protocol=4))
    loaded = stylegan2.load_generator(tmp_path / "tf.pkl")
    torch.testing.assert_close(render(loaded), render(G), atol=1e-5, rtol=1e-5)
    names = {t for t, _ in tf_to_torch_name_map(G).values()}
    assert {"synthesis/4x4/Const/const", "synthesis/noise0", "mapping/Dense0/weight", "dlatent_avg",
            "synthesis/8x8/Conv0_up/weight", "synthesis/16x16/ToRGB/mod_bias"} <= names

    # A TF pickle with an unknown option is refused by name.
    Gs._state["static_kwargs"] = dict(static, mystery_switch=1)
    (tmp_path / "tf2.pkl").write_bytes(pickle.dumps((Gs, Gs, Gs), protocol=4))
    with pytest.raises(CheckpointError, match="mystery_switch"):
        stylegan2.load_generator(tmp_path / "tf2.pkl")
