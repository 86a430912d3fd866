#!/usr/bin/env bash
# benchmarks/sequence_parallel.py on a machine with 2 GPUs: the fp32 check of the split step against one GPU, the
# longest masked-LM train step of a base-size model on one GPU, and the sequence split over both GPUs past it. Writes
# log.txt and sequence_parallel.json to $OUT and prints the table last.
#   EfficientLongformer (default): about 8 minutes;
#   `bigbird` first: EfficientBigBird (blocks of 64, 3 sliding + 3 random + 2 global) from 131,072 tokens, at most
#   6 minutes (a later --lengths replaces its lengths).
#
#   bash benchmarks/run_sequence_parallel_gpu.sh [bigbird] [--lengths 65536 131072 ...] [other options of the script]
set -u
cd "$(dirname "$0")/.."
MODEL=(--model longformer) LIMIT=480 SUFFIX=""
if [ "${1:-}" = bigbird ]; then
  shift
  MODEL=(--model bigbird --lengths 131072 196608 262144 393216) LIMIT=360 SUFFIX=_bigbird
fi
OUT=${OUT:-benchmarks/results/sequence_parallel$SUFFIX}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 OUT
timeout "$LIMIT" torchrun --nproc_per_node 2 benchmarks/sequence_parallel.py "${MODEL[@]}" --out "$OUT" "$@" \
  > "$OUT/log.txt" 2>&1 || echo "the run stopped (exit $?): see $OUT/log.txt; the table of what finished:"
grep -E "^(torch|check|1 GPU|2 GPUs)" "$OUT/log.txt"
python benchmarks/sequence_parallel.py --report --out "$OUT"
