#!/usr/bin/env python3
"""Record the DragGAN panel in the real GIMP 3 during a drag: an animated WebP of the screen (the image
window and the panel) and a screenshot of the panel, for the README.

    sudo .venv/bin/python scripts/gimp_tools/record_live.py --endpoint tcp://127.0.0.1:PORT --out OUTDIR

ENDPOINT is a running backend that serves the built-in faces-128 (`draggan-backend serve`, or
tests/gimp/backend_host.py --inversion-steps -1). Needs root and the GIMP 3 kit with the X tools (the
chroot is built beside the kit's when the kit's own has no Xvfb; see testkit/live_panel.py). The kit
runs the GIMP with its windows on Xvfb (gui-bin/ over /usr/local/bin) and live_driver.py inside it:
a 512 px procedural face, its head dragged left (four handles), Drag pressed in the panel, the screen
grabbed with xwd every --frame-s seconds from the first preview to 2 s past the result. Writes
OUTDIR/live-drag.webp (at most --max-bytes; the frames are thinned and the quality lowered until it
fits), OUTDIR/plugin-panel.png and the driver's report; docs/images/ holds the copies the README shows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from testkit.live_panel import GUI_BIN, face_and_drag, gui_root_args, kit_run_sh  # noqa: E402


def geometry(text: str) -> tuple[int, int, int, int]:
    """xdotool getwindowgeometry's 'Position: X,Y (screen: 0)' / 'Geometry: WxH' -> (x, y, w, h)."""
    x = y = w = h = 0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Position:"):
            x, y = (int(v) for v in line.split()[1].split(","))
        elif line.startswith("Geometry:"):
            w, h = (int(v) for v in line.split()[1].split("x"))
    return x, y, w, h


def assemble(io: Path, out: Path, max_bytes: int, width: int) -> dict:
    """The frames -> out/live-drag.webp (fitted under max_bytes), the panel -> out/plugin-panel.png."""
    from PIL import Image

    report = json.loads((io / "live-report.json").read_text())
    frames = json.loads((io / "frames.json").read_text())
    boxes = {title: geometry(text) for title, text in report["windows"].items()}
    panel = boxes["DragGAN Panel"]
    image_window = next(b for t, b in boxes.items() if t.endswith("GIMP") and "layer" in t)
    left, top = min(panel[0], image_window[0]), min(panel[1], image_window[1])
    right = max(panel[0] + panel[2], image_window[0] + image_window[2])
    bottom = max(panel[1] + panel[3], image_window[1] + image_window[3])
    with Image.open(io / "panel.ppm") as shot:
        shot.crop((panel[0], panel[1], panel[0] + panel[2], panel[1] + panel[3])).save(out / "plugin-panel.png",
                                                                                      optimize=True)
        before = shot.crop((left, top, right, bottom)).convert("RGB")
    pictures = [before]
    durations = [1200]
    for i, frame in enumerate(frames):
        with Image.open(io / "frames" / frame["file"]) as im:
            pictures.append(im.crop((left, top, right, bottom)).convert("RGB"))
        following = frames[i + 1]["t"] if i + 1 < len(frames) else frame["t"] + 2.0
        durations.append(int(min(2000, max(60, (following - frame["t"]) * 1000))))
    scale = min(1.0, width / before.width)
    size = (round(before.width * scale), round(before.height * scale))
    pictures = [p.resize(size, Image.Resampling.LANCZOS) for p in pictures]
    target = out / "live-drag.webp"
    for keep_every, quality in ((1, 70), (1, 55), (2, 55), (2, 40), (3, 40), (4, 35)):
        chosen = [0] + list(range(1, len(pictures), keep_every))
        if chosen[-1] != len(pictures) - 1:
            chosen.append(len(pictures) - 1)
        seq = [pictures[i] for i in chosen]
        times = [sum(durations[i:j]) for i, j in zip(chosen, chosen[1:] + [len(pictures)])]
        seq[0].save(target, save_all=True, append_images=seq[1:], duration=times, loop=0, quality=quality, method=4)
        if target.stat().st_size <= max_bytes:
            break
    return {"frames": len(frames), "kept": len(seq), "quality": quality, "size": list(size),
            "bytes": target.stat().st_size, "status": report.get("status", "")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=512, help="the picture's side in pixels")
    ap.add_argument("--max-steps", type=int, default=80)
    ap.add_argument("--frame-s", type=float, default=0.25)
    ap.add_argument("--width", type=int, default=900, help="the animation's width in pixels")
    ap.add_argument("--max-bytes", type=int, default=2_000_000)
    args = ap.parse_args(argv)
    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    run_sh = kit_run_sh()
    root_args = gui_root_args(run_sh)
    picture, edit = face_and_drag(args.size)
    with tempfile.TemporaryDirectory(prefix="draggan-record-") as tmp:
        io = Path(tmp)
        Image.fromarray(picture).save(io / "input.png")
        (io / "edit.json").write_text(json.dumps({"handles": edit["handles"], "targets": edit["targets"]}))
        r = subprocess.run([sys.executable, str(REPO / "install.py"), "--plugin-only", "--gimp-dir",
                            str(io / "plug-ins")], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            print(r.stdout + r.stderr)
            return 1
        r = subprocess.run(["bash", str(run_sh), *root_args, "--timeout", "1200", "--plugins", str(io / "plug-ins"),
                            "--bind", f"{io}:/mnt/io", "--bind", f"{GUI_BIN}:/usr/local/bin:ro",
                            "--env", "OUT=/mnt/io", "--env", f"ENDPOINT={args.endpoint}",
                            "--env", f"FRAME_S={args.frame_s}", "--env", f"MAX_STEPS={args.max_steps}",
                            "--env", "DRAGGAN_SCREEN=1440x860x24", "--env", "SCREEN_H=860",
                            "--env", "SPLIT_X=820",
                            "--batch-file", str(Path(__file__).with_name("live_driver.py"))],
                           capture_output=True, text=True, timeout=1500)
        report = json.loads((io / "live-report.json").read_text()) if (io / "live-report.json").is_file() else {}
        (args.out / "live-report.json").write_text(json.dumps(report, indent=1))
        if r.returncode != 0 or not report.get("ok"):
            print(f"GIMP exit {r.returncode}; report {report}\n{r.stderr[-4000:]}")
            return 1
        made = assemble(io, args.out, args.max_bytes, args.width)
    print(json.dumps(made, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
