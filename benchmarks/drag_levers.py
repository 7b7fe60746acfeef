"""Why local drags on faces-128 did not land, lever by lever, against exact answers.

The cases of training/paired.py at the model's own size (128 px): each is inverted the way the server
does (the encoder's start, its quick steps, and either the VGG refinement or pivotal tuning), then
dragged with the server's drag settings for faces-128 changed one lever at a time (the engine's
DragParams; no wire, so every lever is reachable, also those the protocol does not expose). Per case and
lever: the keypoint error after the drag (the keypoint detector on the result against its own reading of
the exact answer, which cancels its bias on that face), the gap between the engine's tracked handles and
the detected ones (a tracker that followed a look-alike reports arrival where the feature is not), how
far the inversion alone put the features from the photo's, steps and seconds.

    python benchmarks/drag_levers.py --cases 16 --json docs/drag-levers-faces-128.json

Inversions are cached under ``--cache-dir`` (the first run pays for them).
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training import paired  # noqa: E402

# (name, DragParams changes over the server's settings for faces-128)
LEVERS: list[tuple[str, dict[str, Any]]] = [
    ("server", {}),
    ("feature block 4 (64 px)", dict(feature_block=4)),
    ("feature block 3 (32 px)", dict(feature_block=3)),
    ("radii 2 / 6 model px", dict(r1=8.0, r2=24.0)),
    ("radii 3 / 6 model px, block 4", dict(feature_block=4, r1=12.0, r2=24.0)),
    ("constant lr (official)", dict(lr_boost=1.0)),
    ("all 12 ws move", dict(optimize_ws=12)),
    ("4 ws move", dict(optimize_ws=4)),
]


def server_params(**changes: Any) -> Any:
    """The DragParams the server uses on faces-128 for the plug-in's request (radii 1 and 4 model px)."""
    from backend.engine import DragParams
    from backend.models import model_drag_defaults

    own = model_drag_defaults("faces-128")
    base = dict(max_steps=200, lr=0.002, latent="w+", lambda_mask=own.lambda_mask, r1=4.0, r2=16.0,
                preview_every=0, feature_block=5, lr_boost=own.lr_boost, lr_half_life=own.lr_half_life,
                stop_distance=own.stop_distance)
    base.update(changes)
    return DragParams(**base)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=16, help="tuning cases (seed 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "levers-cache")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import stylegan2
    from alignment.detector import load_detector
    from backend.engine import DragSession
    from draggan_util.hashing import sha256_file
    from inversion import LatentCache, project
    from inversion.encoder import load_encoder

    model = REPO / "backend" / "data" / "faces-128.pt"
    G = stylegan2.load_generator(model)
    encoder = load_encoder(model.with_name("faces-128.encoder.pt"), sha256_file(model))
    cache = LatentCache(args.cache_dir, 4 << 30)
    detector = load_detector()
    records = []
    for case in paired.make_cases(1, args.cases):
        before, exact = case.render(128)
        handles, targets = case.points(128)
        idx = list(case.keypoints)
        found_exact = detector.predict(exact[None])[0][idx]
        found_photo = detector.predict(before[None])[0][idx]
        for pti in (False, True):
            projection = project(G, before, preset="fast", pti=pti, encoder=encoder, cache=cache)
            found_inverted = detector.predict(projection.reconstruction[None])[0][idx]
            for name, changes in LEVERS:
                session = DragSession(projection.generator, projection.ws, [tuple(p) for p in handles],
                                      [tuple(p) for p in targets], params=server_params(**changes))
                started = time.perf_counter()
                steps = len(list(session.run()))
                seconds = time.perf_counter() - started
                found = detector.predict(session.image()[None])[0][idx]
                tracked = np.array(session.points)
                records.append(dict(case=case.name, kind=case.kind, parameter=case.parameter, pti=pti, lever=name,
                                    move=float(case.moves().mean()),
                                    kp_error=float(np.hypot(*(found - found_exact).T).mean()),
                                    gap=float(np.hypot(*(tracked - found).T).mean()),
                                    tracked_error=float(np.hypot(*(tracked - targets).T).mean()),
                                    inversion_offset=float(np.hypot(*(found_inverted - found_photo).T).mean()),
                                    steps=steps, seconds=seconds))
        print(f"{case.name}: done", flush=True)
    summary = []
    for pti in (False, True):
        for name, _ in LEVERS:
            for kind in ("local", "global"):
                rs = [r for r in records if r["pti"] == pti and r["lever"] == name and r["kind"] == kind]
                if not rs:
                    continue
                row = dict(pti=pti, lever=name, kind=kind, n=len(rs))
                for key in ("move", "kp_error", "gap", "tracked_error", "inversion_offset", "seconds"):
                    row[key] = statistics.fmean(r[key] for r in rs)
                row["median_steps"] = statistics.median(r["steps"] for r in rs)
                summary.append(row)
    print("| inversion | lever | cases | move px | keypoint error after px (x move) | tracked error / gap to the "
          "detected px | inversion offset px | median steps | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {'PTI' if r['pti'] else 'no PTI'} | {r['lever']} | {r['n']} {r['kind']} | {r['move']:.2f} "
              f"| {r['kp_error']:.2f} ({r['kp_error'] / r['move']:.2f}) | {r['tracked_error']:.2f} / {r['gap']:.2f} "
              f"| {r['inversion_offset']:.2f} | {r['median_steps']:.0f} | {r['seconds']:.1f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(dict(levers=[dict(name=n, changes=c) for n, c in LEVERS], summary=summary,
                                             records=records,
                                             settings=dataclasses.asdict(server_params())
                                             | {"lr_schedule": None}), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
