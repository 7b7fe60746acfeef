"""Train the embedded default generator on the procedural faces, supervised.

Why supervised: an adversarial G+D iteration at 128² with StyleGAN2's discriminator costs 3-16 s on
two CPU cores, so a GAN run of the usual length does not fit in our sessions.  The renderer knows
every image's parameters, so the generator can learn to *reproduce* the render of its own z instead:

* z ~ N(0, I) of size ``faces.NUM_PARAMS``; the mapping network normalises z to the sphere
  (``normalize_2nd_moment``), so the render must depend on z's direction only.  We therefore
  render ``faces.z_to_params(normalize_2nd_moment(z))``: every coordinate of the normalised z is
  (almost exactly) N(0, 1) for 40 dimensions, so sampling z ~ N(0, I) at inference yields the
  training distribution, and z -> image is a deterministic, learnable function.
* loss = L1(G(z), render) + ``lpips_weight`` * ST-LPIPS-AlexNet at 64² (both images 2x2-averaged, on
  ``lpips_images`` of each batch); optionally (``--adversarial-weight``) a small patch
  discriminator's non-saturating loss, which sharpens what the regression blurs
  (``training/patch_discriminator.py``).
* no noise inputs (``--noise-mode none``, strengths pinned at 0): a deterministic target gives them
  nothing to model, and the network amplified even small strengths into a fixed striped texture;
  so the shipped model renders the same with ``noise_mode="const"`` (what DragGAN uses) and "none".
* an exponential moving average of the weights (``G_ema``) is what we ship, as StyleGAN does;
  the mapping network's ``w_avg`` is tracked for truncation.

Resumable: ``--run-dir`` holds ``checkpoint.pt`` (G, G_ema, Adam state, the discriminator and its Adam
state when one is used, iteration, wall time), written atomically every ``--checkpoint-minutes``;
rerunning the same command continues.  ``--resume-from FILE`` starts a new run dir from a committed checkpoint.
``--export FILE`` writes ``G_ema`` in our generator format with a model card's facts in ``meta``.

    python -m training.train_generator --run-dir runs/faces128 --minutes 90
    python -m training.train_generator --run-dir runs/faces128 --export backend/data/faces-128.pt --iterations 0
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import platform
import queue
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import stylegan2
from stylegan2.ops import normalize_2nd_moment
from training import faces
from training.patch_discriminator import PatchDiscriminator, discriminator_loss, generator_adversarial_loss

DEFAULT_CONFIG: dict[str, Any] = dict(
    z_dim=faces.NUM_PARAMS,
    w_dim=128,
    img_resolution=128,
    img_channels=3,
    # lr_multiplier 0.1 (NVIDIA: 0.01): the mapping must move within a few thousand steps here.
    mapping_kwargs=dict(num_layers=4, lr_multiplier=0.1, w_avg_beta=0.995),
    # Sized for two CPU cores: 16² blocks at 128 channels, the 128² block (DragGAN's feature block 5)
    # at 24.  No conv clamp: it exists for fp16 and costs an elementwise pass in fp32.
    synthesis_kwargs=dict(channel_base=3072, channel_max=128, num_fp16_res=0, conv_clamp=None),
)


# The parameters that place and shape features (pose, face, eyes, brows, nose, mouth); the rest are
# colours, styles and lighting.  A curriculum can shrink their spread (``geometry_scale``).
GEOMETRY_PARAMS = [faces.PARAM_NAMES.index(name) for name in (
    "head_x", "head_y", "head_size", "face_aspect", "jaw_shape", "yaw", "pitch", "roll", "eye_height",
    "eye_spacing", "eye_size", "eye_open", "eye_tilt", "gaze_x", "gaze_y", "brow_gap", "brow_tilt",
    "nose_length", "nose_size", "mouth_height", "mouth_width", "mouth_open", "smile", "lip_thickness")]


def params_for_z(z: np.ndarray, geometry_scale: float = 1.0) -> np.ndarray:
    """Renderer parameters that the image of ``z`` [n, NUM_PARAMS] shows (via the normalised z).

    ``geometry_scale`` < 1 (a curriculum's early domain, never the model's meaning of z): the
    normalised z of the geometry parameters is multiplied by it, so faces vary less in shape and
    pose around the middle of each range while colours and styles keep their full spread."""
    zt = normalize_2nd_moment(torch.from_numpy(np.asarray(z, dtype=np.float32))).numpy()
    if geometry_scale != 1.0:
        zt = zt.copy()
        zt[:, GEOMETRY_PARAMS] *= geometry_scale
    return faces.z_to_params(zt)


def target_batch(z: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3] renders of the parameters of ``z``."""
    imgs, _ = faces.render_batch(params_for_z(z), size=size)
    return imgs


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _producer(seed: int, start_batch: int, batch: int, size: int, z_dim: int, out: Any, stride: int = 1,
              geometry_scale: float = 1.0) -> None:
    """Worker process: renders the batches of indices ``start_batch, start_batch + stride, ...``,
    each deterministic per index (so N workers with offsets 0..N-1 and stride N make the same data
    as one worker).

    Puts ``(index, z [batch, z_dim], images uint8 [batch, size, size, 3], keypoints [batch, K, 2])``.
    """
    # The trainer's SIGTERM handler (inherited through fork when main() ran before in this
    # process) would make terminate() a no-op here.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    torch.set_num_threads(1)
    index = start_batch
    while True:
        rng = np.random.default_rng([seed, index])
        z = rng.standard_normal((batch, z_dim)).astype(np.float32)
        imgs, kps = faces.render_batch(params_for_z(z, geometry_scale), size=size)
        out.put((index, z, imgs, kps))
        index += stride


