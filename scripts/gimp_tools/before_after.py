"""Make the README's before/after picture through the REAL pipeline: a procedural face photo, the
real backend (`draggan-backend serve`), the real GIMP 3 (the kit's chroot) and the staged plug-in.

    python scripts/gimp_tools/before_after.py --model faces-128 --out docs/images/plugin-before-after.png

The drags come from the face's own keypoints (training.faces): the mouth corners move out and up
(a smile) and the chin down. Prints the exact settings and timings; root is needed (the chroot).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = Path(os.environ.get("GIMP3_KIT", REPO.parent / "shared" / "gimp3"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="faces-128", help="NAME or NAME=PATH for draggan-backend serve --model")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--size", type=int, default=256, help="photo size in pixels")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--inversion-steps", type=int, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import numpy as np
    from PIL import Image, ImageDraw

    from training import faces

    work = Path(tempfile.mkdtemp(prefix="draggan-before-after-"))
    params = faces.sample_params(np.random.default_rng(args.seed), 1)[0]
    photo, kps = faces.render(params, size=args.size)
    Image.fromarray(photo).save(work / "photo.png")
    names = list(faces.KEYPOINT_NAMES)
    # keypoints: x = column at the pixel centre; GIMP coordinates put that centre at column + 0.5
    kp = {n: (float(kps[i][0]) + 0.5, float(kps[i][1]) + 0.5) for i, n in enumerate(names)}
    s = args.size
    ml, mr, chin = kp["mouth_left"], kp["mouth_right"], kp["chin"]
    strokes = [[ml, (ml[0] - 0.03 * s, ml[1] - 0.04 * s)], [mr, (mr[0] + 0.03 * s, mr[1] - 0.04 * s)],
               [chin, (chin[0], chin[1] + 0.05 * s)]]
    xs = [p[0] for st in strokes for p in st]
    ys = [p[1] for st in strokes for p in st]
    pad = 0.08 * s
    select = [min(xs) - pad, min(ys) - pad, max(xs) - min(xs) + 2 * pad, max(ys) - min(ys) + 2 * pad]
    edit = {"strokes": strokes, "select": select, "steps": args.steps, "crop_mode": "layer"}

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # the backend uses CURVE on loopback too: keys for this run, handed to the plug-in in its
    # draggan.json (GIMP runs in the kit's chroot, which cannot see the user's keys folder)
    from backend import keys
    from backend.client import read_public_key, read_secret_key

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

    before = Image.open(work / "photo.png").convert("RGB")
    after = Image.open(work / "after.png").convert("RGB")
    gap = 12
    canvas = Image.new("RGB", (2 * s + gap, s + 28), "white")
    canvas.paste(before, (0, 28))
    canvas.paste(after, (s + gap, 28))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 8), "before: handles (red) -> targets (blue)", fill="black")
    draw.text((s + gap + 6, 8), "after: DragGAN in GIMP (new masked layer)", fill="black")
    for (hx, hy), (tx, ty) in strokes:
        draw.line([(hx, hy + 28), (tx, ty + 28)], fill=(255, 255, 255), width=2)
        draw.ellipse([hx - 3, hy + 25, hx + 3, hy + 31], fill=(230, 30, 30))
        draw.ellipse([tx - 3, ty + 25, tx + 3, ty + 31], fill=(30, 80, 230))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out} ({canvas.size[0]}x{canvas.size[1]}); edit: {json.dumps(edit)}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
