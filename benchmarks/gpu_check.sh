#!/usr/bin/env bash
# Check npshuffle's CUDA backend on a machine with an NVIDIA GPU, in two steps:
#   1. python3 -m pytest tests/cuda, on the device: every kernel against kernels.reference (tiny and
#      real-size shapes), the fused channel maps, tiny V1/V2 networks and a bundled model against the
#      NumPy backend, staging, graphs, copies (skipped, with a note, where pytest is not installed);
#   2. benchmarks/gpu_check.py: real-size whole networks against the NumPy backend, then ShuffleNet V2
#      x1.0 speed against torch CUDA eager.
# Needs python3 with torch, numba + numba-cuda, numpy, pillow (+ pytest for step 1); no install of
# npshuffle, no network. Exits nonzero if either step failed.
#   bash benchmarks/gpu_check.sh                       # a few minutes; step 1 killed at 200 s, step 2 at 290 s
#   bash benchmarks/gpu_check.sh --json results.json   # also step 2's results as JSON
#   bash benchmarks/gpu_check.sh --no-tests            # step 2 only
#   bash benchmarks/gpu_check.sh --simulate            # no GPU: both steps on numba's CUDA simulator (CPU)
set -uo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
else
    echo "GPU: nvidia-smi not found"
fi

tests=1
simulate=()
args=()
for arg in "$@"; do
    case "$arg" in
        --no-tests) tests=0 ;;
        --simulate) simulate=(env NUMBA_ENABLE_CUDASIM=1); args+=("$arg") ;;
        *) args+=("$arg") ;;
    esac
done

status=0
if [ "$tests" = 1 ]; then
    if python3 -c "import pytest" >/dev/null 2>&1; then
        echo "== 1/2: python3 -m pytest tests/cuda"
        # NPSHUFFLE_CUDA_REQUIRED=1: fail, not skip, if the tests find neither a GPU nor the simulator
        ${simulate[@]+"${simulate[@]}"} env NPSHUFFLE_CUDA_REQUIRED=1 timeout -k 5 200 python3 -m pytest -q -p no:cacheprovider tests/cuda || status=1
    else
        echo "== 1/2: skipped: pytest is not installed (pip install pytest to run tests/cuda here)"
    fi
fi
echo "== 2/2: python3 benchmarks/gpu_check.py ${args[*]-}"
timeout -k 5 290 python3 benchmarks/gpu_check.py ${args[@]+"${args[@]}"} || status=1
exit "$status"
