"""Drags with exact answers: what a person gets back from the server, measured against the right picture.

The procedural renderer (training/faces.py) draws a face before and after a change of one geometric
parameter (training/paired.py), so the correct result of dragging the "before" keypoints onto the
"after" ones is known exactly at any size. Each case is sent to a real ``draggan-backend`` server
(in this process, ZeroMQ over loopback) exactly as the plug-in sends it for the built-in faces-128: the
whole layer at its own resolution (the model draws whole faces), handles and targets in its pixels,
the plug-in's parameters (200 steps, radii for 128 px), with and without a selection around the
moving parts.

Rows (``--rows``), each a set of request options:

* ``today``   - protocol 3's edit: no PTI, the model's pixels, the drag may move the whole picture;
* ``detail``  - only the result changed: the layer's own pixels moved by the drag's motion;
* ``region``  - only the region changed: without a selection the drag may move a box around its points;
* ``pti``     - only the inversion changed: pivotal tuning;
* ``default`` - the server's defaults now: the model's own PTI (on for faces-128), the picture's detail,
  the region around the points.

Baselines, computed here without a server: ``no edit`` (the layer itself), ``ceiling`` (the exact answer
drawn at the model's 128 px, scaled to the layer: the best any 128 px model's own pixels can be) and
``warp rbf`` / ``warp tps`` (the layer's pixels warped by a smooth interpolation of handle -> target
alone: a local Gaussian one, and a thin-plate spline with the border held).

Per edit: keypoint error after (the keypoint detector on the result at 128 px, against the renderer's
exact targets and against the detector's own reading of the exact answer, which cancels its bias on
that face), the gap between the server's tracked handles and the detected ones, whether the server
reported the drag stopped short, ST-LPIPS (VGG, shift-tolerant) and PSNR against the exact answer at
128 px and at the layer's size, the mean change of the pixels outside the moving parts, and seconds.

Usage::

    python benchmarks/paired.py --cases 60 --held-out 20 --sizes 512 --json docs/paired-faces-128.json \\
        --markdown docs/paired-faces-128.md --resume          # the tuning and held-out cases at 512 px
    python benchmarks/paired.py --cases 0 --held-out 20 --sizes 128 1024 --json ... --resume

The JSON is rewritten after every case; ``--resume`` skips the edits already in it. Cases of seed 2
(``--held-out``) are never used for tuning and are reported separately.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from draggan_wire import protocol  # noqa: E402
from training import paired  # noqa: E402

TUNING_SEED = 1
HELD_OUT_SEED = 2
MODEL = "faces-128"
MODEL_SIZE = 128

ROWS: dict[str, dict[str, Any]] = {
    "today": dict(pti=False, result="model", region="whole"),
    "detail": dict(pti=False, result="detail", region="whole"),
    "region": dict(pti=False, result="model", region="points"),
    "pti": dict(pti=True, result="model", region="whole"),
    "default": dict(pti=None, result="detail", region="points"),
}
# with a selection the region row and the whole/points choice mean nothing: the selection is the region
SELECTION_ROWS = ("today", "pti", "detail", "default")
BASELINES = ("no edit", "ceiling", "warp rbf", "warp tps")


def plugin_params(row: str) -> protocol.EditParams:
    """The plug-in's request for faces-128 (options.edit_params with its defaults) under ``row``."""
    options = ROWS[row]
    # the plug-in's radii for a 128 px model: at least 1 and 4 model pixels (options.radii_for)
    per_pixel = 512.0 / MODEL_SIZE
    return protocol.EditParams(max_steps=200, lr=0.002, latent="w+", r1=max(3.0, per_pixel),
                               r2=max(12.0, 4 * per_pixel), inversion="fast", pti=options["pti"], preview_every=0,
                               region=options["region"])


