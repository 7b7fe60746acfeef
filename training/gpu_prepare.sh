#!/usr/bin/env bash
# Run HERE before a device call: puts what the GPU run needs and the device lacks into .device/
# (git-ignored; name it in the device call's `carry`):
#   .device/site/stlpips_pytorch/  the AlexNet ST-LPIPS weights only (9.5 MB; the whole wheel is 64 MB),
#                                  as the package layout inversion.lpips reads them from.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
src=$("$PY" -c "import importlib.resources as r; print(r.files('stlpips_pytorch'))")
dst=.device/site/stlpips_pytorch
mkdir -p "$dst/weights/vST0.0"
: > "$dst/__init__.py"
cp "$src/weights/vST0.0/alex_shift_tolerant.pth" "$dst/weights/vST0.0/"
du -sh .device
