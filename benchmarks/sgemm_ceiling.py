"""This machine's float32 matrix-multiply ceiling: NumPy's BLAS on a large square SGEMM.

    python benchmarks/sgemm_ceiling.py [--size 2048] [--threads 1 2]

Each thread count runs in a fresh process (the BLAS reads its thread count at start-up) and
prints the best of 5 products in GFLOP/s, with the BLAS kernel that ran. It bounds what any
runtime can reach on a network that is almost all 1x1 convolutions: ShuffleNet V2 x2.0 is 591 M
multiply-adds per 224x224 image, so N images per second need at least 1.18 * N GFLOP/s.

The probe process runs without ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE``. Some machines set
them (a guard for old OpenBLAS builds) and ``OPENBLAS_CORETYPE=Haswell`` pins OpenBLAS to its
AVX2 kernel: on an AVX-512 CPU that measured about half the real ceiling (194 against 374
GFLOP/s on 2 Zen 5 cores). They are taken out for this one subprocess only, never for tests or
for npshuffle, which does not use the BLAS for its kernels.

For scale, :func:`arithmetic_peak` states the peak the CPU's own figures give: cores x 2 FMA
units x 16 float32 lanes (AVX-512) x 2 flops x clock. It assumes two 512-bit FMA units per core
(Ice Lake server and Zen 5 have them) and takes the clock the kernel reports (``cpu MHz``, often
the nominal one in a VM: turbo may run above it).
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
# the kernel OpenBLAS chose (numpy's wheels bundle it as scipy_openblas; older ones as plain openblas)
import ctypes
kernel = "unknown"
for lib in sorted({{line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line}}):
    for symbol in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
        fn = getattr(ctypes.CDLL(lib), symbol, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            kernel = fn().decode()
            break
print(kernel)
"""
UNSET_FOR_PROBE = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def ceiling_and_kernel(threads: int, size: int = 2048) -> tuple[float, str]:
    """(GFLOP/s of the best of 5 float32 ``size`` x ``size`` products on ``threads`` BLAS threads,
    the BLAS kernel that ran), in a fresh process without the variables of ``UNSET_FOR_PROBE``."""
    limits = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    env = {name: value for name, value in os.environ.items() if name not in UNSET_FOR_PROBE}
    env.update({name: str(threads) for name in limits})
    out = subprocess.run([sys.executable, "-c", PROBE.format(n=size)], env=env, capture_output=True,
                         text=True, check=True)
    gflops, kernel = out.stdout.split()
    return float(gflops), kernel


def ceiling(threads: int, size: int = 2048) -> float:
    """GFLOP/s of :func:`ceiling_and_kernel`."""
    return ceiling_and_kernel(threads, size)[0]


def arithmetic_peak(cores: int) -> tuple[float, float]:
    """(GFLOP/s, GHz): ``cores`` x 2 FMA units x 16 lanes x 2 flops x the clock of ``cpu MHz`` in
    /proc/cpuinfo (0, 0 where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = next(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    except (OSError, StopIteration, ValueError):
        return 0.0, 0.0
    return cores * 2 * 16 * 2 * mhz / 1e3, mhz / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    for threads in args.threads:
        gflops, kernel = ceiling_and_kernel(threads, args.size)
        peak, ghz = arithmetic_peak(threads)
        print(f"{threads} thread(s): {gflops:.1f} GFLOP/s (SGEMM {args.size}x{args.size}, OpenBLAS kernel {kernel}); "
              f"arithmetic peak {peak:.0f} GFLOP/s at {ghz:.2f} GHz ({gflops / peak:.0%} of it)" if peak else "")


if __name__ == "__main__":
    main()
