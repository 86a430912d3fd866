#!/usr/bin/env bash
# The distributed fine-tune of benchmarks/distributed_finetune.py on a machine with 2 GPUs: one process against DDP
# and FSDP at the same global batch (loss curves; with the model's dropout and without), and DDP at the same batch per
# process (scaling). Carry MODEL and DATA (ignored folders). Writes run_*.json, logs and distributed.md to $OUT.
# MODE curves: the loss curves and the plain scaling; MODE scaling: one process against DDP at the same batch per
# process with each of Trainer's samplers and with batches padded to 4096 (where the straggler time goes); MODE base:
# the same at base size (hidden 768, 12 layers, head_dim 64, random weights from the model's config).
#
#   bash benchmarks/run_distributed_gpu.sh [MODEL] [DATA] [STEPS] [MODE]
set -u
cd "$(dirname "$0")/.."
MODEL=${1:-benchmarks/.data/minilm-longformer-4096}
DATA=${2:-benchmarks/.data/news1200}
STEPS=${3:-40}
MODE=${4:-curves}
OUT=${OUT:-benchmarks/results/distributed}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
run() {  # processes label batch [options]
  local processes=$1 label=$2 batch=$3
  shift 3
  timeout 150 torchrun --nproc_per_node "$processes" benchmarks/distributed_finetune.py --model "$MODEL" \
    --data "$DATA" --steps "$STEPS" --batch "$batch" --label "$label" --out "$OUT" "$@" > "$OUT/log_$label.txt" 2>&1 \
    || echo "run $label failed (exit $?): see log_$label.txt"
  tail -1 "$OUT/log_$label.txt"
}
BASE="--set hidden_size=768 --set num_hidden_layers=12 --set intermediate_size=3072 --set head_dim=64
  --set attention_window=512 --set attention_dilation=1"
if [ "$MODE" = base ]; then
  # shellcheck disable=SC2086
  for sampling in random group_by_length; do
    run 1 "base_1gpu_b8_$sampling" 8 --sampling "$sampling" $BASE
    run 2 "base_ddp_b8_$sampling" 8 --sampling "$sampling" $BASE
  done
elif [ "$MODE" = scaling ]; then
  run 1 1gpu_b8 8
  run 2 ddp_b8 8
  for sampling in group_by_length batch_rebalance; do
    run 1 "1gpu_b8_$sampling" 8 --sampling "$sampling"
    run 2 "ddp_b8_$sampling" 8 --sampling "$sampling"
  done
  run 1 1gpu_b4_pad4096 4 --pad-to 4096
  run 2 ddp_b4_pad4096 4 --pad-to 4096
else
  run 1 1gpu_b8 8
  run 2 ddp_b4 4
  run 2 fsdp_b4 4 --fsdp
  run 2 ddp_b8 8
  run 1 1gpu_b8_nodrop 8 --dropout 0
  run 2 ddp_b4_nodrop 4 --dropout 0
fi
python benchmarks/distributed_finetune.py --report --out "$OUT"