class Figures:
    """The measuring instruments: ST-LPIPS (VGG) and the keypoint detector, loaded once."""

    def __init__(self) -> None:
        from alignment.detector import load_detector
        from inversion.lpips import STLPIPS

        self.lpips = STLPIPS("vgg").eval()
        self.detector = load_detector()

    @staticmethod
    def _tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1

    def stlpips(self, a: np.ndarray, b: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.lpips(self._tensor(a), self._tensor(b)))

    def keypoints(self, image: np.ndarray) -> np.ndarray:
        return self.detector.predict(paired.resize(image, MODEL_SIZE)[None])[0].astype(np.float64)

    def compare(self, result: np.ndarray, exact: np.ndarray, layer: np.ndarray, moving: np.ndarray) -> dict[str, float]:
        small, exact_small = paired.resize(result, MODEL_SIZE), paired.resize(exact, MODEL_SIZE)
        return dict(stlpips=self.stlpips(result, exact), psnr=paired.psnr(result, exact),
                    stlpips_128=self.stlpips(small, exact_small), psnr_128=paired.psnr(small, exact_small),
                    outside=paired.mean_change_outside(result, layer, moving))


def keypoint_figures(figures: Figures, case: paired.PairedCase, result: np.ndarray, exact: np.ndarray,
                     tracked_128: np.ndarray | None) -> dict[str, Any]:
    idx = list(case.keypoints)
    _, targets = case.points(MODEL_SIZE)
    found = figures.keypoints(result)[idx]
    found_exact = figures.keypoints(exact)[idx]
    out: dict[str, Any] = dict(kp_error=float(np.hypot(*(found - targets).T).mean()),
                               kp_error_vs_exact=float(np.hypot(*(found - found_exact).T).mean()),
                               kp_worst=float(np.hypot(*(found - targets).T).max()))
    if tracked_128 is not None:
        out["gap"] = float(np.hypot(*(tracked_128 - found).T).mean())
    return out


class Wire:
    """A real server in this process on a free loopback port, and a client that talks to it."""

    def __init__(self, cache_dir: Path) -> None:
        from backend.edit_runner import EditRunner
        from backend.server import Server, ServerConfig
        from draggan_wire.client import Client

        self.runner = EditRunner(device="cpu", cache=True, cache_dir=cache_dir)
        self.server = Server(ServerConfig(bind="tcp://127.0.0.1:0", heartbeat_s=2.0), self.runner).start_thread()
        self.client = Client(self.server.endpoint, timeout_s=600)
        self.client.hello()

    def edit(self, layer: np.ndarray, handles: np.ndarray, targets: np.ndarray, mask: np.ndarray | None,
             row: str) -> tuple[protocol.Result, float]:
        h, w = layer.shape[:2]
        request = protocol.Edit(model=MODEL, handles=[tuple(map(float, p)) for p in handles],
                                targets=[tuple(map(float, p)) for p in targets],
                                image=protocol.Image(w, h, 3, np.ascontiguousarray(layer).tobytes()),
                                mask=None if mask is None else protocol.Image(w, h, 1, mask.tobytes()),
                                params=plugin_params(row), result=ROWS[row]["result"])
        started = time.perf_counter()
        result = self.client.edit(request)
        return result, time.perf_counter() - started

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def composite(layer: np.ndarray, result: protocol.Result) -> np.ndarray:
    """The result layer over the user's layer, as GIMP shows it (the RGBA box at its offset)."""
    out = layer.copy()
    rgba = np.frombuffer(result.image.data, np.uint8).reshape(result.image.height, result.image.width, 4)
    x, y = result.offset
    box = out[y:y + rgba.shape[0], x:x + rgba.shape[1]]
    produced = rgba[..., 3] == 255
    box[produced] = rgba[..., :3][produced]
    return out


