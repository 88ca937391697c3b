#!/usr/bin/env bash
# Multi-label semi-supervised learning on CIFAR-10 mosaics (issue 28) with real ImageNet weights on a CPU: the
# frozen-fixmatch recipe (stage 1: a linear head on the labels alone = supervised-only; stage 2: FixMatch with
# positive and negative pseudo-labels per class), at 1%, 5% and 10% of the 10,000 training mosaics labeled.
# Validation (thresholds, best step) is 20% of those labels, so a run consumes exactly --labels.
#   bash benchmarks/multilabel/run_cifar10.sh [SEEDS...]      (needs runs/lite0-hub: benchmarks/pretrained/)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=runs/multilabel/cifar10-mosaics.npz
[ -f "$DATA" ] || python benchmarks/multilabel/make_mosaics.py cifar10 --out "$DATA"
for seed in "${@:-0}"; do
  for labels in 1% 5% 10%; do
    for thresholds in fixed cap; do
      name="cifar10-${labels%\%}pct-${thresholds}-s${seed}"
      [ -f "runs/multilabel/$name/stage2-fixmatch/results.json" ] && continue
      semivit run frozen-fixmatch --model local-dir:runs/lite0-hub --data "$DATA" --labels "$labels" \
        --set data.val=20%-of-labels --set model.resolution=128 --set train.seed="$seed" \
        --set stage2.multilabel.thresholds="$thresholds" --out runs/multilabel --name "$name" -q --overwrite
    done
  done
done
python benchmarks/multilabel/summarize.py runs/multilabel
