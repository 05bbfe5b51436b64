"""This machine's float32 matrix-multiply ceiling: NumPy's BLAS on a large square SGEMM.

    python benchmarks/sgemm_ceiling.py [--size 2048] [--threads 1 2]

Each thread count runs in a fresh process (the BLAS reads its thread count at start-up) and
prints the best of 5 products in GFLOP/s. It bounds what any runtime can reach on a network that
is almost all 1x1 convolutions: ShuffleNet V2 x2.0 is 591 M multiply-adds per 224x224 image, so
N images per second need at least 1.18 * N GFLOP/s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

PROBE = """
import time, numpy as np
n = {n}
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
b = a.copy()
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(f"{{2 * n ** 3 / best / 1e9:.1f}}")
"""


def ceiling(threads: int, size: int = 2048) -> float:
    """GFLOP/s of the best of 5 float32 ``size`` x ``size`` products on ``threads`` BLAS threads, in
    a fresh process."""
    limits = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    env = {**os.environ, **{name: str(threads) for name in limits}}
    out = subprocess.run([sys.executable, "-c", PROBE.format(n=size)], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    for threads in args.threads:
        print(f"{threads} thread(s): {ceiling(threads, args.size):.1f} GFLOP/s (SGEMM {args.size}x{args.size})")


if __name__ == "__main__":
    main()
