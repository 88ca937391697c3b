#!/usr/bin/env bash
# The stage-2 learning rate, for FixMatch and for the same stage without the unlabeled loss (λ_u = 0, the
# control: 3,000 more steps on the labels alone overfit the head), chosen on validation labels only; 5% labeled.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=runs/multilabel/cifar10-mosaics.npz
run() {
  local name=$1 labels=$2; shift 2
  [ -f "runs/multilabel-sweep/$name/stage2-fixmatch/results.json" ] && return
  semivit run frozen-fixmatch --model local-dir:runs/lite0-hub --data "$DATA" --labels "$labels" \
    --set data.val=20%-of-labels --set model.resolution=128 "$@" --out runs/multilabel-sweep --name "$name" -q \
    --overwrite > /dev/null
}
for lr in 1e-4 3e-4; do
  run "control-l0-lr$lr-5" 5% --set stage2.optim.lr=$lr --set stage2.method.lambda_u=0
  run "fixed-t0.95-n0.01-lr$lr-5" 5% --set stage2.optim.lr=$lr --set stage2.method.threshold=0.95 \
    --set stage2.multilabel.negative_threshold=0.01
  run "fixed-t0.7-n0.05-lr$lr-5" 5% --set stage2.optim.lr=$lr
  run "cap-k0.25-lr$lr-5" 5% --set stage2.optim.lr=$lr --set stage2.multilabel.thresholds=cap \
    --set stage2.multilabel.cap_keep=0.25
  run "cap-k1.0-lr$lr-5" 5% --set stage2.optim.lr=$lr --set stage2.multilabel.thresholds=cap
done
