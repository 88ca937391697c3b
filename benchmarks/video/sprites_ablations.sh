#!/usr/bin/env bash
# The paper's two ablations on the sprite videos, same budget as sprites.sh's CVRL run, probed the same way:
# uniform gap between the clips (method.power 0; the paper: decreasing > uniform > increasing) and augmentation
# drawn per frame instead of per clip (method.per_frame_aug; the paper: consistent per clip is much better).
# Usage: benchmarks/video/sprites_ablations.sh [OUT] [SEED]   (after sprites.sh wrote OUT/sprites.npz)
set -euo pipefail
OUT=${1:-runs/video-sprites}
SEED=${2:-0}
PY=${PY:-.venv/bin/semivit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=$OUT/sprites.npz
COMMON="--method cvrl --data $DATA --seed $SEED -q --out $OUT --set video.blur=false --steps ${PRETRAIN_STEPS:-600} --batch-size 32"
[ -f "$OUT/cvrl-uniform-gap/results.json" ] || $PY video train $COMMON --name cvrl-uniform-gap --set method.power=0
[ -f "$OUT/cvrl-per-frame-aug/results.json" ] || $PY video train $COMMON --name cvrl-per-frame-aug \
    --set method.per_frame_aug=true
for RUN in cvrl-uniform-gap cvrl-per-frame-aug; do
  for LABELS in 10-per-class all; do
    $PY video probe --data "$DATA" --run "$OUT/$RUN" --labels $LABELS --seed $SEED --json "$OUT/probe-$RUN-$LABELS.json"
  done
done
