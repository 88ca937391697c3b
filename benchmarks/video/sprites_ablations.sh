#!/usr/bin/env bash
# The paper's two ablations on the sprite videos, same budget as sprites.sh's CVRL run, probed the same way:
# uniform gap between the clips (--power 0; the paper: decreasing > uniform > increasing) and augmentation
# drawn per frame instead of per clip (--per-frame-aug; the paper: consistent per clip is much better).
# Usage: benchmarks/video/sprites_ablations.sh [OUT] [SEED]   (after sprites.sh wrote OUT/sprites.npz)
set -euo pipefail
OUT=${1:-runs/video-sprites}
SEED=${2:-0}
PY=${PY:-.venv/bin/semivit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=$OUT/sprites.npz
COMMON="--data $DATA --recipe cvrl --seed $SEED --quiet --steps ${PRETRAIN_STEPS:-600} --resume"
$PY video pretrain $COMMON --out "$OUT/cvrl-uniform-gap" --power 0
$PY video pretrain $COMMON --out "$OUT/cvrl-per-frame-aug" --per-frame-aug
for RUN in cvrl-uniform-gap cvrl-per-frame-aug; do
  for LABELS in 10-per-class all; do
    $PY video probe --data "$DATA" --run "$OUT/$RUN" --labels $LABELS --seed $SEED \
        --json "$OUT/probe-$RUN-$LABELS.json"
  done
done
