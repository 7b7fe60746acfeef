"""benchmarks/gpu_suite.sh --dry-run on the CPU: every step runs and one JSON and one table come out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import env_with_this_python

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_suite_dry_run_writes_one_json_and_one_table(tmp_path):
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=540, env=env_with_this_python())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["dry_run"] and [s["name"] for s in report["steps"]] == [
        "device tests", "drag step", "edit time", "inversion 512 (dry: 32)"]
    assert all(s["rc"] == 0 for s in report["steps"])
    assert "passed" in report["steps"][0]["output_tail"]
    rows = report["steps"][1]["figures"]["rows"]
    assert {(r["variant"], r["precision"]) for r in rows} == {("reference", "fp32"), ("fast", "fp32"), ("fast", "bf16")}
    assert report["steps"][2]["figures"]["profiles"]["fixed"]["summary"]["first_preview_s"] > 0
    assert report["steps"][2]["figures"]["random_stlpips"]
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "DRY RUN" in table and "| 64 | fast | bf16 |" in table
