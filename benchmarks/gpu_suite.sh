#!/usr/bin/env bash
# One command for the day a GPU is lent (<= 5 minutes): device tests, drag step at 256/512/1024
# (reference vs fast, fp32 vs bf16), time per edit, 512² inversion. Writes gpu_suite.json and
# gpu_suite.md under --out DIR (default $OUT). --dry-run: the same on the CPU with tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_suite.py "$@"
