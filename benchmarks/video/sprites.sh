#!/usr/bin/env bash
# CVRL on moving-sprite videos (labels = motion pattern): pre-train, then linear probe and few-label
# fine-tuning, against the same encoder from its random initialisation (same seed, same steps).
# Usage: benchmarks/video/sprites.sh [OUT] [SEED]   (CPU: ~30 min on one busy core)
set -euo pipefail
OUT=${1:-runs/video-sprites}
SEED=${2:-0}
PY=${PY:-.venv/bin/semivit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
DATA=$OUT/sprites.npz
[ -f "$DATA" ] || $PY video sprites --out "$DATA" --train 2000 --test 500 --frames 32 --size 32 \
    --sprite-size 14 --sprites fashion-mnist --pool 100 --seed 0
# the cvrl recipe's settings (semivit/video/recipes/cvrl.yaml): R3D-18 of width 16, 8 frames at stride 2, 32 px
COMMON="--data $DATA --seed $SEED -q --out $OUT --set video.blur=false"
# CVRL pre-training (labels unused; its k-NN and probe on all training labels are reported at the end)
[ -f "$OUT/cvrl/results.json" ] || $PY video train --method cvrl $COMMON --name cvrl \
    --steps ${PRETRAIN_STEPS:-600} --batch-size 32
for LABELS in 10-per-class all; do
  $PY video probe --data "$DATA" --run "$OUT/cvrl" --labels $LABELS --seed $SEED --json "$OUT/probe-cvrl-$LABELS.json"
  # the untrained encoder with the same initial weights
  $PY video probe --data "$DATA" --random-init --labels $LABELS --seed $SEED --json "$OUT/probe-random-$LABELS.json"
done
# few-label fine-tuning: 10 labeled videos per class (50 labels), same steps from CVRL and from scratch
for INIT in cvrl none; do
  [ -f "$OUT/finetune-$INIT-10pc/results.json" ] || $PY video train --method supervised $COMMON \
      --labels 10-per-class --pretrained $( [ $INIT = none ] && echo none || echo "$OUT/cvrl" ) \
      --steps ${FINETUNE_STEPS:-200} --batch-size 16 --name "finetune-$INIT-10pc"
done
