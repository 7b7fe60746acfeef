"""The W+ encoder: its file (tied to one generator, no pickled code), its use as the projection's
start, and that training it on the free (z -> picture) pairs teaches it something."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import stylegan2
from draggan_util.hashing import sha256_file
from inversion import ENCODER_PRESETS, LatentCache, LatentEncoder, load_encoder, project
from inversion.encoder import save_encoder
from training import faces
from training.train_encoder import held_out_figures
from training.train_encoder import main as train_encoder_main

TINY = dict(z_dim=faces.NUM_PARAMS, w_dim=16, img_resolution=32, img_channels=3,
            mapping_kwargs=dict(num_layers=2, lr_multiplier=0.1, w_avg_beta=0.995),
            synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None))


@pytest.fixture(scope="module")
def tiny_generator_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    G = stylegan2.Generator(**copy.deepcopy(TINY)).eval()
    path = tmp_path_factory.mktemp("encoder") / "tiny.pt"
    stylegan2.save_generator(G, path)
    return path


def make_encoder(G: stylegan2.Generator, seed: int = 0) -> LatentEncoder:
    torch.manual_seed(seed)
    enc = LatentEncoder(G.num_ws, G.w_dim, input_size=32, channels=(8, 16, 16))
    enc.set_latent_statistics(torch.linspace(-1, 1, G.w_dim), 0.5)
    return enc


def test_an_untrained_encoder_starts_at_w_avg_for_any_picture_size(tiny_generator_file: Path) -> None:
    G = stylegan2.load_generator(tiny_generator_file)
    enc = make_encoder(G)
    for side in (16, 32, 64):
        out = enc(torch.rand(2, 3, side, side) * 2 - 1)
        assert out.shape == (2, G.num_ws, G.w_dim)
        torch.testing.assert_close(out, torch.linspace(-1, 1, G.w_dim).expand(2, G.num_ws, -1))
    with pytest.raises(ValueError, match="square RGB"):
        enc(torch.zeros(1, 3, 32, 16))
    with pytest.raises(ValueError, match="power of two"):
        LatentEncoder(4, 8, input_size=48)


def test_file_round_trip_is_tied_to_its_generator_and_rejects_bad_files(tiny_generator_file: Path,
                                                                        tmp_path: Path) -> None:
    G = stylegan2.load_generator(tiny_generator_file)
    enc = make_encoder(G)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sha = sha256_file(tiny_generator_file)
    path = tmp_path / "tiny.encoder.pt"
    save_encoder(enc, path, sha, {"note": "test"})
    loaded = load_encoder(path, sha)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x), enc(x))
    assert loaded.fingerprint.startswith("encoder-") and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())

    with pytest.raises(ValueError, match="another generator"):
        load_encoder(path, "0" * 64)
    # a generator file is not an encoder file
    with pytest.raises(ValueError, match="not a draggan-encoder"):
        load_encoder(tiny_generator_file)
    # truncated file
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable encoder"):
        load_encoder(truncated)
    # weights that do not fit the config
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden"] = 7
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="do not match"):
        load_encoder(tmp_path / "mismatch.pt")
    payload = torch.load(path, weights_only=True)
    next(iter(payload["state_dict"].values())).fill_(float("nan"))
    torch.save(payload, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="not finite"):
        load_encoder(tmp_path / "nan.pt")


class _Exploit:
    def __reduce__(self):  # noqa: ANN204 - the classic pickle payload
        return (os.system, ("touch " + str(Path(os.environ["ENCODER_EXPLOIT_MARK"])),))


def test_a_malicious_pickle_runs_no_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mark = tmp_path / "pwned"
    monkeypatch.setenv("ENCODER_EXPLOIT_MARK", str(mark))
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"format": "draggan-encoder", "payload": _Exploit()}, fh)
    with pytest.raises(ValueError, match="not a readable encoder"):
        load_encoder(evil)
    assert not mark.exists()


def test_projection_starts_from_the_encoder_and_keys_the_cache_on_it(tiny_generator_file: Path,
                                                                     tmp_path: Path) -> None:
    G = stylegan2.load_generator(tiny_generator_file)
    enc = make_encoder(G, seed=1)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    target = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    settings = ENCODER_PRESETS["fast"].replace(steps=0, refine_steps=0)
    res = project(G, image, settings=settings, encoder=enc)
    torch.testing.assert_close(res.ws, enc(target))  # 0 steps: exactly the encoder's W+
    assert res.ws[0, 0].ne(res.ws[0, -1]).any()       # a W+ start, not one w broadcast

    # the named preset means the encoder's variant: fewer steps, every one with the light net; a
    # picture the quick path cannot reach (noise) is refined with the main net
    cache = LatentCache(tmp_path / "cache")
    totals, phases = [], []

    def progress(step, total, metrics):
        totals.append(total)
        phases.append(metrics["phase"])

    preset = ENCODER_PRESETS["fast"]
    quick = project(G, image, settings=preset.replace(refine_steps=0), encoder=enc)
    assert quick.steps == preset.steps and quick.stlpips > preset.refine_above
    res = project(G, image, preset="fast", encoder=enc, cache=cache, progress=progress)
    assert res.steps == preset.steps + preset.refine_steps == len(phases) == totals[-1]
    assert phases == ["project"] * preset.steps + ["refine"] * preset.refine_steps
    assert totals[0] == preset.steps  # the total grows when the refinement starts
    assert res.stlpips < quick.stlpips
    # a picture the quick path reaches is not refined: the generator's own image at the start
    with torch.no_grad():
        own = G.synthesis(enc(target), noise_mode="const")
    own_image = (own[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    easy = project(G, own_image, preset="fast", encoder=enc)
    assert easy.stlpips <= preset.refine_above and easy.steps == preset.steps
    assert project(G, image, preset="fast", encoder=enc, cache=cache).from_cache
    # another encoder (or none) is another cache entry
    other = make_encoder(G, seed=2)
    assert not project(G, image, settings=ENCODER_PRESETS["fast"], encoder=other, cache=cache).from_cache
    assert not project(G, image, settings=ENCODER_PRESETS["fast"], cache=cache).from_cache


def test_training_on_free_pairs_beats_w_avg_on_held_out_pictures(tiny_generator_file: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Training teaches the encoder something, with margins another CPU cannot cross.

    300 iterations of Adam on random batches are a chaotic trajectory: another CPU's kernels (AVX2,
    AVX-512, AMX round sums differently) or another thread count send it somewhere else, as another
    seed does. Measured over seeds 0-7 with one thread and again with two (16 runs): the held-out latent
    error ended at 0.70-0.89 of the untrained encoder's (seed 0: 0.89 with one thread, 0.79 with two)
    and the PSNR gain at 0.8-2.2 dB. So a bound inside that spread (the former 0.8) fails on some
    machines; the bounds below lie outside it: the latent error at most 0.95 of the untrained one, and a
    PSNR gain of at least 0.5 dB."""
    out = tmp_path / "tiny.encoder.pt"
    rc = train_encoder_main([str(tiny_generator_file), "--out", str(out), "--iterations", "300", "--batch", "8",
                             "--lr", "3e-3", "--render-fraction", "0.25", "--image-images", "1",
                             "--held-out", "32", "--log-every", "1000"])
    assert rc == 0
    enc = load_encoder(out, sha256_file(tiny_generator_file))
    G = stylegan2.load_generator(tiny_generator_file)
    trained = held_out_figures(G, enc, 32)
    untrained = LatentEncoder(G.num_ws, G.w_dim, input_size=32)
    untrained.set_latent_statistics(enc.w_avg, float(enc.w_scale))
    baseline = held_out_figures(G, untrained, 32)
    # the latent error of the untrained encoder (= w_avg) is the spread of W itself
    assert trained["generated_latent_error"] < 0.95 * baseline["generated_latent_error"]
    assert trained["generated_psnr_db"] > baseline["generated_psnr_db"] + 0.5
    assert "generated_psnr_db" in capsys.readouterr().out
