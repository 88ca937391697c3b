#!/usr/bin/env bash
# Issue 28 on CIFAR-10 (6 animal classes known, the pool holding all 10) with ImageNet EfficientNet-Lite0 on
# frozen cached features at 96 px: supervised-only (stage 1 of each recipe), FixMatch, EMA-Teacher and OpenMatch,
# each semi-supervised stage 3,000 steps from the same 1,000-step labels-only head; 50 labels per known class.
# Usage: bash benchmarks/openset/run_cifar10.sh [SEED...]   (then: python benchmarks/openset/summarize.py)
# RECIPES="partial-fixmatch partial-openmatch" runs the partial path instead (the last block trained with the heads).
set -euo pipefail
SEEDS=${*:-0 1 2}
OUT=runs/openset/cifar10
DATA=runs/openset/cifar10-6of10.npz
[ -f $DATA ] || python benchmarks/openset/make_openset.py cifar10 --out $DATA --per-class 2000
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for seed in $SEEDS; do
  for recipe in ${RECIPES:-frozen-fixmatch frozen-semivit frozen-openmatch}; do
    last=$(ls -d $OUT/$recipe-s$seed/stage2-* 2>/dev/null | head -1 || true)
    [ -n "$last" ] && [ -f "$last/results.json" ] && continue  # finished
    nice semivit run $recipe --model local-dir:runs/lite0-hub --data $DATA --labels 50-per-class \
      --set data.val=0 --seed "$seed" --out $OUT --name "$recipe-s$seed" -q --overwrite
  done
done
