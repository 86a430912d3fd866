#!/usr/bin/env bash
# The image variants on one GPU: their gpu-marked tests, held-out bits/dim on the digits (unconditional beside GPT-2
# of the same size, and class-conditional) with PNG sample grids (the set tasks: run_sets_gpu.sh). Carry
# benchmarks/.data/images (python benchmarks/image_data.py --write benchmarks/.data/images). Everything lands in
# $OUT/images.tar (the device returns few files).
#
#   bash benchmarks/run_images_gpu.sh [STEPS]          # tests, digits, conditional digits
#   bash benchmarks/run_images_gpu.sh more [STEPS]     # 32x32 RGB crops, conditional digits, train_step --images
#   bash benchmarks/run_images_gpu.sh rest             # 32x32 crops bits/dim of Axial beside GPT-2 (no sampling:
#                                                      # Axial has no cache), train_step --images at 128x128
#   bash benchmarks/run_images_gpu.sh grid128          # train_step --images at 128x128 only
set -u
cd "$(dirname "$0")/.."
MODE=digits
case "${1:-}" in more|rest|grid128) MODE=$1; shift;; esac
STEPS=${1:-1200}
OUT=${OUT:-benchmarks/results}
WORK=$(mktemp -d)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
DIGITS_KNOBS="--set image_transformer_1d.query_block_length=16 --set image_transformer_1d.memory_length=16
  --set image_transformer_2d.query_shape=4 --set image_transformer_2d.memory_flange=2"
if [ "$MODE" = rest ] || [ "$MODE" = grid128 ]; then
  if [ "$MODE" = rest ]; then
    timeout 200 python benchmarks/image_density.py --data crops --cache benchmarks/.data/images --steps 300 --batch 8 \
      --models gpt2 axial --out "$WORK/crops_axial" > "$WORK/crops_axial.log" 2>&1
    tail -5 "$WORK/crops_axial.log"
  fi
  timeout 200 python benchmarks/train_step.py --images --image-sizes 128 \
    --models axial,image_transformer_1d,image_transformer_2d,llama_sdpa --out "$WORK/train_step_images_128" \
    > "$WORK/train_step_images_128.log" 2>&1
  tail -8 "$WORK/train_step_images_128.log"
  tar -C "$WORK" -cf "$OUT/images_$MODE.tar" .
  exit 0
fi
if [ "$MODE" = more ]; then
  timeout 200 python benchmarks/image_density.py --data crops --cache benchmarks/.data/images --steps 300 --batch 8 \
    --samples 16 --out "$WORK/crops" > "$WORK/crops.log" 2>&1
  tail -8 "$WORK/crops.log"
  # shellcheck disable=SC2086
  timeout 100 python benchmarks/image_density.py --data digits --cache benchmarks/.data/images --steps "$STEPS" \
    --class-conditional --models axial image_transformer_1d image_transformer_2d --samples 20 $DIGITS_KNOBS \
    --out "$WORK/conditional" > "$WORK/conditional.log" 2>&1
  tail -5 "$WORK/conditional.log"
  timeout 110 python benchmarks/train_step.py --images --image-sizes 32,64 \
    --models axial,image_transformer_1d,image_transformer_2d,llama_sdpa --out "$WORK/train_step_images" \
    > "$WORK/train_step_images.log" 2>&1
  tail -12 "$WORK/train_step_images.log"
  tar -C "$WORK" -cf "$OUT/images_more.tar" .
  exit 0
fi
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_axial.py tests/test_image_transformer.py \
  tests/test_common.py -k "axial or image_transformer" > "$WORK/gpu_tests.log" 2>&1
tail -3 "$WORK/gpu_tests.log"
# shellcheck disable=SC2086
timeout 260 python benchmarks/image_density.py --data digits --cache benchmarks/.data/images --steps "$STEPS" \
  --samples 36 $DIGITS_KNOBS --out "$WORK/digits" > "$WORK/digits.log" 2>&1
tail -8 "$WORK/digits.log"
# shellcheck disable=SC2086
timeout 120 python benchmarks/image_density.py --data digits --cache benchmarks/.data/images --steps "$STEPS" \
  --class-conditional --models axial image_transformer_1d image_transformer_2d --samples 20 $DIGITS_KNOBS --out "$WORK/conditional" \
  > "$WORK/conditional.log" 2>&1
tail -5 "$WORK/conditional.log"
tar -C "$WORK" -cf "$OUT/images.tar" .
