"""Tuning the way a drag's result is made, without re-running the drags.

A drag on faces-128 takes ~30 s on 2 cores; turning its latent into the picture a person gets back
(``backend.sessions.crop_result``: the dense motion, the region, the pins, the native pixels warped)
takes ~1 s. ``capture`` sends tuning cases of ``benchmarks/paired.py`` to a real server in this process
(exactly as paired.py does, the ``default`` row, no selection) and keeps each finished drag session;
``finish`` re-makes the result of every captured session with the motion settings given, and measures
it against the exact answer as paired.py does (ST-LPIPS as a multiple of no edit's, PSNR against no
edit's, the keypoint error as a fraction of the move), optionally writing a picture per case (layer,
exact answer, result; below them each one's difference from the exact answer, x2).

With no ``--set``, ``finish`` reproduces the server's own result byte for byte (tests check this), so
a difference is the settings' doing. Only tuning cases (seed 1): the held-out seed is for reporting
with paired.py, never for choosing settings.

Usage::

    python benchmarks/refinish.py capture --cases 4 6 8 10 --size 512 --out runs/refinish
    python benchmarks/refinish.py finish --captures runs/refinish --set pin_sigma=6 --pictures runs/refinish-pics

Captures are this tool's own pickles (the session's generator, after pivotal tuning, with its
latents); ``finish`` loads only files from the folder it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import paired as bench  # noqa: E402

from training import paired  # noqa: E402

#: HeldSession fields a result is made from (besides the engine session's generator, latent and points)
HELD_FIELDS = ("model", "alignment", "crop_size", "aligned", "result", "native", "ws_initial", "seeds", "allowed",
               "keep", "last", "image_id")


def capture(cases: list[int], size: int, out: Path, cache_dir: Path) -> list[Path]:
    """Drag each tuning case through the server; save ``{case}-{size}.pt`` per case in ``out``."""
    from backend import sessions

    out.mkdir(parents=True, exist_ok=True)
    wire = bench.Wire(cache_dir)
    saved = []
    try:
        for index in cases:
            case = paired.make_case(bench.TUNING_SEED, index)
            layer, _ = case.render(size)
            handles, targets = case.points(size)
            result, seconds = wire.edit(layer, handles, targets, None, "default")
            (owner,) = wire.runner.sessions.owners()
            held: sessions.HeldSession | None = wire.runner.sessions.get(owner, result.session_id)
            assert held is not None, "the server kept no session for the edit"
            state = {name: getattr(held, name) for name in HELD_FIELDS}
            state.update(history=len(held.history), G=held.session.G, ws=held.session.ws.detach().clone(),
                         points=list(held.session.points), seed=case.seed, index=case.index, size=size,
                         note=result.note, rgba=result.image.data, offset=result.offset)
            path = out / f"{case.name}-{size}.pt"
            torch.save(state, path)
            saved.append(path)
            print(f"{case.name:28s} {seconds:5.1f} s  landed {result.landed}  {result.note}", flush=True)
    finally:
        wire.close()
    return saved


def load_held(path: Path) -> tuple[dict[str, Any], Any]:
    """(the capture's dict, a HeldSession that :func:`backend.sessions.crop_result` accepts)."""
    from backend import sessions
    from backend.engine.session import to_uint8

    state = torch.load(path, weights_only=False, map_location="cpu")

    def image() -> np.ndarray:
        with torch.no_grad():
            return to_uint8(state["G"].synthesis(state["ws"], noise_mode="const").float())

    engine = types.SimpleNamespace(G=state["G"], ws=state["ws"], points=state["points"], image=image)
    held = sessions.HeldSession(model=state["model"], session=engine, inversion=None, image_id=state["image_id"],
                                params=bench.plugin_params("default"), alignment=state["alignment"],
                                crop_size=tuple(state["crop_size"]), aligned=state["aligned"], result=state["result"],
                                native=state["native"], ws_initial=state["ws_initial"], seeds=state["seeds"],
                                allowed=state["allowed"], keep=state["keep"], last=state["last"],
                                # crop_result only counts the earlier drags
                                history=[None] * state["history"])  # type: ignore[list-item]
    return state, held


def parse_settings(pairs: list[str]) -> Any:
    """``key=value`` pairs -> MotionSettings with those fields replaced (values parsed as the field's type)."""
    from backend.engine.motion import MotionSettings

    base = MotionSettings()
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not hasattr(base, key):
            raise SystemExit(f"MotionSettings has no field {key!r}")
        current = getattr(base, key)
        if isinstance(current, bool):
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise SystemExit(f"{key} takes true or false, not {value!r}")
            changes[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, tuple):
            changes[key] = tuple(type(current[0])(v) for v in value.split(","))
        else:
            changes[key] = type(current)(value)
    return dataclasses.replace(base, **changes)


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.clip(np.abs(a.astype(np.int32) - b).sum(2) * 2, 0, 255).astype(np.uint8)
    return np.repeat(d[..., None], 3, 2)


def finish(captures: Path, settings: Any, pictures: Path | None, only: str = "*") -> list[dict[str, Any]]:
    """Re-make each captured drag's result (files matching ``only``) with ``settings``; print and return
    the figures per case."""
    from PIL import Image

    from backend import sessions

    figures = bench.Figures()
    rows = []
    if pictures is not None:
        pictures.mkdir(parents=True, exist_ok=True)
    for path in sorted(captures.glob(f"{only}.pt")):
        state, held = load_held(path)
        case = paired.make_case(state["seed"], state["index"])
        layer, exact = case.render(state["size"])
        started = time.perf_counter()
        result = sessions.crop_result(held, "refinish", 0, time.monotonic(), "", settings=settings)
        seconds = time.perf_counter() - started
        picture = bench.composite(layer, result)
        none = figures.stlpips(layer, exact)
        row = dict(case=case.name, size=state["size"], stlpips=figures.stlpips(picture, exact), stlpips_no_edit=none,
                   psnr=paired.psnr(picture, exact), psnr_no_edit=paired.psnr(layer, exact),
                   landed=list(result.landed), seconds=seconds, note=result.note,
                   same_as_server=result.image.data == state["rgba"] and tuple(result.offset) == tuple(state["offset"]))
        row["ratio"] = row["stlpips"] / none
        row.update(bench.keypoint_figures(figures, case, picture, exact, None))
        row["kp_per_move"] = row["kp_error"] / float(case.moves().mean())
        rows.append(row)
        print(f"{case.name:28s} x no edit {row['ratio']:5.2f}  PSNR {row['psnr']:5.1f} / {row['psnr_no_edit']:5.1f}  "
              f"kp {row['kp_error']:4.2f} px ({row['kp_per_move']:.2f}x)  landed {row['landed']}  "
              f"{'same as the server' if row['same_as_server'] else 'changed'}", flush=True)
        if pictures is not None:
            top = np.concatenate([layer, exact, picture], 1)
            bottom = np.concatenate([_difference(layer, exact), np.zeros_like(exact), _difference(picture, exact)], 1)
            Image.fromarray(np.concatenate([top, bottom], 0)).save(pictures / f"{case.name}-{state['size']}.png")
    if rows:
        ratios = np.array([r["ratio"] for r in rows])
        print(f"mean {ratios.mean():.3f}x no edit, closer in {int((ratios < 1).sum())}/{len(rows)}, PSNR above no "
              f"edit in {sum(r['psnr'] > r['psnr_no_edit'] for r in rows)}/{len(rows)}, keypoint error "
              f"{np.mean([r['kp_per_move'] for r in rows]):.2f}x the move")
    return rows


def table(paths: list[Path]) -> str:
    """Markdown: one row per ``finish --json`` file (the settings it changed, the means and counts), then
    each case's ST-LPIPS as a multiple of no edit's under each."""
    from backend.engine.motion import MotionSettings

    default = dataclasses.asdict(MotionSettings())
    runs = []
    for path in paths:
        data = json.loads(path.read_text())
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in data["settings"].items()}
        changed = {k: v for k, v in settings.items() if default.get(k) != v}
        runs.append((", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults", data["cases"]))
    lines = ["| settings | x no edit (mean) | closer | PSNR above no edit | keypoint error x move |",
             "|---|---|---|---|---|"]
    for name, cases in runs:
        ratios = [c["ratio"] for c in cases]
        lines.append(f"| {name} | {np.mean(ratios):.3f} | {sum(r < 1 for r in ratios)}/{len(cases)} | "
                     f"{sum(c['psnr'] > c['psnr_no_edit'] for c in cases)}/{len(cases)} | "
                     f"{np.mean([c['kp_per_move'] for c in cases]):.2f} |")
    names = sorted({c["case"] for _, cases in runs for c in cases})
    lines += ["", "| case | " + " | ".join(name for name, _ in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for case in names:
        cells = [next((f"{c['ratio']:.2f}" for c in cases if c["case"] == case), "") for _, cases in runs]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    cap = sub.add_parser("capture", help="drag tuning cases through the server and keep their sessions")
    cap.add_argument("--cases", type=int, nargs="+", required=True, help="indices of tuning (seed 1) cases")
    cap.add_argument("--size", type=int, default=512, help="the layer's side, pixels")
    cap.add_argument("--out", type=Path, default=REPO / "runs" / "refinish")
    cap.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "paired-cache")
    cap.add_argument("--threads", type=int, default=2)
    fin = sub.add_parser("finish", help="re-make the captured results with other motion settings")
    fin.add_argument("--captures", type=Path, default=REPO / "runs" / "refinish")
    fin.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="a MotionSettings field to change (repeatable), e.g. pin_sigma=6")
    fin.add_argument("--only", default="*", help="the captures whose names match this pattern, e.g. 's1-0[12]*'")
    fin.add_argument("--pictures", type=Path, help="write layer / exact / result pictures here")
    fin.add_argument("--json", type=Path, help="write the figures per case here")
    fin.add_argument("--threads", type=int, default=2)
    tab = sub.add_parser("table", help="one markdown table from several finish --json files")
    tab.add_argument("jsons", type=Path, nargs="+")
    tab.add_argument("--markdown", type=Path, help="write it here (else print it)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.action == "table":
        text = table(args.jsons)
        if args.markdown:
            args.markdown.write_text(text)
        else:
            print(text, end="")
        return
    torch.set_num_threads(args.threads)
    if args.action == "capture":
        capture(args.cases, args.size, args.out, args.cache_dir)
        return
    settings = parse_settings(args.set)
    rows = finish(args.captures, settings, args.pictures, args.only)
    if args.json:
        args.json.write_text(json.dumps(dict(settings=dataclasses.asdict(settings), cases=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
