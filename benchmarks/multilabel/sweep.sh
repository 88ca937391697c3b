#!/usr/bin/env bash
# Settings of FixMatch's multi-label pseudo-labels on CIFAR-10 mosaics, chosen on the validation labels only
# (20% of --labels; the test mosaics are not looked at): seed 0, 5% and 10% labeled, stage 2 of frozen-fixmatch.
#   bash benchmarks/multilabel/sweep.sh; python benchmarks/multilabel/summarize.py runs/multilabel-sweep --val
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=runs/multilabel/cifar10-mosaics.npz
run() {  # NAME LABELS SETTINGS...
  local name=$1 labels=$2; shift 2
  [ -f "runs/multilabel-sweep/$name/stage2-fixmatch/results.json" ] && return
  semivit run frozen-fixmatch --model local-dir:runs/lite0-hub --data "$DATA" --labels "$labels" \
    --set data.val=20%-of-labels --set model.resolution=128 "$@" --out runs/multilabel-sweep --name "$name" -q \
    --overwrite > /dev/null
}
for labels in 5% 10%; do
  p=${labels%\%}
  run "fixed-t0.7-n0.05-$p" "$labels"
  run "fixed-t0.9-n0.05-$p" "$labels" --set stage2.method.threshold=0.9
  run "fixed-t0.95-n0.01-$p" "$labels" --set stage2.method.threshold=0.95 --set stage2.multilabel.negative_threshold=0.01
  run "fixed-t0.9-n0.05-l0.3-$p" "$labels" --set stage2.method.threshold=0.9 --set stage2.method.lambda_u=0.3
  for keep in 1.0 0.5 0.25; do
    run "cap-k$keep-$p" "$labels" --set stage2.multilabel.thresholds=cap --set stage2.multilabel.cap_keep=$keep
  done
  run "cap-k0.5-l0.3-$p" "$labels" --set stage2.multilabel.thresholds=cap --set stage2.multilabel.cap_keep=0.5 \
    --set stage2.method.lambda_u=0.3
done
for d in runs/multilabel-sweep/*/; do
  python - "$d" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
s1, s2 = (json.loads((d / s / "results.json").read_text()) for s in ("stage1-supervised", "stage2-fixmatch"))
print(f"{d.name:28s} val mAP: labels only {s1['best_val_map']:.4f}  fixmatch best {s2['best_val_map']:.4f} last {s2['val_map']:.4f}")
PY
done
