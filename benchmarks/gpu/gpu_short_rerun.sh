#!/usr/bin/env bash
# Issue 27's last rows: `gpu-short`'s FixMatch and UDA cells (measured before session 11: both now put the weak
# views through the student's one training-mode forward) and its Semiformer and SSMAE cells (their schedule
# points now follow the stage; Semiformer's labeled loss is smoothed 0.1), re-run on the current code, 3 seeds,
# 6 cells at a time on one GPU. One prepared call for a session that is lent a GPU; from the repository root:
#   mkdir -p gpu-data && cp ../shared/data/cifar10_jpeg.zip gpu-data/    # gpu-data/ is ignored by git
#   run(command="bash benchmarks/gpu/gpu_short_rerun.sh gpu-data", carry=["gpu-data"], timeout_s=600)
# ONLY="fixmatch uda" (the default) or "fixmatch uda semiformer ssmae"; the table lands in $OUT.
set -euo pipefail
DATA=${1:-gpu-data}
OUT=${OUT:-${OUT_DIR:-runs}}
ONLY=${ONLY:-fixmatch uda}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
suite=$(mktemp --suffix .yaml)
sed "s#\.\./shared/data/cifar10_jpeg\.zip#$DATA/cifar10_jpeg.zip#g" benchmarks/suites/gpu-short.yaml > "$suite"
only=$(for m in $ONLY; do printf 'cifar10/25-per-class/%s/,' "$m"; done)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python -c "import sys; from semivit.cli import main; sys.exit(main(sys.argv[1:]))" \
  bench "$suite" --jobs 6 --only "${only%,}" --out "$OUT/gpu-short-rerun"
cat "$OUT/gpu-short-rerun/gpu-short/table.md"
