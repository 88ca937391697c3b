#!/usr/bin/env bash
# CVRL on moving-sprite videos (labels = motion pattern): pre-train, then linear probe and few-label
# fine-tuning, against the same encoder from its random initialisation (same seed, same steps).
# Usage: benchmarks/video/sprites.sh [OUT] [SEED]   (CPU: ~25 min on one busy core)
set -euo pipefail
OUT=${1:-runs/video-sprites}
SEED=${2:-0}
PY=${PY:-.venv/bin/semivit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
DATA=$OUT/sprites.npz
[ -f "$DATA" ] || $PY video sprites --out "$DATA" --train 2000 --test 500 --frames 32 --size 32 \
    --sprite-size 14 --sprites fashion-mnist --pool 100 --seed 0
COMMON="--data $DATA --recipe cvrl --seed $SEED --quiet"
# CVRL pre-training (labels unused) and the untrained encoder with the same initial weights (--steps 0)
$PY video pretrain $COMMON --out "$OUT/cvrl" --steps ${PRETRAIN_STEPS:-600} --resume
$PY video pretrain $COMMON --out "$OUT/random" --steps 0
for LABELS in 10-per-class all; do
  for RUN in cvrl random; do
    $PY video probe --data "$DATA" --run "$OUT/$RUN" --labels $LABELS --seed $SEED \
        --json "$OUT/probe-$RUN-$LABELS.json"
  done
done
# few-label fine-tuning: 10 labeled videos per class (50 labels), same steps from CVRL and from scratch
for INIT in cvrl none; do
  $PY video finetune $COMMON --labels 10-per-class --init $( [ $INIT = none ] && echo none || echo "$OUT/cvrl" ) \
      --steps ${FINETUNE_STEPS:-200} --out "$OUT/finetune-$INIT-10pc"
done
