#!/bin/bash
# Full fine-tuning of ImageNet EfficientNet-Lite0 on CIFAR-10 (the 250-label split, all 10,000 test images) at
# wall-clock budgets of 10 and 30 minutes, and `semivit run auto` choosing the path for each budget from a cold
# feature cache. Two lanes side by side, one thread each (OMP_NUM_THREADS=1) on the 2-core machine.
#   bash benchmarks/pretrained/full_finetune.sh [HUB_FOLDER] [OUT]
set -u
HUB=${1:-runs/lite0-hub}
OUT=${2:-runs/fullft}
S=../shared/data
DATA="--model local-dir:$HUB --data $S/cifar10_jpeg.zip --split $S/cifar10_labels250_seed0.txt --set data.val=0"
row() {  # recipe budget [settings...]
  OMP_NUM_THREADS=1 semivit run "$1" -q $DATA --budget "$2" "${@:3}" --out "$OUT" \
    --name "$(basename "$1" .yaml)-$2" --overwrite > "$OUT/$(basename "$1" .yaml)-$2.log" 2>&1
}
mkdir -p "$OUT"
( row full-semivit 30m; row full-fixmatch 30m; row full-supervised 30m ) &
( row full-semivit 10m; row full-fixmatch 10m; row full-supervised 10m
  row auto 10m --set features.cache="$OUT/cache-auto-10m"; row auto 30m --set features.cache="$OUT/cache-auto-30m" ) &
wait
