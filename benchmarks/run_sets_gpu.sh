#!/usr/bin/env bash
# The Set Transformer on one GPU (at most 8.5 min): the set tasks (max-of-set and unique counting, ISAB against SAB) and the
# train-step time and memory of its encoders against dense SDPA (BERT) at 1K ... 64K elements. Logs in $OUT.
#
#   bash benchmarks/run_sets_gpu.sh [STEPS]          # STEPS of the set tasks (layer norms on), default 3000
set -u
cd "$(dirname "$0")/.."
STEPS=${1:-3000}
OUT=${OUT:-benchmarks/results}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 240 python benchmarks/set_tasks.py --device cuda --steps "$STEPS" --max-size 200 --hidden 128 --batch 64 \
  > "$OUT/set_tasks.log" 2>&1
tail -7 "$OUT/set_tasks.log"
# the same without the MABs' layer norms (the authors' code's default), 2000 steps
timeout 150 python benchmarks/set_tasks.py --device cuda --steps 2000 --max-size 200 --hidden 128 --batch 64 \
  --no-layer-norm > "$OUT/set_tasks_no_layer_norm.log" 2>&1
tail -7 "$OUT/set_tasks_no_layer_norm.log"
timeout 100 python benchmarks/set_scaling.py --device cuda --sizes 1k,4k,16k,64k --batch 8 > "$OUT/set_scaling.log" 2>&1
tail -6 "$OUT/set_scaling.log"
