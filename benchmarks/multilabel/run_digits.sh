#!/usr/bin/env bash
# Multi-label semi-supervised learning from scratch (issue 28): 2×2 mosaics of scikit-learn's digits (16×16,
# labels = the digits shown), vit_nano trained from random weights, supervised on the labels alone against
# FixMatch with per-class positive/negative pseudo-labels (fixed τ⁺ 0.95 / τ⁻ 0.05, and CAP's per-class
# thresholds), the same model, augmentations, steps, optimizer and evaluation EMA (the fixmatch recipe's, at
# μ 2 for the CPU; no flips: a mirrored digit is another shape), at 1%, 5% and 10% of the 3,000 training
# mosaics labeled (20% of those labels validate).
#   bash benchmarks/multilabel/run_digits.sh [SEEDS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=runs/multilabel/digits-mosaics.npz
[ -f "$DATA" ] || python benchmarks/multilabel/make_mosaics.py digits --out "$DATA" --train 3000 --test 1000
STEPS=${STEPS:-600}
for seed in "${@:-0}"; do
  for labels in 1% 5% 10%; do
    for variant in supervised fixmatch-fixed fixmatch-cap; do
      name="digits-${labels%\%}pct-${variant}-s${seed}"
      [ -f "runs/multilabel/$name/results.json" ] && continue
      case $variant in
        supervised) extra=(--method supervised) ;;
        fixmatch-fixed) extra=(--method fixmatch --set method.mu=2) ;;
        fixmatch-cap) extra=(--method fixmatch --set method.mu=2 --set multilabel.thresholds=cap) ;;
      esac
      semivit train --data "$DATA" --labels "$labels" --steps "$STEPS" --batch-size 32 --seed "$seed" \
        --set model.name=vit_nano --set optim.lr=2e-2 --set optim.warmup=0.05 --set train.ema=0.99 \
        --set train.ema_ref_steps=2500 --set train.eval_every=100 --set data.val=20%-of-labels \
        --set data.flip=false "${extra[@]}" \
        --out runs/multilabel --name "$name" -q --overwrite > /dev/null
    done
  done
done
python benchmarks/multilabel/summarize.py runs/multilabel