class BatchFeed:
    """``workers`` renderer processes (a GPU needs many CPU cores' worth of renders), batches handed
    out in index order whatever order the workers finish them in."""

    def __init__(self, seed: int, start: int, batch: int, size: int, z_dim: int, workers: int,
                 geometry_scale: float = 1.0) -> None:
        ctx = mp.get_context("fork")
        self.queue: Any = ctx.Queue(maxsize=max(4, 2 * workers))
        self.pending: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.next_index = start
        self.workers = [ctx.Process(target=_producer, args=(seed, start + k, batch, size, z_dim, self.queue, workers,
                                                                    geometry_scale),
                                    daemon=True) for k in range(workers)]
        for worker in self.workers:
            worker.start()

    def get(self, timeout: float) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(index, z, images, keypoints) of the next index; raises queue.Empty after ``timeout`` s
        without any batch arriving, RuntimeError at once when a renderer process has died."""
        waited = 0.0
        while self.next_index not in self.pending:
            try:
                index, z, imgs, kps = self.queue.get(timeout=1.0)
            except queue.Empty:
                dead = [w for w in self.workers if not w.is_alive()]
                if dead:
                    raise RuntimeError(f"a renderer process died (exit code {dead[0].exitcode})") from None
                waited += 1.0
                if waited >= timeout:
                    raise
                continue
            self.pending[index] = (z, imgs, kps)
        z, imgs, kps = self.pending.pop(self.next_index)
        self.next_index += 1
        return self.next_index - 1, z, imgs, kps

    def close(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            worker.join(timeout=10)


def synthesis_pyramid(G: torch.nn.Module, ws: torch.Tensor, noise_mode: str, max_res: int | None = None
                      ) -> dict[int, torch.Tensor]:
    """The skip generator's image after each block: ``{resolution: [N, 3, r, r]}`` (training only).

    In the skip architecture the image is a sum of every block's upsampled ToRGB output, so the
    partial sum after the r² block is the coarse image the later blocks refine.  Supervising it
    against the downsampled target (multi-scale supervision) teaches layout before detail;
    ``max_res`` stops after that block (a cheaper, lower-resolution phase).
    """
    synthesis = G.synthesis
    images: dict[int, torch.Tensor] = {}
    x = img = None
    for block, block_ws in zip(synthesis.blocks(), synthesis._split_ws(ws)):
        # Non-fused modulated conv: grouped-conv backward is slow (NVIDIA trains this way too).
        x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=False)
        assert img is not None
        images[block.resolution] = img
        if max_res is not None and block.resolution >= max_res:
            break
    return images


def keypoint_weight_map(kps: np.ndarray, size: int, sigma: float, amplitude: float) -> torch.Tensor:
    """Per-pixel loss weight ``[N, 1, size, size]``: 1 + ``amplitude`` near the renderer's keypoints.

    ``kps [N, K, 2]`` are (x, y) pixels at ``size``.  Eyes, brows, nose, mouth and chin are small
    (a few % of the image) but they are what drags move, so their error counts ``1 + amplitude``
    times as much; ``sigma`` (pixels) sets the size of each bump.
    """
    coords = torch.arange(size, dtype=torch.float32)
    kp = torch.from_numpy(np.asarray(kps, dtype=np.float32))
    dx = coords.view(1, 1, 1, size) - kp[:, :, 0].view(len(kp), -1, 1, 1)
    dy = coords.view(1, 1, size, 1) - kp[:, :, 1].view(len(kp), -1, 1, 1)
    bumps = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2)).amax(dim=1, keepdim=True)
    return 1.0 + amplitude * bumps


def set_mapping_lr_multiplier(state: dict[str, Any], new: float) -> None:
    """Change the mapping network's equalised-lr multiplier in a checkpoint ``state``, in place,
    without changing the function it computes.

    Weights are stored at ``1 / lr_multiplier`` scale and multiplied by it at run time, so stored
    tensors (and their Adam first/second moments, by the inverse factor and its square) are rescaled.
    """
    old = float(state["config"]["mapping_kwargs"].get("lr_multiplier", 0.01))
    if old == new:
        return
    scale = old / new
    param_names = [name for name, _ in stylegan2.Generator(**state["config"]).named_parameters()]
    state["config"]["mapping_kwargs"]["lr_multiplier"] = new
    for key in ("G", "G_ema"):
        for name, tensor in state[key].items():
            if name.startswith("mapping.fc"):
                state[key][name] = tensor * scale
    opt = state.get("optimizer")
    if opt is not None:
        # Adam's state is indexed by the parameter's position in G.parameters().
        for idx, name in enumerate(param_names):
            if name.startswith("mapping.fc") and idx in opt["state"]:
                st = opt["state"][idx]
                if "exp_avg" in st:
                    st["exp_avg"] = st["exp_avg"] / scale
                if "exp_avg_sq" in st:
                    st["exp_avg_sq"] = st["exp_avg_sq"] / scale ** 2


def weighted_l1(img: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean absolute error, optionally weighted per pixel by ``weight [N, 1, H, W]`` (normalised by
    the weights' mean, so the loss scale stays that of plain L1)."""
    return _weighted_mean((img - target).abs(), weight)


