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
units x the float32 lanes each unit completes per cycle x 2 flops x clock. The lanes depend on the
FMA datapath, not on the instruction set (:func:`fma_lanes`): Intel's AVX-512 server cores (Ice
Lake, Sapphire and Emerald Rapids) and Zen 5 have two 512-bit units (16 lanes each); Zen 4 runs
AVX-512 on two 256-bit units, each 512-bit FMA taking two passes (8 lanes each), so its peak is
the same as with AVX2. The clock is the one the kernel reports (``cpu MHz``), in a VM often the
nominal one: boost clocks run above it, so a measured SGEMM can exceed the figure (it did on the
Zen 4 machine: 209 GFLOP/s on 2 threads against 166 at 2.6 GHz).
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
KERNEL_PROBE = """
# the kernel OpenBLAS chose (numpy's wheels bundle it as scipy_openblas; older ones as plain openblas)
import ctypes
kernel = "unknown"
for lib in sorted({line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line}):
    for symbol in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
        fn = getattr(ctypes.CDLL(lib), symbol, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            kernel = fn().decode()
            break
print(kernel)
"""
UNSET_FOR_PROBE = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def probe_env(threads: int) -> dict[str, str]:
    """This process's environment without the variables of ``UNSET_FOR_PROBE``, the BLAS limited to
    ``threads`` threads: for a fresh probe process."""
    limits = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    env = {name: value for name, value in os.environ.items() if name not in UNSET_FOR_PROBE}
    env.update({name: str(threads) for name in limits})
    return env


def ceiling_and_kernel(threads: int, size: int = 2048) -> tuple[float, str]:
    """(GFLOP/s of the best of 5 float32 ``size`` x ``size`` products on ``threads`` BLAS threads,
    the BLAS kernel that ran), in a fresh process without the variables of ``UNSET_FOR_PROBE``."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(n=size) + KERNEL_PROBE], env=probe_env(threads),
                         capture_output=True, text=True, check=True)
    gflops, kernel = out.stdout.split()
    return float(gflops), kernel


def ceiling(threads: int, size: int = 2048) -> float:
    """GFLOP/s of :func:`ceiling_and_kernel`."""
    return ceiling_and_kernel(threads, size)[0]


def cpu_fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def fma_lanes(fields: dict[str, str]) -> int:
    """float32 lanes one FMA unit completes per cycle: 16 for a 512-bit datapath, 8 for a 256-bit
    one (AVX2, and AMD family 0x19, Zen 3 / Zen 4, which splits each AVX-512 op into two 256-bit
    halves), 4 without AVX2."""
    flags = set(fields.get("flags", "").split())
    amd_zen4_or_older = fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family", "0").isdigit() \
        and int(fields["cpu family"]) <= 0x19
    if "avx512f" in flags and not amd_zen4_or_older:
        return 16
    return 8 if "avx2" in flags else 4


def arithmetic_peak(cores: int) -> tuple[float, float, int]:
    """(GFLOP/s, GHz, lanes): ``cores`` x 2 FMA units x :func:`fma_lanes` x 2 flops x the clock of
    ``cpu MHz`` in /proc/cpuinfo ((0, 0, 0) where it is missing)."""
    fields = cpu_fields()
    try:
        mhz = float(fields["cpu MHz"])
    except (KeyError, ValueError):
        return 0.0, 0.0, 0
    lanes = fma_lanes(fields)
    return cores * 2 * lanes * 2 * mhz / 1e3, mhz / 1e3, lanes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    for threads in args.threads:
        gflops, kernel = ceiling_and_kernel(threads, args.size)
        peak, ghz, lanes = arithmetic_peak(threads)
        print(f"{threads} thread(s): {gflops:.1f} GFLOP/s (SGEMM {args.size}x{args.size}, OpenBLAS kernel {kernel})"
              + (f"; arithmetic peak {peak:.0f} GFLOP/s ({lanes} lanes per FMA unit) at {ghz:.2f} GHz "
                 f"({gflops / peak:.0%} of it)" if peak else ""))


if __name__ == "__main__":
    main()
