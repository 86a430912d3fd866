#!/usr/bin/env bash
# Run benchmarks/train_step.py on the GPU machine (no internet there): install the PyPI peers from the wheels in
# benchmarks/.wheels (carried with the call; fill it with `pip download`, see benchmarks/README.md), then run the
# benchmark, writing train_step.csv, train_step.md and train_step.log to $OUT (default benchmarks/results).
#
#   bash benchmarks/run_on_gpu.sh MODELS [PREVIOUS_CSV] [more train_step.py options]
#
# MODELS: comma list of names or groups (ours, anchors, peers, all). PREVIOUS_CSV: the CSV of an earlier call
# (carried into the working tree), copied to $OUT and appended to, so one report covers both calls; "" for none.
# Peers are installed only when MODELS needs them, each package separately, continuing on failure (the benchmark
# then records 'not installed: <reason>'). pytorch-fast-transformers is an sdist whose seven C++ extensions take
# minutes to compile (its CUDA ones don't build with CUDA 13): by default its Python sources are unpacked and the
# benchmark stubs the extensions, which its non-causal linear attention does not use; BUILD_FAST_TRANSFORMERS=1
# compiles the CPU extensions instead (nvcc hidden from its setup.py, 15 minutes at most).
set -u
cd "$(dirname "$0")/.."
MODELS=${1:-all}
PREVIOUS=${2:-}
shift $(( $# < 2 ? $# : 2 ))
OUT=${OUT:-benchmarks/results}
PYTHON=${PYTHON:-python3}
SITE=/tmp/peer_packages
WHEELS=benchmarks/.wheels
mkdir -p "$OUT" "$SITE"

needs_peers=0
case ",$MODELS," in
  *,all,*|*,peers,*|*,performer_pytorch,*|*,linformer_pytorch,*|*,fast_transformers,*|*,fla_linear_attention,*)
    needs_peers=1 ;;
esac

if [ "$needs_peers" = 1 ]; then
  if [ ! -d "$WHEELS" ]; then
    echo "no $WHEELS: peers will be recorded as not installed (carry benchmarks/.wheels with the call)"
  fi
  for wheel in "$WHEELS"/*.whl; do
    [ -e "$wheel" ] || continue
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$wheel" \
      || echo "install failed: $wheel (continuing)"
  done
  for sdist in "$WHEELS"/pytorch-fast-transformers-*.tar.gz; do
    [ -e "$sdist" ] || continue
    if [ "${BUILD_FAST_TRANSFORMERS:-0}" = 1 ]; then
      no_nvcc_path=$(echo "$PATH" | tr ':' '\n' | while read -r dir; do [ -x "$dir/nvcc" ] || echo "$dir"; done \
        | paste -sd:)
      PATH=$no_nvcc_path MAX_JOBS=16 timeout 900 "$PYTHON" -m pip install -q --no-index --no-deps \
        --no-build-isolation --target "$SITE" "$sdist" || echo "build failed: $sdist (continuing)"
    else
      tar -xzf "$sdist" -C /tmp && cp -r /tmp/"$(basename "$sdist" .tar.gz)"/fast_transformers "$SITE"/ \
        || echo "unpack failed: $sdist (continuing)"
    fi
  done
fi

append=()
if [ -n "$PREVIOUS" ]; then
  if [ -f "$PREVIOUS" ]; then
    cp "$PREVIOUS" "$OUT/train_step.csv" && append=(--append)
  else
    echo "no previous CSV at $PREVIOUS: starting a new one"
  fi
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
set -o pipefail
PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/train_step.py \
  --models "$MODELS" --out "$OUT" "${append[@]}" "$@" 2>&1 | tee "$OUT/train_step.log"