def weighted_mse(img: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error, weighted like :func:`weighted_l1`.  Its per-pixel optimum is the mean of
    what the target may be there, where L1's is the median: a thin tip the generator cannot place
    within its own width is covered less than half the time, so L1 cuts it off (eye, brow and mouth
    corners drawn short), while the squared error keeps it, faded."""
    return _weighted_mean((img - target) ** 2, weight)


def _weighted_mean(err: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``err``'s mean, weighted per pixel by ``weight [N, 1, H, W]`` normalised by its mean."""
    if weight is None:
        return err.mean()
    return (err * weight).mean() / weight.mean()


def compact_resumable_state(config: dict[str, Any], G: torch.nn.Module, opt: torch.optim.Optimizer,
                            **counters: Any) -> dict[str, Any]:
    """A resumable checkpoint small enough for the repository (about 6 bytes a parameter).

    G's parameters and Adam's moments in bf16 (``load_state_dict`` casts them back to fp32); no
    G_ema (it restarts from G: we ship the raw weights while runs are short).  Buffers (``w_avg``,
    filters) stay fp32.  Rounding the weights to bf16 is a one-off relative perturbation of at most
    2^-9, smaller than one Adam step at our learning rates.
    """
    param_names = {name for name, _ in G.named_parameters()}
    weights = {name: (t.to(torch.bfloat16) if name in param_names else t.clone())
               for name, t in G.state_dict().items()}
    opt_state = opt.state_dict()
    for st in opt_state["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key] = st[key].to(torch.bfloat16)
    return dict(config=config, G=weights, G_ema=None, optimizer=opt_state, compact=True, **counters)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def sample_grid(G: torch.nn.Module, z: torch.Tensor, path: Path, size: int) -> None:
    """Save generated samples (top rows) above their procedural targets (bottom rows)."""
    from PIL import Image

    device = next(G.parameters()).device
    with torch.no_grad():
        img = G.synthesis(G.mapping(z.to(device)), noise_mode="const").float()
    gen = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    tgt = target_batch(z.numpy(), size)
    n = len(z)
    cols = 8
    rows = (n + cols - 1) // cols
    canvas = np.full((2 * rows * size, cols * size, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * size:(r + 1) * size, c * size:(c + 1) * size] = gen[i]
        canvas[(rows + r) * size:(rows + r + 1) * size, c * size:(c + 1) * size] = tgt[i]
    Image.fromarray(canvas).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=Path("runs/faces128"))
    ap.add_argument("--resume-from", type=Path, help="start from this checkpoint if the run dir has none")
    ap.add_argument("--minutes", type=float, default=60.0, help="stop after this much wall time (this process)")
    ap.add_argument("--iterations", type=int, default=None, help="stop at this total iteration count")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--lpips-weight", type=float, default=1.0)
    ap.add_argument("--lpips-images", type=int, default=4, help="images per batch that get the ST-LPIPS term")
    ap.add_argument("--ema-beta", type=float, default=0.998, help="per-iteration EMA decay of G_ema")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-mode", choices=["none", "random"], default="none",
                    help="'none' (default) pins every noise strength at 0: the target is deterministic, and "
                    "noise inputs only add texture the render does not have")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the renderers stay on CPU)")
    ap.add_argument("--workers", type=int, default=1,
                    help="renderer processes feeding the trainer (a GPU needs many: about 100 images/s each)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the loss (forward and backward): about 1.2x per step on a CPU after a "
                         "compile of a few minutes; a long run's choice")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast for the forward pass (AMX/AVX512-BF16 CPUs: 1.3-1.7x per step)")
    ap.add_argument("--multiscale-weight", type=float, default=0.0,
                    help="weight of the L1 loss of each intermediate skip image (16² ... half resolution) "
                    "against the area-downsampled target")
    ap.add_argument("--keypoint-weight", type=float, default=0.0,
                    help="extra L1 weight near the renderer's 16 keypoints (weight map 1 + this)")
    ap.add_argument("--keypoint-sigma", type=float, default=3.0, help="keypoint bump size, pixels at 128²")
    ap.add_argument("--l2-weight", type=float, default=0.0,
                    help="add this times the (keypoint-weighted) squared error of the full-resolution image: "
                    "pulls thin tips from L1's median (cut off) toward the mean (faded)")
    ap.add_argument("--max-res", type=int, default=None,
                    help="train only the blocks up to this resolution (a cheaper low-resolution phase)")
    ap.add_argument("--geometry-scale", type=float, default=1.0,
                    help="curriculum: shrink the spread of the shape and pose parameters to this fraction "
                         "(targets only; 1 = the model's real domain)")
    ap.add_argument("--mapping-lr-mult", type=float, default=None,
                    help="change the mapping network's lr multiplier (the checkpoint is rescaled, "
                    "same function)")
    ap.add_argument("--adversarial-weight", type=float, default=0.0,
                    help="weight of a patch discriminator's non-saturating loss (0: none); it sharpens the "
                         "features the L1 regression blurs")
    # 0.002 oscillated and R1 (even gamma 0.001) stopped it from seeing the blur within 150 steps;
    # 0.0005 without R1 told the shipped model's images from renders at 69 % of patches by then.
    ap.add_argument("--d-lr", type=float, default=0.0005, help="the discriminator's Adam lr")
    ap.add_argument("--r1-gamma", type=float, default=0.0, help="R1 penalty weight on real images")
    ap.add_argument("--r1-every", type=int, default=16, help="lazy R1: pay it every this many D steps")
    ap.add_argument("--d-warmup", type=int, default=200,
                    help="a new discriminator trains alone this many iterations before G feels it")
    ap.add_argument("--cpu-minutes", type=float, default=None,
                    help="stop after this much CPU time of the training process (all its threads)")
    ap.add_argument("--snapshot-cpu-minutes", type=float, default=None,
                    help="save G and G_ema to snap-cpuNNN.pt every this many CPU minutes (learning curves)")
    ap.add_argument("--checkpoint-minutes", type=float, default=10.0)
    ap.add_argument("--sample-minutes", type=float, default=15.0)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--export", type=Path, help="write the generator in our format when done")
    ap.add_argument("--save-resumable", type=Path,
                    help="also write a compact resumable checkpoint here (Adam moments in bf16) for the repo; "
                    "continue later with --resume-from FILE")
    ap.add_argument("--export-weights", choices=["ema", "raw"], default="ema",
                    help="export G_ema (default) or the raw G (better while the EMA still lags a short run)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    source = ckpt_path if ckpt_path.is_file() else args.resume_from

    config = copy.deepcopy(DEFAULT_CONFIG)
    if args.mapping_lr_mult is not None:
        config["mapping_kwargs"]["lr_multiplier"] = args.mapping_lr_mult
    state: dict[str, Any] | None = None
    if source is not None:
        state = torch.load(source, weights_only=True, map_location="cpu")
        if args.mapping_lr_mult is not None:
            set_mapping_lr_multiplier(state, args.mapping_lr_mult)
        config = state["config"]
        print(f"resuming from {source} at iteration {state['iteration']}", flush=True)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)   # a fresh run's initial weights follow --seed too
    G = stylegan2.Generator(**config).to(device)
    G_ema = stylegan2.Generator(**config).to(device)
    opt = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.9, 0.99), eps=1e-8)
    iteration, wall_seconds, images_seen = 0, 0.0, 0
    if state is not None:
        G.load_state_dict(state["G"])  # copy_ casts a compact checkpoint's bf16 back to fp32
        # A compact checkpoint carries no G_ema: the average restarts from G.
        G_ema.load_state_dict(state["G_ema"] if state.get("G_ema") is not None else G.state_dict())
        if state.get("optimizer") is not None:
            opt.load_state_dict(state["optimizer"])
            # Adam's saved param groups carry the lr of the run that wrote them; --lr must win, or
            # a resumed run silently keeps the first run's rate (it did until session 5).
            for group in opt.param_groups:
                group["lr"] = args.lr
        iteration, wall_seconds = int(state["iteration"]), float(state["wall_seconds"])
        images_seen = int(state.get("images_seen", iteration * args.batch))
    else:
        G_ema.load_state_dict(G.state_dict())
    if args.noise_mode == "none":
        with torch.no_grad():
            for net in (G, G_ema):
                for name, p in net.named_parameters():
                    if name.endswith("noise_strength"):
                        p.zero_()
    G.train().requires_grad_(True)
    G_ema.eval().requires_grad_(False)
    size = G.img_resolution

    # The discriminator exists only in runs that use it.  A compact checkpoint does not carry it:
    # a new one learns alone for --d-warmup iterations, so G never follows an untrained critic.
    D: PatchDiscriminator | None = None
    d_opt: torch.optim.Optimizer | None = None
    d_start = iteration
    if args.adversarial_weight > 0:
        D = PatchDiscriminator(config.get("img_channels", 3)).to(device).train()
        d_opt = torch.optim.Adam(D.parameters(), lr=args.d_lr, betas=(0.0, 0.99), eps=1e-8)
        if state is not None and state.get("D") is not None:
            D.load_state_dict(state["D"])
            d_opt.load_state_dict(state["D_optimizer"])
            for group in d_opt.param_groups:
                group["lr"] = args.d_lr
            d_start = int(state.get("d_start", 0))

    from inversion.lpips import STLPIPS

    lpips = STLPIPS(net="alex").eval().to(device)
    fixed_z = torch.from_numpy(np.random.default_rng([args.seed, 10**6]).standard_normal((16, G.z_dim))
                               .astype(np.float32))
    n_params = sum(p.numel() for p in G.parameters())
    print(f"G: {n_params / 1e6:.2f} M parameters, {G.num_ws} ws, {size}x{size}; batch {args.batch}, "
          f"{args.threads} threads, {device}, {args.workers} renderer process(es)", flush=True)

    feed = BatchFeed(args.seed, iteration, args.batch, size, G.z_dim, max(1, args.workers), args.geometry_scale)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, dict(config=config, G=G.state_dict(), G_ema=G_ema.state_dict(),
                                        optimizer=opt.state_dict(), iteration=iteration,
                                        wall_seconds=wall_seconds, images_seen=images_seen,
                                        D=D.state_dict() if D is not None else None,
                                        D_optimizer=d_opt.state_dict() if d_opt is not None else None,
                                        d_start=d_start))

    # Stop cleanly (checkpoint, samples, export) on SIGTERM/SIGINT: background jobs of a
    # non-interactive shell ignore SIGINT, so KeyboardInterrupt alone is not enough.
    stop_requested = []
    previous_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous_handlers:
        signal.signal(sig, lambda signum, frame: stop_requested.append(signum))

    def training_loss(z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(supervised loss, L1 at the top resolution, ST-LPIPS, G's image [N, 3, top, top]) for one
        batch: z [N, z_dim], target [N, 3, size, size] in [-1, 1], weight [N, 1, size, size] or None.
        The critic's term is added outside (eager): inductor made the step slower with D inside."""
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            ws = G.mapping(z, update_emas=True)
            pyramid = synthesis_pyramid(G, ws, args.noise_mode, max_res=args.max_res)
        pyramid = {res: im.float() for res, im in pyramid.items()}
        top = max(pyramid)
        img = pyramid[top]
        tgt_top = F.adaptive_avg_pool2d(target, top) if top < size else target
        w_top = (F.adaptive_avg_pool2d(weight, top) if top < size else weight) if weight is not None else None
        l1 = weighted_l1(img, tgt_top, w_top)
        loss = l1
        if args.l2_weight > 0:
            loss = loss + args.l2_weight * weighted_mse(img, tgt_top, w_top)
        if args.multiscale_weight > 0:
            for res, im in pyramid.items():
                if 16 <= res < top:
                    w_res = F.adaptive_avg_pool2d(weight, res) if weight is not None else None
                    loss = loss + args.multiscale_weight * weighted_l1(im, F.adaptive_avg_pool2d(target, res),
                                                                       w_res)
        # ST-LPIPS at half resolution on the first ``lpips_images`` of the batch: its stride-1
        # anti-aliased first layers cost as much as the generator at 128².
        k = args.lpips_images
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            if top >= 64:
                perceptual = lpips(F.adaptive_avg_pool2d(img[:k], 64), F.adaptive_avg_pool2d(tgt_top[:k], 64))
            else:
                perceptual = lpips(img[:k], tgt_top[:k])
            perceptual = perceptual.float().mean()
        loss = loss + args.lpips_weight * perceptual
        return loss, l1, perceptual, img

    # Inductor fuses the modulation, bias and activation ops around each convolution: measured
    # 0.73 -> 0.61 s per batch-8 step on 2 AVX2 cores, after a one-off compile of about 4 minutes.
    loss_fn = torch.compile(training_loss) if args.compile else training_loss

    cpu_start = time.process_time()
    next_snapshot = 0.0 if args.snapshot_cpu_minutes is not None else float("inf")
    start = run_start = time.time()  # start: wall-time accounting (reset at checkpoints); run_start: --minutes
    last_ckpt = last_sample = start
    window: list[tuple[torch.Tensor, ...]] = []
    d_steps = 0
    t_log = time.time()
    try:
        while True:
            if args.iterations is not None and iteration >= args.iterations:
                break
            if time.time() - run_start >= args.minutes * 60 or stop_requested:
                break
            cpu_minutes = (time.process_time() - cpu_start) / 60
            if args.cpu_minutes is not None and cpu_minutes >= args.cpu_minutes:
                break
            if args.snapshot_cpu_minutes is not None and cpu_minutes >= next_snapshot:
                save_checkpoint(run_dir / f"snap-cpu{int(round(next_snapshot)):03d}.pt",
                                dict(config=config, G=G.state_dict(), G_ema=G_ema.state_dict(),
                                     iteration=iteration, images_seen=images_seen, cpu_minutes=cpu_minutes))
                next_snapshot += args.snapshot_cpu_minutes
            try:
                index, z_np, imgs, kps = feed.get(timeout=120)
            except queue.Empty:
                print("data worker stalled; stopping", file=sys.stderr, flush=True)
                break
            assert index == iteration, (index, iteration)
            z = torch.from_numpy(z_np).to(device)
            target = to_tensor(imgs).to(device)
            weight = (keypoint_weight_map(kps, size, args.keypoint_sigma * size / 128, args.keypoint_weight).to(device)
                      if args.keypoint_weight > 0 else None)
            loss, l1, perceptual, img = loss_fn(z, target, weight)
            adversarial = torch.zeros((), device=device)
            if D is not None:
                adversarial = generator_adversarial_loss(D, img)
                warm = iteration - d_start >= args.d_warmup
                loss = loss + (args.adversarial_weight if warm else 0.0) * adversarial
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            d_loss = torch.zeros((), device=device)   # stacked with the device's losses at log time
            if D is not None and d_opt is not None:
                # The D step sees the image G drew before its update (as StyleGAN2 alternates).
                lazy_r1 = args.r1_gamma > 0 and d_steps % args.r1_every == 0
                real = target if img.shape[-1] == size else F.adaptive_avg_pool2d(target, img.shape[-1])
                d_loss, _ = discriminator_loss(D, real, img.detach(),
                                               args.r1_gamma * args.r1_every if lazy_r1 else 0.0)
                d_opt.zero_grad(set_to_none=True)   # also drops the grads G's backward left in D
                d_loss.backward()
                d_opt.step()
                d_steps += 1
            with torch.no_grad():
                for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                    p_ema.lerp_(p, 1 - args.ema_beta)
                for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                    b_ema.copy_(b)
            iteration += 1
            images_seen += len(z)
            # detached tensors, read at log time: no host sync per step on a GPU
            window.append((l1.detach(), perceptual.detach(), adversarial.detach(), d_loss.detach()))
            now = time.time()
            if iteration % args.log_every == 0:
                l1_mean, lp_mean, adv_mean, d_mean = (
                    torch.stack([torch.stack(terms) for terms in window]).float().mean(0).tolist())
                window.clear()
                rate = args.log_every / (now - t_log)
                t_log = now
                gan = f"  G adv {adv_mean:.3f}  D {d_mean:.3f}" if D is not None else ""
                print(f"it {iteration:6d}  img {images_seen:8d}  L1 {l1_mean:.4f}  ST-LPIPS(alex) {lp_mean:.4f}{gan}  "
                      f"{rate:.2f} it/s  wall {(wall_seconds + now - start) / 60:.1f} min", flush=True)
            if now - last_ckpt >= args.checkpoint_minutes * 60:
                wall_seconds += now - start
                start = now
                checkpoint()
                last_ckpt = now
            if now - last_sample >= args.sample_minutes * 60:
                sample_grid(G_ema, fixed_z, run_dir / f"samples-{iteration:06d}.png", size)
                last_sample = now
    finally:
        feed.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        wall_seconds += time.time() - start
        start = time.time()
        checkpoint()
        print(f"checkpoint: {ckpt_path} (iteration {iteration}, {wall_seconds / 60:.1f} min of training)",
              flush=True)
    sample_grid(G_ema, fixed_z, run_dir / f"samples-{iteration:06d}.png", size)
    if args.save_resumable is not None:
        args.save_resumable.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(args.save_resumable, compact_resumable_state(
            config, G, opt, iteration=iteration, wall_seconds=wall_seconds, images_seen=images_seen))
        size_mb = args.save_resumable.stat().st_size / 1e6
        print(f"resumable checkpoint: {args.save_resumable} ({size_mb:.1f} MB)", flush=True)
    if args.export is not None:
        meta = dict(
            name="faces-128",
            description="StyleGAN2 trained supervised on the procedural faces of training/faces.py",
            iterations=iteration, images_seen=images_seen, batch=args.batch,
            training_minutes=round(wall_seconds / 60, 1), lr=args.lr, lpips_weight=args.lpips_weight,
            adversarial_weight=args.adversarial_weight,
            ema_beta=args.ema_beta, hardware=(torch.cuda.get_device_name(device) if device.type == "cuda" else
                                              f"{platform.processor() or platform.machine()}, "
                                              f"{args.threads} CPU threads"), torch=torch.__version__,
            z_semantics="render params = faces.z_to_params(normalize_2nd_moment(z))",
            command="python -m training.train_generator " + " ".join(argv if argv is not None else sys.argv[1:]),
        )
        args.export.parent.mkdir(parents=True, exist_ok=True)
        meta["weights"] = args.export_weights
        exported = G_ema if args.export_weights == "ema" else G.eval().requires_grad_(False)
        stylegan2.save_generator(exported.cpu(), args.export, meta=meta)
        print(f"exported {args.export_weights} weights to {args.export}: {json.dumps(meta)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
