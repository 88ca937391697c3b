#!/usr/bin/env bash
# Issue 28 on Fashion-MNIST (classes 0-5 known, the pool holding all 10) from scratch: a 4-block ViT (width 96,
# 3 heads) trained STEPS steps (default 400) by supervised-only, FixMatch, EMA-Teacher and OpenMatch at their
# defaults, with μ = 2 unlabeled images per labeled one for all (OpenMatch's --mu 2) and batches of 32 labeled
# images; 50 labels per known class (300), no validation split.
# Usage: STEPS=400 bash benchmarks/openset/run_fmnist.sh [SEED...]   (then: python benchmarks/openset/summarize.py)
set -euo pipefail
SEEDS=${*:-0 1 2}
STEPS=${STEPS:-400}
OUT=runs/openset/fmnist
DATA=runs/openset/fmnist-6of10.npz
[ -f $DATA ] || python benchmarks/openset/make_openset.py fashion-mnist --out $DATA --per-class 2000
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MODEL=(--set model.depth=4 --set model.embed_dim=96 --set model.num_heads=3)
for seed in $SEEDS; do
  for method in supervised fixmatch ema_teacher openmatch; do
    [ -f "$OUT/$method-s$seed/results.json" ] && continue  # finished
    mu=(); [ $method = supervised ] || mu=(--set method.mu=2)
    nice semivit train --method $method --data $DATA --labels 50-per-class --set data.val=0 --steps "$STEPS" \
      --batch-size 32 "${mu[@]}" "${MODEL[@]}" --seed "$seed" --out $OUT --name "$method-s$seed" -q --overwrite
  done
done
