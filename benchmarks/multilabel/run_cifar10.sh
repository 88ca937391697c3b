#!/usr/bin/env bash
# Multi-label semi-supervised learning on CIFAR-10 mosaics (issue 28) with real ImageNet weights on a CPU: the
# frozen-fixmatch recipe (stage 1: a linear head on the labels alone; stage 2: FixMatch with positive and
# negative pseudo-labels per class), at 1%, 5% and 10% of the 10,000 training mosaics labeled. Validation
# (thresholds, settings) is 20% of those labels, so a run consumes exactly --labels. Variants of stage 2:
#   fixed    the recipe as shipped (lr 1e-3, τ⁺ 0.7, τ⁻ 0.05)
#   cap      the same with CAP's per-class thresholds
#   control  the same 3,000 steps without the unlabeled loss (λ_u 0) at lr 1e-4: more training on the labels alone
#   tuned    lr 1e-4, τ⁺ 0.95, τ⁻ 0.01 (chosen on the 5% validation labels, seed 0: benchmarks/multilabel/sweep*.sh)
#   captuned lr 1e-4, CAP thresholds keeping the surest 25% (cap_keep 0.25; the same sweep)
#   capmix   captuned with probabilistic pseudo mixup of the cached features (method.pseudo_mixup=mixup; session 16)
#   bash benchmarks/multilabel/run_cifar10.sh [SEEDS...]      (needs runs/lite0-hub: benchmarks/pretrained/)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=runs/multilabel/cifar10-mosaics.npz
[ -f "$DATA" ] || python benchmarks/multilabel/make_mosaics.py cifar10 --out "$DATA"
for seed in "${@:-0}"; do
  for labels in 1% 5% 10%; do
    for variant in ${VARIANTS:-fixed cap control tuned captuned capmix}; do
      name="cifar10-${labels%\%}pct-${variant}-s${seed}"
      [ -f "runs/multilabel/$name/stage2-fixmatch/results.json" ] && continue
      case $variant in
        fixed) extra=() ;;
        cap) extra=(--set stage2.multilabel.thresholds=cap) ;;
        control) extra=(--set stage2.optim.lr=1e-4 --set stage2.method.lambda_u=0) ;;
        tuned) extra=(--set stage2.optim.lr=1e-4 --set stage2.method.threshold=0.95
                      --set stage2.multilabel.negative_threshold=0.01) ;;
        captuned) extra=(--set stage2.optim.lr=1e-4 --set stage2.multilabel.thresholds=cap
                         --set stage2.multilabel.cap_keep=0.25) ;;
        capmix) extra=(--set stage2.optim.lr=1e-4 --set stage2.multilabel.thresholds=cap
                       --set stage2.multilabel.cap_keep=0.25 --set stage2.method.pseudo_mixup=mixup) ;;
      esac
      semivit run frozen-fixmatch --model local-dir:runs/lite0-hub --data "$DATA" --labels "$labels" \
        --set data.val=20%-of-labels --set model.resolution=128 --set train.seed="$seed" "${extra[@]}" \
        --out runs/multilabel --name "$name" -q --overwrite > /dev/null
    done
    # the baselines on the same features: k-NN and one logistic regression per class, on all of --labels
    probe="runs/multilabel/cifar10-${labels%\%}pct-probe-s${seed}.json"
    [ -f "$probe" ] || semivit probe --model local-dir:runs/lite0-hub --data "$DATA" --labels "$labels" \
      --set model.resolution=128 --set data.val=0 --seed "$seed" --json "$probe" -q > /dev/null
  done
done
python benchmarks/multilabel/summarize.py runs/multilabel
