"""Time per edit as the server runs one (in process, no ZeroMQ): inversion, then the drag.

Per picture: ``inversion.project`` (preset "fast" unless overridden) then a ``DragSession`` with
the server's drag settings (feature block 5 or the last one, the plug-in's radii for the model
size), 2 handle/target pairs. Two edit profiles:

* ``fixed``: 30 steps with a preview every 5 (the target: first preview <= 3 s, whole
  edit <= 6 s on 2 cores for the default 128² model);
* ``plugin``: the GIMP plug-in's defaults: no previews, up to 200 steps (the stop rule may end it).

Figures per picture: ``first_preview`` = seconds from the start of the inversion to the first
drag step carrying a preview; ``whole`` = to the end of the drag plus the result image. Medians
over the pictures. Pictures are in-domain: the model's own samples (seeds 0.., psi 0.7). The
perceptual networks are loaded before timing (a warm server); their load time is reported
separately as ``stlpips_load_s`` (what the server's first edit adds unless it loads them at start).
PNG encoding and transport are not included (benchmarks/server_flood.py covers the wire).

Examples::

    OMP_NUM_THREADS=2 python benchmarks/edit_time.py --threads 2 --pictures 5
    python benchmarks/edit_time.py --early-fraction 0.8 --steps 60 --search-samples 2   # levers
    python benchmarks/edit_time.py --device cuda --random-stlpips --json out.json
    python benchmarks/edit_time.py --random-model 512 --profiles none --pictures 1      # 512² inversion only
    python benchmarks/edit_time.py --encoder backend/data/faces-128.encoder.pt             # encoder start
    python benchmarks/edit_time.py --encoder ... --kind renders    # procedural renders, not the model's samples

``--wire``: each edit goes over a real ZeroMQ socket on loopback to a warm server in this process
(``EditRunner`` + ``Server``, preloaded as ``serve`` does, latent cache off), timed from sending the
request to the first preview / the result; the PNG encoding and decoding are included.

``--encoder FILE``: the projection starts from the encoder's W+ (``inversion.encoder``) and a
preset name means its ``ENCODER_PRESETS`` entry; the encoder's load time is reported with the
perceptual networks'. ``--kind renders``: the pictures are procedural faces (``training.faces``,
seed 2026) instead of the model's own samples: in-domain drawings the model never produced.

``--random-stlpips`` uses randomly initialised ST-LPIPS networks of the shipped shapes (timing
only; automatic when the ``stlpips-pytorch`` wheel is missing). ``--random-model RES`` uses a
random-weight generator of the official shapes (timing only: its ST-LPIPS figures mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import stylegan2  # noqa: E402
from backend.engine import DragParams, DragSession  # noqa: E402
from inversion import ENCODER_PRESETS, PRESETS, load_encoder, project  # noqa: E402
from inversion import _common as common  # noqa: E402
from inversion.lpips import STLPIPS, load_shipped_state_dict  # noqa: E402

DEFAULT_MODEL = REPO / "backend" / "data" / "faces-128.pt"
PROFILES = {"fixed": dict(max_steps=30, preview_every=5), "plugin": dict(max_steps=200, preview_every=0)}
RANDOM_SHAPES = {32: dict(z_dim=32, w_dim=32, channel_base=512, channel_max=32, num_layers=2),
                 256: dict(z_dim=512, w_dim=512, channel_base=16384, channel_max=512, num_layers=8),
                 512: dict(z_dim=512, w_dim=512, channel_base=32768, channel_max=512, num_layers=8)}


def load_generator(args: argparse.Namespace) -> tuple[Any, str]:
    device = torch.device(args.device)
    if args.random_model:
        shape = dict(RANDOM_SHAPES[args.random_model])
        layers = shape.pop("num_layers")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            G = stylegan2.Generator(img_resolution=args.random_model, img_channels=3,
                                    mapping_kwargs={"num_layers": layers}, **shape)
        return G.eval().requires_grad_(False).to(device), f"random-weight {args.random_model}² generator"
    path = Path(args.model) if args.model else DEFAULT_MODEL
    return stylegan2.load_generator(path, device=device), str(path)


def prepare_stlpips(nets: set[str], device: torch.device, random: bool) -> tuple[float, bool]:
    """Loads the perceptual networks the run needs (seconds); random ones when asked or when the wheel is missing."""
    if not random:
        try:
            load_shipped_state_dict("vgg")
        except RuntimeError:
            random = True
    started = time.perf_counter()
    for net in sorted(nets):
        if random:
            common.register_stlpips(net, device, STLPIPS(net, weights="random").eval().to(device))  # type: ignore[arg-type]
        else:
            common.shared_stlpips(net, device)
    return time.perf_counter() - started, random


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pictures(G: Any, count: int, kind: str = "samples") -> list[np.ndarray]:
    if kind == "renders":
        from training import faces  # only this option needs the renderer

        images, _ = faces.dataset(2026, count, size=G.img_resolution)
        return [np.ascontiguousarray(image) for image in images]
    device = next(G.parameters()).device
    out = []
    for seed in range(count):
        z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
        with torch.no_grad():
            ws = G.mapping(z, None, truncation_psi=0.7)
            out.append(common.tensor_to_uint8(G.synthesis(ws, noise_mode="const")))
    return out


def drag_points(height: int, width: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """2 pairs: left and right of the centre, moved outwards and up by about 8 % of the width."""
    dx, dy = round(0.08 * width), round(0.04 * height)
    handles = [(round(0.38 * width), round(0.5 * height)), (round(0.62 * width), round(0.5 * height))]
    targets = [(handles[0][0] - dx, handles[0][1] - dy), (handles[1][0] + dx, handles[1][1] - dy)]
    return [(float(x), float(y)) for x, y in handles], [(float(x), float(y)) for x, y in targets]


def drag_params(G: Any, profile: dict[str, int], precision: str, height: int) -> DragParams:
    per_pixel = 512 / height  # the plug-in's radii (gimp_plugin options.radii_for)
    return DragParams(max_steps=profile["max_steps"], preview_every=profile["preview_every"], precision=precision,
                      feature_block=min(DragParams.feature_block, int(G.synthesis.num_blocks) - 1),
                      r1=max(3.0, 1.0 * per_pixel), r2=max(12.0, 4.0 * per_pixel))


def one_edit(G: Any, picture: np.ndarray, settings: Any, profile: dict[str, int] | None, precision: str,
             device: torch.device, encoder: Any = None) -> dict[str, Any]:
    sync(device)
    started = time.perf_counter()
    result = project(G, picture, settings=settings, encoder=encoder)
    sync(device)
    inversion_s = time.perf_counter() - started
    record: dict[str, Any] = dict(inversion_s=inversion_s, stlpips=result.stlpips, psnr=result.psnr,
                                  inversion_steps=result.steps)
    if profile is None:
        return record
    height = picture.shape[0]
    handles, targets = drag_points(height, picture.shape[1])
    session = DragSession(result.generator, result.ws, handles, targets,
                          params=drag_params(result.generator, profile, precision, height))
    first_preview = None
    steps = 0
    for step in session.run():
        steps = step.index + 1
        if first_preview is None and step.preview is not None:
            first_preview = time.perf_counter() - started
    session.image()
    sync(device)
    record.update(first_preview_s=first_preview, whole_s=time.perf_counter() - started, drag_steps=steps,
                  drag_s=time.perf_counter() - started - inversion_s)
    return record


def wire_edits(G: Any, model_path: Path, encoder_file: str | None, images: list[np.ndarray],
               profile: dict[str, int]) -> list[dict[str, Any]]:
    """Each picture edited through a real server over loopback ZeroMQ (see ``--wire``)."""
    import tempfile

    from backend.edit_runner import EditRunner
    from backend.model_pool import encoder_path
    from backend.server import Server, ServerConfig
    from draggan_wire import protocol
    from draggan_wire.client import Client

    sys.path.insert(0, str(REPO / "gimp_plugin" / "draggan"))
    from draggan_core.options import radii_for  # the plug-in's radii for this model size

    with tempfile.TemporaryDirectory() as tmp:
        served = Path(tmp) / "model.pt"
        served.symlink_to(model_path.resolve())
        if encoder_file:  # beside the model, where the server looks for it
            encoder_path(served).symlink_to(Path(encoder_file).resolve())
        runner = EditRunner(models={"bench": served}, device=str(next(G.parameters()).device), cache=False)
        runner.preload("bench")
        server = Server(ServerConfig(bind="tcp://127.0.0.1:0", heartbeat_s=1.0), runner).start_thread()
        r1, r2 = radii_for(G.img_resolution)
        records = []
        try:
            with Client(server.endpoint, timeout_s=600) as client:
                for i, picture in enumerate([images[0], *images]):  # the first is a warm-up, not counted
                    height, width = picture.shape[:2]
                    handles, targets = drag_points(height, width)
                    request = protocol.Edit(model="bench", handles=handles, targets=targets,
                                            image=protocol.Image(width, height, 3, picture.tobytes()),
                                            params=protocol.EditParams(max_steps=profile["max_steps"],
                                                                       preview_every=profile["preview_every"],
                                                                       r1=r1, r2=r2))
                    marks: dict[str, float] = {}
                    started = time.perf_counter()

                    def on_progress(p: Any, marks: dict[str, float] = marks, started: float = started) -> None:
                        now = time.perf_counter() - started
                        if p.phase == "drag" and "drag_start" not in marks:
                            marks["drag_start"] = now
                        if p.preview is not None and "first_preview" not in marks:
                            marks["first_preview"] = now

                    result = client.edit(request, on_progress=on_progress)
                    whole = time.perf_counter() - started
                    if i == 0:  # what the first edit after a preloaded start costs (vs the medians)
                        print(f"  first edit after start (preloaded): {whole:.2f} s", flush=True)
                        continue
                    quality = result.inversion
                    records.append(dict(inversion_s=marks.get("drag_start"), first_preview_s=marks.get("first_preview"),
                                        whole_s=whole, drag_steps=result.steps,
                                        stlpips=quality.stlpips if quality else None,
                                        psnr=quality.psnr if quality else None))
        finally:
            server.stop()
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="generator file (default: backend/data/faces-128.pt)")
    parser.add_argument("--random-model", type=int, choices=sorted(RANDOM_SHAPES), help="random-weight generator")
    parser.add_argument("--pictures", type=int, default=5)
    parser.add_argument("--profiles", nargs="+", default=["fixed", "plugin"], choices=[*PROFILES, "none"])
    parser.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, help="inversion steps (default: the preset's)")
    parser.add_argument("--search-samples", type=int)
    parser.add_argument("--early-fraction", type=float)
    parser.add_argument("--early-net", choices=["vgg", "alex"])
    parser.add_argument("--early-max-side", type=int)
    parser.add_argument("--lpips-max-side", type=int)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random-stlpips", action="store_true")
    parser.add_argument("--encoder", help="encoder file for this generator (inversion.encoder)")
    parser.add_argument("--kind", choices=["samples", "renders"], default="samples", help="which in-domain pictures")
    parser.add_argument("--wire", action="store_true", help="edit through a real server over loopback ZeroMQ")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    G, model_name = load_generator(args)
    overrides = {name: getattr(args, name) for name in ("steps", "search_samples", "early_fraction", "early_net",
                                                         "early_max_side", "lpips_max_side")
                 if getattr(args, name) is not None}
    presets = ENCODER_PRESETS if args.encoder else PRESETS
    settings = presets[args.preset].replace(precision=args.precision, **overrides)
    nets = {settings.lpips_net, "vgg"} | ({settings.early_net} if settings.early_fraction > 0 else set())
    load_s, random_nets = prepare_stlpips(nets, device, args.random_stlpips)
    encoder = None
    if args.encoder:
        started = time.perf_counter()
        encoder = load_encoder(args.encoder, device=device)
        load_s += time.perf_counter() - started
    images = pictures(G, args.pictures, args.kind)
    one_edit(G, images[0], settings.replace(steps=2, search_samples=min(1, settings.search_samples)),
             PROFILES["fixed"] if args.profiles != ["none"] else None, args.precision, device,
             encoder)  # warm-up (first-call allocations, w statistics)

    report: dict[str, Any] = dict(model=model_name, device=str(device), threads=torch.get_num_threads(),
                                  settings=dataclasses.asdict(settings), random_stlpips=random_nets,
                                  encoder=args.encoder, kind=args.kind,
                                  stlpips_load_s=load_s, pictures=args.pictures, profiles={})
    print(f"edit time: {model_name}, {device}, {torch.get_num_threads()} threads, precision {args.precision}, "
          f"inversion {settings.steps} steps (early {settings.early_fraction:g} with {settings.early_net}), "
          f"search {settings.search_samples}, encoder {args.encoder or 'none'}, {args.kind}; "
          f"ST-LPIPS nets {'RANDOM (timing only)' if random_nets else 'shipped'}, "
          f"loaded in {load_s:.2f} s (before timing)")
    for name in args.profiles:
        profile = PROFILES.get(name)
        if args.wire:
            if profile is None or args.random_model or overrides or args.precision != "fp32":
                parser.error("--wire runs the server's own settings: a model file, a drag profile, no overrides")
            records = wire_edits(G, Path(args.model) if args.model else DEFAULT_MODEL, args.encoder, images, profile)
        else:
            records = [one_edit(G, image, settings, profile, args.precision, device, encoder) for image in images]

        def median(key: str, rows: list[dict[str, Any]] = records) -> float | None:
            values = [r[key] for r in rows if r.get(key) is not None]
            return statistics.median(values) if values else None

        summary = {key: median(key) for key in ("inversion_s", "first_preview_s", "whole_s", "drag_s", "drag_steps",
                                                  "stlpips", "psnr")}
        summary["stlpips_max"] = max((r["stlpips"] for r in records if r.get("stlpips") is not None), default=None)
        report["profiles"][name] = dict(summary=summary, records=records)
        label = {"fixed": "30 steps, preview every 5", "plugin": "plug-in defaults (<= 200 steps, no previews)",
                 "none": "inversion only"}[name]
        parts = [f"{key} {value:.2f}" for key, value in summary.items() if value is not None]
        print(f"  {name:<6} ({label}{', over the wire' if args.wire else ''}), medians over {len(records)}: "
              + ", ".join(parts))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
