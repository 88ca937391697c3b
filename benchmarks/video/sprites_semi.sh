#!/usr/bin/env bash
# Semi-supervised fine-tuning with clip-level views on the sprite videos: 10 labels per class plus every
# training video unlabeled, from the CVRL encoder of sprites.sh, same steps as its fine-tuning. The image
# methods on clips: FixMatch at its paper's τ 0.95, λ_u 1; the EMA-Teacher at τ 0.7, λ_u 1, momentum 0.99 per
# step (as before the methods moved onto the Trainer), with Semi-ViT's label smoothing 0.1; μ 1.
# Usage: benchmarks/video/sprites_semi.sh [OUT] [SEED]   (after sprites.sh)
set -euo pipefail
OUT=${1:-runs/video-sprites}
SEED=${2:-0}
PY=${PY:-.venv/bin/semivit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON="--data $OUT/sprites.npz --seed $SEED -q --out $OUT --set video.blur=false --labels 10-per-class
        --steps ${FINETUNE_STEPS:-200} --batch-size 16 --pretrained $OUT/cvrl --set method.mu=1 --set method.lambda_u=1"
[ -f "$OUT/ema_teacher-cvrl-10pc/results.json" ] || $PY video train --method ema_teacher $COMMON \
    --set method.threshold=0.7 --set method.ema=0.99 --name ema_teacher-cvrl-10pc
[ -f "$OUT/fixmatch-cvrl-10pc/results.json" ] || $PY video train --method fixmatch $COMMON \
    --set method.threshold=0.95 --name fixmatch-cvrl-10pc
