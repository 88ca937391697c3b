#!/usr/bin/env bash
# The GPU check issue 16 asks for, as one prepared script for a session that is lent a GPU (device time is
# short: ~6 minutes). Run from the repository root on the GPU machine:
#   bash benchmarks/gpu/vit_s_224.sh > gpu-vit-s.txt 2>&1
# 1. ViT-S/16 at 224 px, bf16: the bare step and the Trainer's step, their FLOPs and utilisation of the
#    measured bf16 matmul peak, without and with torch.compile (fused AdamW and SDPA are on by default).
# 2. Each method's training step against its own bare step at that size (the earlier GPU ratios were
#    measured on ViT-Tiny at 64 tokens, which is host-bound).
# 3. JPEG decoding per core on that machine's CPUs, to restate cores per GPU from its own numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON=(--data digits --device cuda --amp bf16 --model vit_small_patch16_224.augreg_in21k
        --set model.pretrained=none --set model.resolution=224 --set data.val=0)
python method_throughput.py "${COMMON[@]}" --methods supervised --batch-scale 8 --steps 60
python method_throughput.py "${COMMON[@]}" --methods supervised --batch-scale 8 --steps 60 --set train.compile=true
python method_throughput.py "${COMMON[@]}" --methods fixmatch,ema_teacher,mae,simclr,paws --batch-scale 2 --steps 30
OMP_NUM_THREADS=1 python decode_throughput.py -n 256 --repeats 3
