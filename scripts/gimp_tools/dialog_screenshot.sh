#!/usr/bin/env bash
# Screenshot of the plug-in's dialog in the real GIMP 3, and a check that the interactive run works
# (dialog shown, OK pressed, edit done). Needs root; runs in the chroot of tests/gimp/kit, whose
# recipe includes the X tools this uses (Xvfb, xdotool, xwd, netpbm), and builds it when missing:
#
#   bash scripts/gimp_tools/dialog_screenshot.sh OUTDIR ENDPOINT [PHOTO.png]
#
# ENDPOINT is a running backend (e.g. tests/gimp/backend_host.py's); it becomes the dialog's
# default address through draggan.json. Writes OUTDIR/dialog-screen.png (the whole virtual screen; the
# dialog sits at 0,0 with the size in OUTDIR/geometry.txt: docs/images/plugin-dialog.png is that crop),
# OUTDIR/dialog-report.json. DRAGGAN_GIMP3_ROOT picks another chroot, as for the kit.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
KIT=$REPO/tests/gimp/kit
OUT=$(realpath "$1"); ENDPOINT=$2; PHOTO=${3:-}
mkdir -p "$OUT"
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/draggan-dialog.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
python3 "$REPO/install.py" --plugin-only --gimp-dir "$STAGE/plug-ins" >/dev/null
printf '{"address": "%s"}\n' "$ENDPOINT" > "$STAGE/plug-ins/draggan/draggan.json"
if [ -n "$PHOTO" ]; then cp "$PHOTO" "$OUT/input.png"; fi
[ -f "$OUT/input.png" ] || python3 -c "
from PIL import Image; import sys
Image.radial_gradient('L').resize((160, 120)).convert('RGB').save(sys.argv[1])" "$OUT/input.png"
bash "$KIT/setup.sh"
bash "$KIT/run.sh" --timeout 300 \
  --plugins "$STAGE/plug-ins" --bind "$OUT:/mnt/io" --env OUT=/mnt/io --env DISPLAY=:99 \
  --batch-file "$HERE/dialog_driver.py"
cat "$OUT/dialog-report.json"
