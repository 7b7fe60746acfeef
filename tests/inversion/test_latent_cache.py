"""LatentCache: hit/miss by pixels, model and settings; corruption -> recompute; bounded (LRU)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from inversion_helpers import assert_unchanged, planted_image, state_snapshot

from inversion import CacheEntry, LatentCache, ProjectionSettings, project
from inversion.cache import cache_key


def _entry(size: int = 1000, value: float = 0.0) -> CacheEntry:
    return CacheEntry(ws=torch.full((1, 4, 8), value), reconstruction=np.zeros((4, 4, 3), np.uint8),
                      psnr=20.0, stlpips=0.1, steps=3, generator_delta={"x": torch.zeros(size)})


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pt"))


def test_second_projection_is_a_cache_hit(tiny_G, quick_settings: ProjectionSettings, tmp_path: Path) -> None:
    cache = LatentCache(tmp_path / "cache", max_bytes=10_000_000)
    _, target = planted_image(tiny_G)
    settings = quick_settings.replace(steps=2, search_samples=0)  # caching needs no good fit
    first = project(tiny_G, target, settings=settings, cache=cache, model_id="tiny")
    assert not first.from_cache and len(_files(tmp_path / "cache")) == 1
    calls = []
    second = project(tiny_G, target, settings=settings, cache=cache, model_id="tiny",
                     progress=lambda *a: calls.append(a))
    assert second.from_cache and not calls
    assert torch.equal(second.ws, first.ws) and second.generator is tiny_G
    assert np.array_equal(second.reconstruction, first.reconstruction)
    assert (second.psnr, second.stlpips, second.steps) == (first.psnr, first.stlpips, first.steps)
    # every entry is plain tensors: loadable with weights_only=True
    payload = torch.load(_files(tmp_path / "cache")[0], weights_only=True)
    assert payload["generator_delta"] == {}

    # other pixels, other model id, other settings, pti on: all misses
    other = target.copy()
    other[0, 0, 0] ^= 1
    assert not project(tiny_G, other, settings=settings, cache=cache, model_id="tiny").from_cache
    assert not project(tiny_G, target, settings=settings, cache=cache, model_id="other").from_cache
    assert not project(tiny_G, target, settings=settings.replace(lr=0.09), cache=cache, model_id="tiny").from_cache
    assert len(_files(tmp_path / "cache")) == 4
    # default model id: a fingerprint of the generator, stable between calls
    project(tiny_G, target, settings=settings, cache=cache)
    assert project(tiny_G, target, settings=settings, cache=cache).from_cache


def test_pti_delta_is_cached_and_restored(tiny_G, quick_settings: ProjectionSettings, tmp_path: Path) -> None:
    cache = LatentCache(tmp_path, max_bytes=10_000_000)
    _, target = planted_image(tiny_G, seed=3)
    snapshot = state_snapshot(tiny_G)
    settings = quick_settings.replace(steps=2, search_samples=0, pti_steps=3)
    first = project(tiny_G, target, settings=settings, pti=True, cache=cache, model_id="tiny")
    second = project(tiny_G, target, settings=settings, pti=True, cache=cache, model_id="tiny")
    assert second.from_cache and second.generator is not tiny_G and second.generator is not first.generator
    a, b = first.generator.state_dict(), second.generator.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert_unchanged(tiny_G, snapshot)
    delta = torch.load(_files(tmp_path)[0], weights_only=True)["generator_delta"]
    # only what tuning changed: synthesis weights, no mapping weights, no unchanged buffers
    assert delta and all(n.startswith("synthesis.") for n in delta)
    assert not any(n.endswith(("resample_filter", "noise_const")) for n in delta)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "wrong_key", "empty"])
def test_corrupt_entry_is_deleted_and_recomputed(tiny_G, quick_settings: ProjectionSettings, tmp_path: Path,
                                                 damage: str) -> None:
    cache = LatentCache(tmp_path, max_bytes=10_000_000)
    _, target = planted_image(tiny_G)
    settings = quick_settings.replace(steps=2, search_samples=0)
    project(tiny_G, target, settings=settings, cache=cache, model_id="tiny")
    (path,) = _files(tmp_path)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a torch file at all")
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid entry stored under the wrong name
        payload = torch.load(path, weights_only=True)
        payload["key"] = "0" * 64
        torch.save(payload, path)
    key = path.stem
    assert cache.get(key) is None and not path.exists()  # corrupt -> miss, and deleted
    project(tiny_G, target, settings=settings, cache=cache, model_id="tiny")
    assert path.exists()
    assert project(tiny_G, target, settings=settings, cache=cache, model_id="tiny").from_cache


def test_eviction_is_lru_and_bounded(tmp_path: Path) -> None:
    probe = LatentCache(tmp_path / "probe", max_bytes=10**9)
    probe.put("aa", _entry())
    one = probe.total_bytes()
    cache = LatentCache(tmp_path / "c", max_bytes=int(one * 3.5))  # room for three entries
    keys = ["01", "02", "03"]
    for i, key in enumerate(keys):
        assert cache.put(key, _entry(value=i))
        os.utime(cache.path_for(key), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.get("01") is not None  # a hit makes "01" the most recently used
    assert cache.put("04", _entry(value=4))
    assert cache.get("02") is None  # the least recently used went
    assert all(cache.get(k) is not None for k in ("01", "03", "04"))
    assert cache.total_bytes() <= cache.max_bytes
    assert not list((tmp_path / "c").glob(".tmp-*"))  # atomic writes leave nothing behind
    # an entry bigger than the whole cache is not stored (and evicts nothing)
    assert not cache.put("05", _entry(size=int(one)))
    assert cache.get("05") is None and len(_files(tmp_path / "c")) == 3


def test_cache_folder_may_be_deleted_any_time(tmp_path: Path) -> None:
    cache = LatentCache(tmp_path / "gone", max_bytes=10**7)
    assert cache.get("ab") is None and cache.total_bytes() == 0  # never created: a miss
    assert cache.put("ab", _entry())
    for f in (tmp_path / "gone").iterdir():
        f.unlink()
    (tmp_path / "gone").rmdir()
    assert cache.get("ab") is None
    assert cache.put("ab", _entry()) and cache.get("ab") is not None
    cache.clear()
    assert cache.get("ab") is None


def test_keys_and_arguments() -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    k = cache_key(pixels, "m", {"a": 1})
    assert k == cache_key(pixels.copy(), "m", {"a": 1})
    assert k != cache_key(pixels.reshape(8, 2, 3), "m", {"a": 1})  # same bytes, other shape
    assert k != cache_key(pixels, "m", {"a": 2}) and k != cache_key(pixels, "n", {"a": 1})
    with pytest.raises(ValueError, match="hex"):
        LatentCache("x").path_for("../etc/passwd")
    with pytest.raises(ValueError, match="max_bytes"):
        LatentCache("x", max_bytes=0)
