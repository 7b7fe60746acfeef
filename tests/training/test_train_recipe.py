"""The default model's training levers: multi-scale pyramid, keypoint weight map, lr-multiplier
rescaling, weighted L1, and a short end-to-end run that resumes, snapshots and exports."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import stylegan2
from tests.conftest import env_with_this_python
from training import faces
from training.train_generator import (
    keypoint_weight_map,
    main,
    set_mapping_lr_multiplier,
    synthesis_pyramid,
    weighted_l1,
    weighted_mse,
)

TINY = dict(z_dim=faces.NUM_PARAMS, w_dim=16, img_resolution=32, img_channels=3,
            mapping_kwargs=dict(num_layers=2, lr_multiplier=0.1, w_avg_beta=0.995),
            synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None))


def test_pyramid_ends_in_the_generators_image_and_has_every_block():
    torch.manual_seed(0)
    G = stylegan2.Generator(**copy.deepcopy(TINY)).eval()
    ws = G.mapping(torch.randn(2, G.z_dim))
    pyramid = synthesis_pyramid(G, ws, "none")
    assert sorted(pyramid) == [4, 8, 16, 32]
    assert all(img.shape == (2, 3, r, r) for r, img in pyramid.items())
    full = G.synthesis(ws, noise_mode="none", fused_modconv=False)
    torch.testing.assert_close(pyramid[32], full)
    # A low-resolution phase stops after its block: no 32² image is computed.
    assert sorted(synthesis_pyramid(G, ws, "none", max_res=16)) == [4, 8, 16]


def test_keypoint_weight_map_peaks_at_the_keypoints_and_is_one_far_away():
    kps = np.array([[[10.0, 20.0], [40.0, 5.0]]], dtype=np.float32)  # (x, y) pixels
    weight = keypoint_weight_map(kps, 64, sigma=2.0, amplitude=4.0)
    assert weight.shape == (1, 1, 64, 64)
    assert weight[0, 0, 20, 10].item() == pytest.approx(5.0)   # row y=20, column x=10
    assert weight[0, 0, 5, 40].item() == pytest.approx(5.0)
    assert weight[0, 0, 60, 60].item() == pytest.approx(1.0, abs=1e-6)
    assert weight[0, 0, 20, 12].item() == pytest.approx(1 + 4 * np.exp(-4 / 8), rel=1e-5)


def test_weighted_l1_uniform_weights_is_plain_l1_and_weights_shift_emphasis():
    a, b = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    b[..., 0, 0] = 1.0
    plain = weighted_l1(a, b, None)
    assert weighted_l1(a, b, torch.full((1, 1, 4, 4), 3.0)).item() == pytest.approx(plain.item())
    w = torch.ones(1, 1, 4, 4)
    w[..., 0, 0] = 10.0
    assert weighted_l1(a, b, w).item() > plain.item()


def test_squared_error_moves_a_pixel_from_the_median_toward_the_mean():
    # A pixel at a thin tip: 30 % of the targets have the feature (1), 70 % do not (0). L1 alone draws
    # the median (0: the tip is cut off); with the squared error added it draws toward the mean (0.3).
    targets = torch.tensor([1.0] * 3 + [0.0] * 7).view(10, 1, 1, 1)
    weight = torch.full((10, 1, 1, 1), 5.0)
    assert weighted_mse(torch.zeros(10, 1, 1, 1), targets, weight).item() == pytest.approx(0.3)

    def optimum(l2_weight: float) -> float:
        x = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.01)
        for _ in range(600):
            img = x.view(1, 1, 1, 1).expand(10, 1, 1, 1)
            loss = weighted_l1(img, targets, None) + l2_weight * weighted_mse(img, targets, None)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return x.item()

    assert abs(optimum(0.0)) < 0.03
    # L1 + w * L2 balances at x = mean - 0.4 / (2 w) for 0 < x < 1: 0.2 for w = 2
    assert optimum(2.0) == pytest.approx(0.2, abs=0.03)


def test_changing_the_mapping_lr_multiplier_keeps_the_function():
    torch.manual_seed(1)
    G = stylegan2.Generator(**copy.deepcopy(TINY))
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    z = torch.randn(3, G.z_dim)
    G.mapping(z).square().mean().backward()
    opt.step()
    state = dict(config=copy.deepcopy(G.config), G=G.state_dict(), G_ema=G.state_dict(),
                 optimizer=copy.deepcopy(opt.state_dict()))
    before = G.mapping(z).detach()
    set_mapping_lr_multiplier(state, 1.0)
    assert state["config"]["mapping_kwargs"]["lr_multiplier"] == 1.0
    G2 = stylegan2.Generator(**state["config"])
    G2.load_state_dict(state["G"])
    torch.testing.assert_close(G2.mapping(z), before, rtol=1e-5, atol=1e-6)
    # Adam's first moment of a mapping weight scales with the gradient (x10 here).
    names = [n for n, _ in G.named_parameters()]
    idx = names.index("mapping.fc0.weight")
    torch.testing.assert_close(state["optimizer"]["state"][idx]["exp_avg"],
                               opt.state_dict()["state"][idx]["exp_avg"] * 10)


def test_short_run_with_every_lever_resumes_snapshots_and_exports(tmp_path, monkeypatch):
    # A tiny generator through the real CLI: 2 iterations, then 1 more from the checkpoint.
    monkeypatch.setattr("training.train_generator.DEFAULT_CONFIG", copy.deepcopy(TINY))
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--batch", "2", "--lpips-images", "1", "--threads", "1",
              "--multiscale-weight", "0.5", "--keypoint-weight", "4", "--l2-weight", "2",
              "--snapshot-cpu-minutes", "100"]
    assert main(common + ["--iterations", "2"]) == 0
    assert (run / "snap-cpu000.pt").is_file()
    out = tmp_path / "g.pt"
    assert main(common + ["--iterations", "3", "--mapping-lr-mult", "1.0", "--export", str(out),
                          "--export-weights", "raw"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3
    G = stylegan2.load_generator(out)
    assert G.img_resolution == 32


def test_compact_resumable_checkpoint_is_small_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr("training.train_generator.DEFAULT_CONFIG", copy.deepcopy(TINY))
    run = tmp_path / "run"
    compact = tmp_path / "resume.pt"
    args = ["--run-dir", str(run), "--batch", "2", "--lpips-images", "1", "--threads", "1"]
    assert main(args + ["--iterations", "2", "--save-resumable", str(compact)]) == 0
    full = torch.load(run / "checkpoint.pt", weights_only=True)
    state = torch.load(compact, weights_only=True)
    assert state["G_ema"] is None and state["iteration"] == 2
    assert state["G"]["mapping.fc0.weight"].dtype == torch.bfloat16
    assert state["G"]["mapping.w_avg"].dtype == torch.float32
    assert compact.stat().st_size < 0.5 * (run / "checkpoint.pt").stat().st_size
    torch.testing.assert_close(state["G"]["mapping.fc0.weight"].float(), full["G"]["mapping.fc0.weight"],
                               rtol=2 ** -8, atol=0)
    # A new run dir resumes from the compact file and continues the iteration count.
    run2 = tmp_path / "run2"
    assert main(["--run-dir", str(run2), "--resume-from", str(compact), "--batch", "2", "--lpips-images", "1",
                 "--threads", "1", "--iterations", "3"]) == 0
    assert torch.load(run2 / "checkpoint.pt", weights_only=True)["iteration"] == 3


def test_resuming_uses_the_lr_given_not_the_checkpoints(tmp_path, monkeypatch):
    # Adam's state dict carries its param groups' lr; a resumed run with another --lr must train at it.
    monkeypatch.setattr("training.train_generator.DEFAULT_CONFIG", copy.deepcopy(TINY))
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--batch", "2", "--lpips-images", "1", "--threads", "1"]
    assert main(args + ["--iterations", "1", "--lr", "0.002"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"] == 0.002
    assert main(args + ["--iterations", "2", "--lr", "0.0005"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"] == 0.0005


def test_several_renderer_workers_give_the_same_batches_in_order():
    # A GPU run is fed by many renderer processes: the batches must not depend on how many.
    from training.train_generator import BatchFeed

    feeds = [BatchFeed(seed=5, start=3, batch=2, size=32, z_dim=faces.NUM_PARAMS, workers=n) for n in (1, 3)]
    try:
        got = [[feed.get(timeout=60) for _ in range(5)] for feed in feeds]
    finally:
        for feed in feeds:
            feed.close()
    assert [index for index, *_ in got[1]] == [3, 4, 5, 6, 7]
    for (i1, z1, im1, kp1), (i3, z3, im3, kp3) in zip(*got):
        assert i1 == i3
        np.testing.assert_array_equal(z1, z3)
        np.testing.assert_array_equal(im1, im3)
        np.testing.assert_array_equal(kp1, kp3)
    assert not np.array_equal(got[0][0][1], got[0][1][1])  # consecutive batches differ


def test_a_dead_renderer_is_an_error_not_a_hang():
    from training.train_generator import BatchFeed

    feed = BatchFeed(seed=5, start=0, batch=2, size=8, z_dim=faces.NUM_PARAMS, workers=2)  # size 8: renderer refuses
    try:
        with pytest.raises(RuntimeError, match="renderer process died"):
            feed.get(timeout=60)
    finally:
        feed.close()


def test_gpu_run_script_dry_run_on_cpu(tmp_path):
    # training/gpu_run.sh is what a lent GPU runs once: its dry run goes through every step on CPU.
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    env = env_with_this_python(OUT=str(tmp_path / "out"), RUN_DIR=str(tmp_path / "run"), MINUTES="0.02",
                               EVAL_N="16", SCHEDULE="0.5 1.0")  # two curriculum phases: the hand-over between them
    proc = subprocess.run(["bash", str(repo / "training" / "gpu_run.sh"), "--dry-run"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    for name in ("renderer.txt", "train.log", "eval.txt", "faces128-resume.pt", "faces-128-candidate.pt"):
        assert (out / name).is_file(), name
    assert "images/s" in (out / "renderer.txt").read_text()
    log = (out / "train.log").read_text()
    assert "phase 1/2: geometry scale 0.5" in log and "phase 2/2: geometry scale 1.0" in log
    assert "kp_error_generated_mean_px" in (out / "eval.txt").read_text()
    assert all(f.stat().st_size < 16 * 2**20 for f in out.iterdir())  # the device's limit per file
    assert stylegan2.load_generator(out / "faces-128-candidate.pt").img_resolution == 128


def test_geometry_scale_narrows_shape_and_pose_only():
    from training.train_generator import GEOMETRY_PARAMS, params_for_z

    z = np.random.default_rng(0).standard_normal((64, faces.NUM_PARAMS)).astype(np.float32)
    full, none = params_for_z(z), params_for_z(z, geometry_scale=0.0)
    others = [i for i in range(faces.NUM_PARAMS) if i not in GEOMETRY_PARAMS]
    np.testing.assert_array_equal(none[:, others], full[:, others])  # colours and styles keep their spread
    mid = ((faces.PARAM_LOW + faces.PARAM_HIGH) / 2)[GEOMETRY_PARAMS]
    np.testing.assert_allclose(none[:, GEOMETRY_PARAMS], np.broadcast_to(mid, (64, len(GEOMETRY_PARAMS))))
    half = params_for_z(z, geometry_scale=0.5)[:, GEOMETRY_PARAMS]
    assert 0 < np.abs(half - mid).mean() < np.abs(full[:, GEOMETRY_PARAMS] - mid).mean()


def test_evaluation_loads_exports_and_either_weights_of_a_checkpoint(tmp_path, monkeypatch):
    from training.evaluate_generator import load_for_evaluation

    monkeypatch.setattr("training.train_generator.DEFAULT_CONFIG", copy.deepcopy(TINY))
    run, out, compact = tmp_path / "run", tmp_path / "g.pt", tmp_path / "resume.pt"
    assert main(["--run-dir", str(run), "--batch", "2", "--lpips-images", "1", "--threads", "1", "--iterations", "2",
                 "--export", str(out), "--export-weights", "ema", "--save-resumable", str(compact)]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for weights in ("G", "G_ema"):
        G = load_for_evaluation(run / "checkpoint.pt", weights)
        torch.testing.assert_close(G.state_dict()["mapping.fc0.weight"], state[weights]["mapping.fc0.weight"])
    exported = load_for_evaluation(out)
    torch.testing.assert_close(exported.state_dict()["mapping.fc0.weight"], state["G_ema"]["mapping.fc0.weight"])
    # two steps of Adam moved G away from its average: the choice of weights matters
    assert not torch.equal(state["G"]["mapping.fc0.weight"], state["G_ema"]["mapping.fc0.weight"])
    with pytest.raises(ValueError, match="no G_ema"):
        load_for_evaluation(compact, "G_ema")


def test_keypoint_error_by_feature_covers_every_keypoint_once_and_locates_the_error():
    from training.evaluate_generator import KEYPOINT_GROUPS, keypoint_error_by_feature

    names = [name for group in KEYPOINT_GROUPS.values() for name in group]
    assert sorted(names) == sorted(faces.KEYPOINT_NAMES)          # a partition: no keypoint twice or missing
    errors = np.full((5, faces.NUM_KEYPOINTS), 1.0)
    errors[:, faces.KEYPOINT_NAMES.index("nose_tip")] = 4.0
    errors[:, faces.KEYPOINT_NAMES.index("mouth_left")] = 3.0
    by_feature = keypoint_error_by_feature(errors)
    assert by_feature["kp_error_nose_px"] == 4.0 and by_feature["kp_error_mouth_px"] == 1.5
    assert by_feature["kp_error_eyes_px"] == by_feature["kp_error_brows_px"] == by_feature["kp_error_chin_px"] == 1.0
    # weighted by the group sizes the split gives back the overall mean
    sizes = {group: len(names) for group, names in KEYPOINT_GROUPS.items()}
    total = sum(by_feature[f"kp_error_{g}_px"] * n for g, n in sizes.items()) / faces.NUM_KEYPOINTS
    assert total == pytest.approx(errors.mean())


def test_keypoint_offsets_tell_a_systematic_offset_from_scatter():
    from training.evaluate_generator import keypoint_offsets

    rng = np.random.default_rng(0)
    true = rng.uniform(20, 100, (400, faces.NUM_KEYPOINTS, 2))
    predicted = true.copy()
    nose, mouth = faces.KEYPOINT_NAMES.index("nose_tip"), faces.KEYPOINT_NAMES.index("mouth_left")
    predicted[:, nose, 1] += 2.0                                  # every nose read 2 px low: a bias
    predicted[:, mouth] += rng.choice([-1.0, 1.0], (400, 2))      # +-1 px each way: scatter, no bias
    offsets = keypoint_offsets(predicted, true)
    assert set(offsets) == set(faces.KEYPOINT_NAMES)
    error, dx, dy = offsets["nose_tip"]
    assert error == pytest.approx(2.0) and dx == pytest.approx(0.0) and dy == pytest.approx(2.0)
    error, dx, dy = offsets["mouth_left"]
    assert error == pytest.approx(2 ** 0.5) and abs(dx) < 0.15 and abs(dy) < 0.15
    assert offsets["chin"] == (0.0, 0.0, 0.0)


def test_compiled_training_takes_the_same_steps_as_eager(tmp_path, monkeypatch):
    # --compile must change the speed, not the training: two iterations from the same seed land on
    # the same weights (inductor reorders float sums, so within a small tolerance).
    monkeypatch.setattr("training.train_generator.DEFAULT_CONFIG", copy.deepcopy(TINY))
    weights = {}
    for flag in ([], ["--compile"]):
        run = tmp_path / ("compiled" if flag else "eager")
        assert main(["--run-dir", str(run), "--batch", "2", "--lpips-images", "1", "--threads", "1",
                     "--multiscale-weight", "1.0", "--iterations", "2", "--seed", "0"] + flag) == 0
        weights[bool(flag)] = torch.load(run / "checkpoint.pt", weights_only=True)["G"]
    torch.manual_seed(0)    # the initial weights of --seed 0
    start = stylegan2.Generator(**copy.deepcopy(TINY)).state_dict()
    moved = 0
    for name, eager in weights[False].items():
        torch.testing.assert_close(weights[True][name], eager, rtol=1e-4, atol=1e-5, msg=name)
        moved += int(not torch.equal(eager, start[name]))
    assert moved > 10    # the steps did train


def test_patch_discriminator_learns_to_tell_renders_from_blurred_renders():
    # What it is for: telling the regression's soft features from the renders' crisp ones.
    from training.patch_discriminator import PatchDiscriminator, discriminator_loss

    torch.manual_seed(0)
    imgs, _ = faces.dataset(3, 8, size=32)
    real = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    fake = torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1, count_include_pad=False)
    D = PatchDiscriminator()
    assert D(real).shape == (8, 1, 4, 4)
    opt = torch.optim.Adam(D.parameters(), lr=0.002, betas=(0.0, 0.99))
    losses = []
    for _ in range(60):
        loss, r1 = discriminator_loss(D, real, fake)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(r1) == 0 and losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        assert float(D(real).mean() - D(fake).mean()) > 1.0
    # R1 penalises the critic's gradient on real images: positive, and it adds to the loss.
    with_r1, r1 = discriminator_loss(D, real, fake, r1_gamma=1.0)
    assert float(r1) > 0 and with_r1.item() > discriminator_loss(D, real, fake)[0].item()


def test_adversarial_run_warms_the_critic_up_before_g_feels_it_and_resumes_it(tmp_path, monkeypatch):
    monkeypatch.setattr("training.train_generator.DEFAULT_CONFIG", copy.deepcopy(TINY))
    common = ["--batch", "2", "--lpips-images", "1", "--threads", "1", "--iterations", "2", "--seed", "0"]
    weights = {}
    for name, extra in [("plain", []), ("cold", ["--adversarial-weight", "1.0", "--d-warmup", "100"]),
                        ("warm", ["--adversarial-weight", "1.0", "--d-warmup", "1"])]:
        assert main(["--run-dir", str(tmp_path / name)] + common + extra) == 0
        weights[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
    # During the warm-up G trains exactly as without a discriminator; after it, the critic moves G.
    for key, value in weights["plain"]["G"].items():
        assert torch.equal(weights["cold"]["G"][key], value), key
    assert any(not torch.equal(weights["warm"]["G"][k], v) for k, v in weights["plain"]["G"].items())
    assert weights["plain"]["D"] is None
    warm = weights["warm"]
    assert warm["D"] is not None and warm["d_start"] == 0
    # Resuming keeps the trained critic (no second warm-up); the compact file leaves it out.
    compact = tmp_path / "resume.pt"
    assert main(["--run-dir", str(tmp_path / "warm"), "--batch", "2", "--lpips-images", "1", "--threads", "1",
                 "--iterations", "3", "--adversarial-weight", "1.0", "--save-resumable", str(compact)]) == 0
    resumed = torch.load(tmp_path / "warm" / "checkpoint.pt", weights_only=True)
    assert resumed["iteration"] == 3 and resumed["d_start"] == 0
    assert any(not torch.equal(resumed["D"][k], v) for k, v in warm["D"].items())
    assert "D" not in torch.load(compact, weights_only=True)