def run_case(wire: Wire, figures: Figures, case: paired.PairedCase, size: int, rows: Sequence[str],
             done: set[tuple[str, ...]]) -> list[dict[str, Any]]:
    layer, exact = case.render(size)
    handles, targets = case.points(size)
    moving = case.moving_parts(size)
    base = dict(case=case.name, seed=case.seed, index=case.index, kind=case.kind, parameter=case.parameter,
                new_content=case.new_content, size=size, move_128=float(case.moves().mean()),
                handles=len(case.keypoints))
    records = []
    baselines = {"no edit": layer, "ceiling": paired.resize(case.render(MODEL_SIZE)[1], size),
                 "warp rbf": paired.warp_only(layer, handles, targets, "rbf"),
                 "warp tps": paired.warp_only(layer, handles, targets, "tps")}
    for name, picture in baselines.items():
        key = (case.name, str(size), name, "none")
        if key in done:
            continue
        rec = dict(base, row=name, selection=False, **figures.compare(picture, exact, layer, moving))
        rec.update(keypoint_figures(figures, case, picture, exact, None))
        records.append(rec)
    selection = case.selection(size)
    for with_selection in (False, True):
        for row in rows:
            if with_selection and row not in SELECTION_ROWS:
                continue
            key = (case.name, str(size), row, "selection" if with_selection else "none")
            if key in done:
                continue
            result, seconds = wire.edit(layer, handles, targets, selection if with_selection else None, row)
            picture = composite(layer, result)
            tracked = (np.asarray(result.points, np.float64) + 0.5) * (MODEL_SIZE / size) - 0.5
            rec = dict(base, row=row, selection=with_selection, seconds=seconds, steps=result.steps,
                       landed=list(result.landed), stopped_short=not all(result.landed),
                       inversion_psnr=result.inversion.psnr if result.inversion else None,
                       inversion_stlpips=result.inversion.stlpips if result.inversion else None,
                       from_cache=bool(result.inversion.from_cache) if result.inversion else None,
                       **figures.compare(picture, exact, layer, moving))
            rec.update(keypoint_figures(figures, case, picture, exact, tracked))
            if with_selection:
                outside = selection == 0
                rec["outside_selection_identical"] = bool(np.array_equal(picture[outside], layer[outside]))
            records.append(rec)
    return records


# ------------------------------------------------------------------------------------------ summary


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (group, size, selection, row): means and the share of cases closer to the exact answer than
    no edit (by ST-LPIPS and by PSNR), keypoint error over the move, stopped-short reports."""
    no_edit = {(r["case"], r["size"]): r for r in records if r["row"] == "no edit"}
    groups: dict[tuple[str, int, bool, str], list[dict[str, Any]]] = {}
    for r in records:
        group = "held-out" if r["seed"] == HELD_OUT_SEED else "tuning"
        groups.setdefault((group, r["size"], r["selection"], r["row"]), []).append(r)
    out = {}
    for (group, size, selection, row), rs in sorted(groups.items()):
        base = [no_edit[(r["case"], r["size"])] for r in rs if (r["case"], r["size"]) in no_edit]
        entry: dict[str, Any] = dict(n=len(rs), group=group, size=size, selection=selection, row=row)
        for key in ("stlpips", "psnr", "stlpips_128", "psnr_128", "outside", "kp_error", "kp_error_vs_exact",
                    "gap", "seconds"):
            values = [r[key] for r in rs if r.get(key) is not None and math.isfinite(r[key])]
            if values:
                entry[key] = _mean(values)
        if len(base) == len(rs):
            entry["closer_stlpips"] = _mean([float(r["stlpips"] < b["stlpips"]) for r, b in zip(rs, base)])
            entry["closer_psnr"] = _mean([float(r["psnr"] > b["psnr"]) for r, b in zip(rs, base)])
            entry["closer_stlpips_128"] = _mean([float(r["stlpips_128"] < b["stlpips_128"]) for r, b in zip(rs, base)])
            entry["stlpips_ratio"] = entry["stlpips"] / max(_mean([b["stlpips"] for b in base]), 1e-12)
        for kind in ("local", "global"):
            sel = [r for r in rs if r["kind"] == kind]
            if sel:
                entry[f"kp_{kind}"] = _mean([r["kp_error"] for r in sel])
                entry[f"kp_ratio_{kind}"] = _mean([r["kp_error"] for r in sel]) / _mean([r["move_128"] for r in sel])
        new = [r for r in rs if r["new_content"]]
        if new:
            entry["stlpips_new_content"] = _mean([r["stlpips"] for r in new])
        if "stopped_short" in rs[0]:
            far = [r for r in rs if r["kp_worst"] > 3.0]
            entry["far_reported"] = f"{sum(r['stopped_short'] for r in far)}/{len(far)}"
            entry["stopped_short"] = f"{sum(r['stopped_short'] for r in rs)}/{len(rs)}"
        out[f"{group}/{size}/{'selection' if selection else 'none'}/{row}"] = entry
    return out


HEADER = """# Drags with exact answers: faces-128 over the wire

