#!/usr/bin/env bash
# One GPU training run of the default model (issue 15), at most about 8 minutes on the device:
#   here, once:    bash training/gpu_prepare.sh           (.device/: the AlexNet ST-LPIPS weights)
#   here, first:   bash training/gpu_run.sh --dry-run     (CPU, about a minute: the same steps, tiny)
#   on the device: run(command="bash training/gpu_run.sh", carry=[".device"], timeout_s=600)
# Steps: the renderer's images/s (1 process, then all workers: the cap on the run), training from
# the committed resumable checkpoint with bf16 autocast and a large batch fed by (cores - 1)
# renderer processes, in curriculum phases (SCHEDULE of --geometry-scale values), then the model-card figures of the result. Back through $OUT (16 MB a file
# at most): train.log, renderer.txt, eval.txt, faces128-resume.pt (compact, about 8 MB),
# faces-128-candidate.pt (EMA weights) and the last sample grid. Env: MINUTES, BATCH, LR, SCHEDULE,
# ADV (the patch discriminator's weight; default 0: the critic sharpens within ~1,800 iterations but
# pulls nose and mouth off when it runs longer, so it is a short finishing branch before an export,
# training/docs/faces-128-history.md, session 7).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-runs/gpu-dry}
RUN=${RUN_DIR:-/tmp/draggan-gpu-run}
mkdir -p "$OUT"
rm -rf "$RUN"
export PYTHONPATH="$PWD/.device/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ $DRY = 1 ]; then
  DEVICE=cpu; MIN=${MINUTES:-0.5}; BATCH=${BATCH:-8}; WORKERS=1; BF16=""; THREADS=2; LPIPS_IMAGES=4; EVAL_N=${EVAL_N:-32}
else
  DEVICE=cuda; MIN=${MINUTES:-6.5}; BATCH=${BATCH:-64}; WORKERS=$(( $(nproc) - 1 )); BF16=--bf16; THREADS=1
  LPIPS_IMAGES=16; EVAL_N=256
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/renderer.txt"
python3 -c "from inversion.lpips import load_shipped_state_dict as l; l('alex')" ||
  { echo "gpu_run: the AlexNet ST-LPIPS weights are missing: run training/gpu_prepare.sh here and carry .device" >&2; exit 1; }
python3 -m training.renderer_rate --seconds 5 --workers "$WORKERS" | tee -a "$OUT/renderer.txt"
# The curriculum (training/docs/faces-128-history.md, session 3): the shape and pose spread grows phase by
# phase (--geometry-scale), the time split equally; the run dir carries the state between phases.
SCHEDULE=${SCHEDULE:-"1.0"}   # the curriculum reached the real domain in session 5
phases=$(echo $SCHEDULE | wc -w)
PHASE_MIN=$(python3 -c "print($MIN / $phases)")
: > "$OUT/train.log"
n=0; rc=0
for scale in $SCHEDULE; do
  n=$((n + 1)); final=()
  [ $n -eq $phases ] && final=(--save-resumable "$OUT/faces128-resume.pt" --export "$OUT/faces-128-candidate.pt"
                              --export-weights ema)   # the EMA beats raw at S = 1 (faces-128 history, session 5)
  echo "== phase $n/$phases: geometry scale $scale, $PHASE_MIN min" | tee -a "$OUT/train.log"
  python3 -m training.train_generator --run-dir "$RUN" --resume-from training/checkpoints/faces128-resume.pt \
    --device "$DEVICE" $BF16 --batch "$BATCH" --workers "$WORKERS" --threads "$THREADS" --lr "${LR:-0.004}" \
    --lpips-weight 0.2 --lpips-images "$LPIPS_IMAGES" --multiscale-weight 1.0 --geometry-scale "$scale" \
    --adversarial-weight "${ADV:-0}" \
    --minutes "$PHASE_MIN" --checkpoint-minutes 2 --sample-minutes 1000 --log-every 100 "${final[@]}" \
    2>&1 | tee -a "$OUT/train.log"
  rc=${PIPESTATUS[0]}
  [ $rc -eq 0 ] || break
done
cp "$(ls "$RUN"/samples-*.png | tail -1)" "$OUT/samples-last.png" 2>/dev/null || true
[ $rc -eq 0 ] || { echo "gpu_run: training failed ($rc)" >&2; exit $rc; }
python3 -m training.evaluate_generator "$OUT/faces-128-candidate.pt" --n "$EVAL_N" | tee "$OUT/eval.txt"
