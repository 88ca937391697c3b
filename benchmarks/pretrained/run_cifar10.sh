#!/usr/bin/env bash
# Issue 15's measurement on CIFAR-10 with the 250 USB labels (2-core CPU, one thread per run):
#   1. MAE pre-training of vit_nano on the 50,000 training images (labels unused), exported in the hub layout
#   2. from that backbone (--model local-dir:...) and from scratch (vit_nano), at equal budgets:
#      semivit-pretrained-cpu (supervised 300 → EMA-Teacher 500), supervised only (800 steps),
#      and for the backbone: k-NN / linear probe on frozen features (semivit probe)
# Usage: bash benchmarks/pretrained/run_cifar10.sh OUT [STEP...]   (steps: mae export scratch pretrained probe)
set -euo pipefail
OUT=${1:-runs/pretrained-cifar10}; shift || true
STEPS=${*:-mae export scratch pretrained probe}
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=(--data ../shared/data/cifar10_jpeg.zip --split ../shared/data/cifar10_labels250_seed0.txt --set data.val=0)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for step in $STEPS; do case $step in
  mae) semivit train --method mae "${DATA[@]}" --model vit_nano --steps 1000 --batch-size 256 \
         --set method.mask_ratio=0.75 --set optim.lr=1.5e-3 --set optim.betas=0.9,0.95 --set optim.warmup=0.05 \
         --set model.drop_path=0.0 --set train.ckpt_every=100 --out "$OUT" --name mae -q --resume ;;
  export) semivit export "$OUT/mae" --format hub -o "$OUT/mae-hub" ;;
  scratch)
    semivit run "$HERE/semivit-pretrained-cpu.yaml" "${DATA[@]}" --model vit_nano --out "$OUT" --name scratch-semivit -q --resume
    semivit train --method supervised "${DATA[@]}" --model vit_nano --steps 800 --batch-size 32 \
      --set method.label_smoothing=0.1 --set optim.lr=1e-2 --set optim.layer_decay=0.75 --set optim.warmup=0.1 \
      --set train.ema=0.98 --set train.ema_ref_steps=300 --set train.eval_every=0 \
      --out "$OUT" --name scratch-supervised -q --resume ;;
  pretrained)
    semivit run "$HERE/semivit-pretrained-cpu.yaml" "${DATA[@]}" --model "local-dir:$OUT/mae-hub" --out "$OUT" \
      --name mae-semivit -q --resume
    semivit train --method supervised "${DATA[@]}" --model "local-dir:$OUT/mae-hub" --steps 800 --batch-size 32 \
      --set method.label_smoothing=0.1 --set optim.lr=1e-2 --set optim.layer_decay=0.75 --set optim.warmup=0.1 \
      --set train.ema=0.98 --set train.ema_ref_steps=300 --set train.eval_every=0 \
      --out "$OUT" --name mae-supervised -q --resume ;;
  probe) semivit probe "${DATA[@]}" --model "local-dir:$OUT/mae-hub" --json "$OUT/mae-probe.json" ;;
  *) echo "unknown step $step"; exit 2 ;;
esac; done