Made by `benchmarks/paired.py` from `{json}` (regenerate with `python benchmarks/paired.py --from-json
{json} --markdown {markdown}`); the runs: {commands}. Cases: training/paired.py (a procedural face
before and after one geometric parameter changed within the training range; local = mouth width,
opening and smile, gaze, brows, nose, eye height; global = pose, position and size of the head; 1-4
handles of at least 2 px at 128 px). Held-out = seed 2, never used for tuning. Layers of the given size
are sent as the plug-in sends them (the whole layer, natively; its parameters) to a real server on
loopback; {threads} thread(s), {machine}, shared with other work (times are indicative).

Rows: *today* = protocol 3's edit (no PTI, the model's pixels, the whole picture may move); *detail*,
*region*, *pti* = each of the new levers alone; *default* = the server's defaults now. Rows marked *v1*
are the same requests answered by the first protocol-4 server (before the pins that take each handle's
content onto its target, the 6 px least margin of the box, its feathered edge and the residual kept to
the motion's core); *v2*: the next server (those levers, bilinear resampling); *v2 + rigid*: v2 with rigid
moves (points that all move by one shift and scale move the part they lie on, in the layer's pixels);
*v3*: that with bicubic resampling; *v3 + local regions* (an experiment, not adopted): v3 where, without a
selection, points in a row or a small cluster (less than 12 % of the height apart on one axis) each get
their own box, with the pins below; *v4*: v3 with pins that start from where the motion, as the
region lets it through, put each handle (not where the model's whole motion put it); *v4 + pixel landing
check* (an experiment, reverted; 10 cases): v4's pictures, with "landed" read from the result's pixels
(each handle's neighbourhood looked for at its target) instead of the motion; *v5*: v4 with pins at
least twice as wide as the way they carry content (a narrow pin folded the picture when the model stopped
far short), "landed" only within 40 % of a short move, and, without a selection, the wide box of rigid
moves for points spread over the face that turn as one (a head tilted to one side); *v6*: v5 where,
without a selection, points in a row or a cluster (not spread over the face on both axes) move the
picture only in a box around each point (1.5x its move as margin), the model still drawing its change in
the one box; *default*: v6 where points in a row or a cluster that all lie on strokes (a brow: one flat
colour, distinct from its surroundings, elongated) move those strokes as wholes in the layer's pixels;
*strokes v0*: the first run of that, before strokes had to move over their own ground (it moved the
lower lip of a mouth closing, s2-002, over the upper one and left the mouth open). Baselines:
*no edit*, *ceiling* (the exact answer drawn at 128 px and scaled up: the best a 128 px model's own
pixels could be), *warp rbf* / *warp tps* (the layer warped by the handle -> target points alone).
ST-LPIPS is the VGG shift-tolerant distance to the exact answer at the layer's size ("x no edit": the
mean over the mean of no edit; "closer": the share of cases better than no edit); the keypoint error
is the detector's, on the result at 128 px, against the renderer's targets ("x move": over the mean
move); "stopped short reported" counts, among the edits whose detected handle ended more than 3 px
from its target, those the server reported as stopped short; "outside moving parts" is the mean
change (0-255) of the pixels the exact answer does not change. Seconds: the first row of a case pays
for its inversion (today and pti; detail and region reuse today's, default reuses pti's).

"""


def markdown(summary: dict[str, Any], meta: dict[str, Any] | None = None) -> str:
    head = ""
    if meta is not None:
        head = HEADER.format(json=meta.get("json", "docs/paired-faces-128.json"),
                             markdown=meta.get("markdown", "docs/paired-faces-128.md"),
                             commands="; ".join(f"`{c}`" for c in meta.get("commands") or [meta.get("command", "")]),
                             threads=meta.get("threads", "?"), machine=meta.get("machine", "?"))
    lines = ["| cases | layer | selection | row | n | ST-LPIPS (x no edit) | closer than no edit: ST-LPIPS / PSNR "
             "| PSNR dB | at 128: ST-LPIPS, closer | keypoint error local / global px (x move) "
             "| stopped short reported (handle > 3 px) | outside moving parts | s per edit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary.values():
        ratio = f" ({e['stlpips_ratio']:.2f})" if "stlpips_ratio" in e else ""
        closer = (f"{e['closer_stlpips']:.0%} / {e['closer_psnr']:.0%}" if "closer_stlpips" in e else "")
        small = (f"{e['stlpips_128']:.4f}, {e['closer_stlpips_128']:.0%}" if "closer_stlpips_128" in e
                 else f"{e.get('stlpips_128', float('nan')):.4f}")
        kp = " / ".join(f"{e[f'kp_{k}']:.2f} ({e[f'kp_ratio_{k}']:.2f})" for k in ("local", "global")
                        if f"kp_{k}" in e)
        lines.append(f"| {e['group']} | {e['size']} | {'yes' if e['selection'] else 'no'} | {e['row']} | {e['n']} "
                     f"| {e['stlpips']:.4f}{ratio} | {closer} | {e.get('psnr', math.inf):.2f} | {small} | {kp} "
                     f"| {e.get('far_reported', '')} | {e['outside']:.2f} | {e.get('seconds', float('nan')):.1f} |")
    return head + "\n".join(lines) + "\n"


def _machine() -> str:
    """The CPU's model name (Linux) or the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=60, help="tuning cases (seed 1)")
    ap.add_argument("--held-out", type=int, default=20, help="held-out cases (seed 2), never used for tuning")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512], help="layer sizes, pixels")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "paired-cache")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--from-json", type=Path, default=None, help="only write --markdown from this JSON")
    args = ap.parse_args(argv)
    if args.from_json is not None:
        data = json.loads(args.from_json.read_text())
        table = markdown(summarize(data["edits"]), data["meta"])
        if args.markdown is not None:
            args.markdown.write_text(table)
        print(table)
        return 0
    torch.set_num_threads(args.threads)
    records: list[dict[str, Any]] = []
    if args.resume and args.json is not None and args.json.exists():
        records = json.loads(args.json.read_text())["edits"]
    done = {(r["case"], str(r["size"]), r["row"], "selection" if r["selection"] else "none") for r in records}
    # the held-out cases first: they are the figures that count, should a long run be stopped early
    cases = paired.make_cases(HELD_OUT_SEED, args.held_out) + paired.make_cases(TUNING_SEED, args.cases)
    figures = Figures()
    wire = Wire(args.cache_dir)
    command = " ".join(["python", "benchmarks/paired.py", *(argv or sys.argv[1:])])
    previous = json.loads(args.json.read_text())["meta"] if args.resume and args.json and args.json.exists() else {}
    meta = dict(model=MODEL, threads=args.threads, machine=_machine(), torch=torch.__version__,
                json=str(args.json), markdown=str(args.markdown),
                commands=[*previous.get("commands", [previous["command"]] if "command" in previous else []),
                          command])
    try:
        for size in args.sizes:
            for number, case in enumerate(cases, 1):
                started = time.perf_counter()
                new = run_case(wire, figures, case, size, args.rows, done)
                records += new
                done |= {(r["case"], str(r["size"]), r["row"], "selection" if r["selection"] else "none") for r in new}
                if new:
                    print(f"[{size} px {number}/{len(cases)}] {case.name}: {len(new)} edits in "
                          f"{time.perf_counter() - started:.0f} s", flush=True)
                if args.json is not None and new:
                    summary = summarize(records)
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(dict(meta=meta, summary=summary, edits=records), indent=1))
    finally:
        wire.close()
    summary = summarize(records)
    table = markdown(summary, meta)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
