#!/usr/bin/env bash
# Check npshuffle's CUDA backend on a machine with an NVIDIA GPU: kernel and whole-model parity,
# then ShuffleNet V2 x1.0 speed against torch CUDA eager (see benchmarks/gpu_check.py).
# Needs python3 with torch, numba + numba-cuda, numpy, pillow; no install of npshuffle, no network.
#   bash benchmarks/gpu_check.sh                       # about a minute; killed at 290 s whatever happens
#   bash benchmarks/gpu_check.sh --json results.json   # also every result as JSON
#   bash benchmarks/gpu_check.sh --simulate            # no GPU: numba's CUDA simulator, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
else
    echo "GPU: nvidia-smi not found"
fi
exec timeout -k 5 290 python3 benchmarks/gpu_check.py "$@"
