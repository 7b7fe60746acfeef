"""Make the README's before/after picture through the REAL pipeline: a drag with an exact answer
(training/paired.py: a procedural face before and after one parameter changed), the real backend
(`draggan-backend serve`), the real GIMP 3 (tests/gimp/kit's chroot), the staged plug-in with its defaults.

    python scripts/gimp_tools/before_after.py --out docs/images/plugin-before-after.png

Three panels at the layer's size (the picture with its handles and targets, GIMP's result, the exact
answer) and below each a zoom of the part that should move. Prints the settings, the timings and the
figures of the result and of no edit against the exact answer; root is needed (the chroot, which
tests/gimp/kit/setup.sh builds first when it is missing: 1-2 minutes).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "tests" / "gimp" / "kit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="faces-128", help="NAME or NAME=PATH for draggan-backend serve --model")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--case-seed", type=int, default=2, help="training/paired.py seed (2: the held-out cases)")
    ap.add_argument("--parameter", default="smile", help="the first case of the seed that changes this")
    ap.add_argument("--size", type=int, default=512, help="layer size in pixels")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--inversion-steps", type=int, default=None)
    args = ap.parse_args()
    # the chroot first: built once (about a minute), afterwards only checked
    if subprocess.run(["bash", str(KIT / "setup.sh")]).returncode != 0:
        print("the GIMP 3 chroot is not ready (tests/gimp/kit/setup.sh failed)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(REPO))
    import numpy as np
    from PIL import Image, ImageDraw

    from training import paired

    work = Path(tempfile.mkdtemp(prefix="draggan-before-after-"))
    case = next(c for c in paired.make_cases(args.case_seed, 40) if c.parameter == args.parameter)
    s = args.size
    photo, exact = case.render(s)
    Image.fromarray(photo).save(work / "photo.png")
    handles, targets = case.points(s)
    # keypoints: x = column at the pixel centre; GIMP coordinates put that centre at column + 0.5
    strokes = [[(float(h[0]) + 0.5, float(h[1]) + 0.5), (float(t[0]) + 0.5, float(t[1]) + 0.5)]
               for h, t in zip(handles, targets)]
    edit = {"strokes": strokes, "select": None, "steps": args.steps, "crop_mode": "auto"}

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # the backend uses CURVE on loopback too: keys for this run, handed to the plug-in in its
    # draggan.json (GIMP runs in the kit's chroot, which cannot see the user's keys folder)
    from backend import keys
    from draggan_wire.client import read_public_key, read_secret_key

    keys_dir = work / "keys"
    keys.init(keys_dir)
    secret = str(keys_dir / "client.key_secret")
    plugin_config = {"address": endpoint, "server_public_key": read_public_key(str(keys_dir / "server.key")).decode(),
                     "client_public_key": read_public_key(secret).decode(),
                     "client_secret_key": read_secret_key(secret).decode()}
    cmd = [sys.executable, "-m", "backend.cli", "serve", "--bind", endpoint, "--keys-dir", str(keys_dir),
           "--model", args.model, "--device", args.device, "--no-cache"]
    if args.inversion_steps:
        cmd += ["--inversion-steps", str(args.inversion_steps)]
    print("backend:", " ".join(cmd), flush=True)
    server = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for line in server.stderr:
            print("  " + line.rstrip(), flush=True)
            if line.startswith("ready") or re.search(r"\bready\b", line):
                break
        if server.poll() is not None:
            print("the backend did not start", file=sys.stderr)
            return 1
        plugins = work / "plug-ins"
        subprocess.run([sys.executable, str(REPO / "install.py"), "--plugin-only", "--gimp-dir", str(plugins)],
                       check=True, capture_output=True)
        config_file = plugins / "draggan" / "draggan.json"
        config_file.write_text(json.dumps(plugin_config))
        config_file.chmod(0o600)
        started = time.monotonic()
        r = subprocess.run(["bash", str(KIT / "run.sh"), "--timeout", "1800", "--plugins", str(plugins),
                            "--bind", f"{work}:/mnt/io", "--env", "OUT=/mnt/io", "--env", f"ENDPOINT={endpoint}",
                            "--env", "EDIT=" + json.dumps(edit),
                            "--batch-file", str(Path(__file__).with_name("before_after_driver.py"))],
                           capture_output=True, text=True)
        report = json.loads((work / "result.json").read_text()) if (work / "result.json").exists() else {}
        print(f"GIMP run {time.monotonic() - started:.1f} s, exit {r.returncode}: {report}")
        if report.get("status") != "success":
            print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
            return 1
    finally:
        server.terminate()
        server.wait(30)

    after = np.asarray(Image.open(work / "after.png").convert("RGB"))
    import torch

    from inversion.lpips import STLPIPS

    lpips = STLPIPS("vgg").eval()

    def stlpips(a: np.ndarray, b: np.ndarray) -> float:
        def t(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float() / 127.5 - 1

        with torch.no_grad():
            return float(lpips(t(a), t(b)))

    figures = {"result": (stlpips(after, exact), paired.psnr(after, exact)),
               "no edit": (stlpips(photo, exact), paired.psnr(photo, exact))}
    print(f"case {case.name} ({case.parameter}, {len(strokes)} handles, {case.moves().mean():.1f} px at 128); "
          "against the exact answer: " + "; ".join(f"{k}: ST-LPIPS {v[0]:.4f}, PSNR {v[1]:.2f} dB"
                                                   for k, v in figures.items()))
    # the zoom: the moving parts' box, squared, with a margin
    ys, xs = np.nonzero(case.moving_parts(s))
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    half = max(xs.max() - xs.min(), ys.max() - ys.min()) / 2 + 0.06 * s
    box = [int(max(0, cx - half)), int(max(0, cy - half)), int(min(s, cx + half)), int(min(s, cy + half))]
    gap, title = 10, 24
    zoom = s
    canvas = Image.new("RGB", (3 * s + 2 * gap, 2 * s + 2 * title + gap), "white")
    draw = ImageDraw.Draw(canvas)
    marked = Image.fromarray(photo)
    mark = ImageDraw.Draw(marked)
    for (hx, hy), (tx, ty) in strokes:
        mark.line([(hx, hy), (tx, ty)], fill=(255, 255, 255), width=2)
        mark.ellipse([hx - 4, hy - 4, hx + 4, hy + 4], fill=(230, 30, 30))
        mark.ellipse([tx - 4, ty - 4, tx + 4, ty + 4], fill=(30, 80, 230))
    panels = [(marked, "before: handles (red) -> targets (blue)"),
              (Image.fromarray(after), "after: DragGAN in GIMP, the defaults"),
              (Image.fromarray(exact), "the exact answer (the renderer)")]
    for i, (picture, label) in enumerate(panels):
        x = i * (s + gap)
        draw.text((x + 6, 6), label, fill="black")
        canvas.paste(picture, (x, title))
        draw.rectangle([x + box[0], title + box[1], x + box[2], title + box[3]], outline=(250, 200, 0), width=2)
        inset = (Image.fromarray(photo) if i == 0 else picture).crop(box).resize((zoom, zoom), Image.Resampling.NEAREST)
        draw.text((x + 6, s + title + gap + 4), "zoom (nearest neighbour)", fill="black")
        canvas.paste(inset, (x, s + 2 * title + gap))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out} ({canvas.size[0]}x{canvas.size[1]}); edit: {json.dumps(edit)}; GIMP: {report}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
