"""One-shot GPU suite (one GPU session measures everything): device tests, drag step, time per edit,
512² inversion -> one JSON + one table.

    benchmarks/gpu_suite.sh [--out DIR] [--dry-run]

Runs, each in a child process with its own time limit (the whole suite stays under 5 minutes):

1. ``pytest tests/device/test_device.py`` (marker ``device``) on CUDA;
2. ``benchmarks/drag_step.py`` on CUDA at 256², 512², 1024²: reference vs fast, fast in fp32 and bf16
   (fast steps queued without host sync, timed as a batch);
3. ``benchmarks/edit_time.py``: the default model's edit (30 steps, previews every 5; and the
   plug-in's defaults), ST-LPIPS randomly initialised when the wheel is missing (timing only);
4. ``benchmarks/edit_time.py --random-model 512 --profiles none``: the 512² inversion time.

Writes ``gpu_suite.json`` (every figure, every child's output tail, return codes) and
``gpu_suite.md`` (the table) under ``--out`` (default ``$OUT``, else ``runs/gpu_suite``).
``--dry-run``: the same steps on the CPU with tiny configurations (seconds), to check the suite
before a GPU is lent (``tests/device/test_gpu_suite_dry_run.py`` runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def steps(dry_run: bool, out: Path) -> list[dict[str, Any]]:
    py = sys.executable
    if dry_run:
        return [
            dict(name="device tests", limit=120, env={"DRAGGAN_TEST_DEVICE": "cpu"},
                 cmd=[py, "-m", "pytest", "tests/device/test_device.py", "-q", "-p", "no:cacheprovider",
                      "-m", "device"]),
            dict(name="drag step", limit=120, json=out / "drag_step.json",
                 cmd=[py, "benchmarks/drag_step.py", "--device", "cpu", "--resolutions", "64", "--points", "1",
                      "--precisions", "fp32", "bf16", "--rounds", "1", "--steps", "2", "--warmup", "1",
                      "--threads", "1", "--json", str(out / "drag_step.json")]),
            dict(name="edit time", limit=120, json=out / "edit_time.json",
                 cmd=[py, "benchmarks/edit_time.py", "--random-model", "32", "--pictures", "1", "--steps", "3",
                      "--search-samples", "1", "--profiles", "fixed", "--threads", "1", "--random-stlpips",
                      "--json", str(out / "edit_time.json")]),
            dict(name="inversion 512 (dry: 32)", limit=60, json=out / "inversion.json",
                 cmd=[py, "benchmarks/edit_time.py", "--random-model", "32", "--pictures", "1", "--steps", "3",
                      "--search-samples", "1", "--profiles", "none", "--threads", "1", "--random-stlpips",
                      "--json", str(out / "inversion.json")]),
        ]
    return [
        dict(name="device tests", limit=60, env={"DRAGGAN_TEST_DEVICE": "cuda"},
             cmd=[py, "-m", "pytest", "tests/device/test_device.py", "-q", "-p", "no:cacheprovider", "-m", "device"]),
        dict(name="drag step", limit=120, json=out / "drag_step.json",
             cmd=[py, "benchmarks/drag_step.py", "--device", "cuda", "--resolutions", "256", "512", "1024",
                  "--points", "1", "--precisions", "fp32", "bf16", "--rounds", "1", "--steps", "20", "--warmup",
                  "3", "--threads", "16", "--json", str(out / "drag_step.json")]),
        dict(name="edit time", limit=60, json=out / "edit_time.json",
             cmd=[py, "benchmarks/edit_time.py", "--device", "cuda", "--pictures", "5", "--threads", "16",
                  "--json", str(out / "edit_time.json")]),
        dict(name="inversion 512", limit=45, json=out / "inversion.json",
             cmd=[py, "benchmarks/edit_time.py", "--device", "cuda", "--random-model", "512", "--pictures", "1",
                  "--profiles", "none", "--threads", "16", "--json", str(out / "inversion.json")]),
    ]


def run_step(step: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO), **step.get("env", {}))
    started = time.perf_counter()
    try:
        done = subprocess.run(step["cmd"], cwd=REPO, env=env, capture_output=True, text=True, timeout=step["limit"])
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    record: dict[str, Any] = dict(name=step["name"], rc=rc, seconds=round(time.perf_counter() - started, 1),
                                  command=" ".join(step["cmd"][1:]), output_tail=output[-4000:])
    path = step.get("json")
    if path is not None and Path(path).is_file():
        record["figures"] = json.loads(Path(path).read_text())
    return record


def table(report: dict[str, Any]) -> str:
    lines = [f"# GPU suite ({'DRY RUN on CPU, tiny sizes: not figures' if report['dry_run'] else report['device']})",
             "", f"torch {report['torch']}, {report['started']}", "", "| step | rc | seconds |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['rc']} | {r['seconds']} |" for r in report["steps"]]
    for record in report["steps"]:
        figures = record.get("figures") or {}
        if "rows" in figures:
            lines += ["", "## drag step (s/step median; peak = max allocated)", "",
                      "| res | variant | precision | s/step | ms/step | peak GiB | speed-up | peak ratio |",
                      "|---|---|---|---|---|---|---|---|"]
            for row in figures["rows"]:
                speedup = f"{row['speedup']:.2f}x" if row.get("speedup") else ""
                ratio = f"{row['peak_ratio']:.2f}" if row.get("peak_ratio") else ""
                lines.append(f"| {row['resolution']} | {row['variant']} | {row['precision']} "
                             f"| {row['median_s']:.4f} | {row['median_s'] * 1000:.1f} "
                             f"| {row['peak_bytes'] / 2**30:.2f} | {speedup} | {ratio} |")
        if "profiles" in figures:
            lines += ["", f"## {record['name']} ({figures['model']}, ST-LPIPS "
                          f"{'random (timing only)' if figures['random_stlpips'] else 'shipped'})", "",
                      "| profile | inversion s | first preview s | whole s | drag steps | ST-LPIPS |",
                      "|---|---|---|---|---|---|"]
            for name, profile in figures["profiles"].items():
                s = profile["summary"]

                def f(key: str, s: dict[str, Any] = s) -> str:
                    return "" if s.get(key) is None else f"{s[key]:.2f}"
                lines.append(f"| {name} | {f('inversion_s')} | {f('first_preview_s')} | {f('whole_s')} "
                             f"| {f('drag_steps')} | {f('stlpips')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "gpu_suite"))
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    device = "cpu (dry run)"
    if not args.dry_run:
        if not torch.cuda.is_available():
            print("no CUDA device: use --dry-run on a CPU machine", file=sys.stderr)
            return 2
        device = torch.cuda.get_device_name(0)
    report: dict[str, Any] = dict(dry_run=args.dry_run, device=device, torch=torch.__version__,
                                  python=platform.python_version(), started=time.strftime("%Y-%m-%d %H:%M:%S"),
                                  steps=[])
    for step in steps(args.dry_run, out):
        print(f"[gpu_suite] {step['name']} ...", file=sys.stderr, flush=True)
        record = run_step(step)
        report["steps"].append(record)
        print(f"[gpu_suite] {step['name']}: rc {record['rc']} in {record['seconds']} s", file=sys.stderr, flush=True)
        (out / "gpu_suite.json").write_text(json.dumps(report, indent=1))  # partial results survive a kill
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_suite.md").write_text(table(report))
    print(table(report))
    return 0 if all(r["rc"] == 0 for r in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
