#!/usr/bin/env bash
# Semi-supervised fine-tuning with clip-level views on the sprite videos: 10 labels per class plus the
# other 1950 training videos unlabeled, from the CVRL encoder of sprites.sh, same steps as its fine-tuning.
# Usage: benchmarks/video/sprites_semi.sh [OUT] [SEED]   (after sprites.sh)
set -euo pipefail
OUT=${1:-runs/video-sprites}
SEED=${2:-0}
PY=${PY:-.venv/bin/semivit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON="--data $OUT/sprites.npz --recipe cvrl --seed $SEED --quiet --labels 10-per-class --steps ${FINETUNE_STEPS:-200} --mu 1 --resume"
$PY video finetune $COMMON --init "$OUT/cvrl" --semi ema_teacher --threshold 0.7 --out "$OUT/ema_teacher-cvrl-10pc"
$PY video finetune $COMMON --init "$OUT/cvrl" --semi fixmatch --threshold 0.95 --out "$OUT/fixmatch-cvrl-10pc"
