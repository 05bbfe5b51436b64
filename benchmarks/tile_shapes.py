"""Which GEMM micro-tile pays on this CPU? Variants of the project's micro-kernel on ShuffleNet V2's 1x1 shapes.

    python benchmarks/tile_shapes.py [--rounds 40] [--out results_tile_shapes.md]

The project's micro-kernel (``kernels/cpu/micro_kernel.py``) computes 4 pixels x 64 output channels
per call, over the whole K. Issue 15 proposed bigger tiles, K blocks that keep the weight panel in
L1, and fewer calls. Each variant here is a standalone kernel built the way the project builds its
own (stack accumulators, ``_wide_vectors``, called by address with raw pointers, inputs read through
an offset table ``koff``), run on one thread over the same matrices as the baseline:

* ``R x NR``: tiles of R pixels x NR channels (R * NR / 16 accumulator registers; 32 exist);
* ``4x64, T per call``: one call walks T tiles (the call and its set-up paid once per T tiles);
* ``4x64, K blocks``: K in blocks of at most 128 rows (a 32 KiB panel block, in L1 across a chunk of
  pixel tiles), partial sums stored between blocks.

Every variant is checked against NumPy first. The rounds interleave the variants and each cell is
the median of its rounds, so drift of the shared machine hits all variants alike. N is the layer's
output channels rounded up to whole 64-wide tiles (58 -> 64, 232 -> 256; the project itself may end
a layer with a narrower tile), and GFLOP/s count 2 * M * K * N, padded columns included, for every
variant alike. Where K is at most 128 the K-block variant would be the baseline again: not run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, types

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import publish  # noqa: E402

from kernels.cpu.driver import compile_settings  # noqa: E402
from kernels.cpu.layout import aligned_zeros  # noqa: E402
from kernels.cpu.tricks import FASTMATH, _at, _caller, _stack_floats, _wide_vectors  # noqa: E402

PTR, IPTR = types.CPointer(types.float32), types.CPointer(types.int64)
# every variant: (a, lda, koff, K, panel, init, init_step, out, ldo, final, tiles): ``tiles`` tiles of R rows,
# row r reading a[r * lda + koff[k]] and writing out[r * ldo + j], starting from init (row r at
# init + r * init_step: step 0 for the bias row); ``final``: ReLU and store, else store the raw sums
ARGS = (PTR, types.int64, IPTR, types.int64, PTR, PTR, types.int64, PTR, types.int64, types.boolean, types.int64)
call = _caller(ARGS)

# (name, M pixels, K, N padded to 64-wide tiles): V2 1x1 convs at 224 x 224, one image
SHAPES = [("V2 x1.0 stage 2, 58 -> 58", 784, 58, 64), ("V2 x1.0 stage 3, 116 -> 116", 196, 116, 128),
          ("V2 x1.0 stage 4, 232 -> 232", 48, 232, 256), ("V2 x1.0 head, 464 -> 1024", 48, 464, 1024),
          ("V2 x2.0 stage 3, 244 -> 244", 196, 244, 256), ("V2 x2.0 head, 976 -> 2048", 48, 976, 2048)]


def kernel_source(rows: int, nr: int) -> str:
    """A tile kernel of ``rows`` x ``nr``, each row written out by hand (as in micro_kernel._tile)."""
    r = range(rows)
    lines = ["def tile(a, lda, koff, K, panel, init, init_step, out, ldo, final, tiles):", "    _wide_vectors()"]
    lines += [f"    acc{i} = numba.carray(_stack_floats({nr}), {nr})" for i in r]
    lines += ["    for t in range(tiles):", f"        base, obase = t * {rows} * lda, t * {rows} * ldo",
              f"        for j in range({nr}):"]
    lines += [f"            acc{i}[j] = init[t * {rows} * init_step + {i} * init_step + j]" for i in r]
    lines += ["        for k in range(K):", "            o = base + koff[k]"]
    lines += [f"            x{i} = a[o + {i} * lda]" for i in r]
    lines += [f"            row = (k + 1) * {nr}", f"            for j in range({nr}):",
              "                w = panel[row + j]"]
    lines += [f"                acc{i}[j] += x{i} * w" for i in r]
    lines += ["        if final:"]
    for i in r:
        lines += [f"            for j in range({nr}):",
                  f"                out[obase + {i} * ldo + j] = max(acc{i}[j], 0.0)"]
    lines += ["        else:"]
    for i in r:
        lines += [f"            for j in range({nr}):", f"                out[obase + {i} * ldo + j] = acc{i}[j]"]
    return "\n".join(lines)


def compile_tile(rows: int, nr: int) -> int:
    """The address of a compiled rows x nr tile kernel."""
    namespace = {"numba": numba, "_stack_floats": _stack_floats, "_wide_vectors": _wide_vectors}
    exec(kernel_source(rows, nr), namespace)
    kernel = njit(fastmath=FASTMATH)(namespace["tile"])
    with compile_settings():
        kernel.compile(ARGS)
    compiled = kernel.overloads[ARGS]
    return compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)


@njit(fastmath=FASTMATH)
def run_gemm(addr, rows, nr, per_call, kblock, a, M, lda, koff, K, panels, N, out, partial):
    """out = relu(a[:, koff] @ W + b) with ``addr``'s tiles: per column tile, the pixel tiles in calls of
    ``per_call`` tiles; with ``kblock`` < K, in K blocks through ``partial`` (M x nr floats)."""
    for t in range(N // nr):
        p0 = t * (K + 1) * nr
        if kblock >= K:
            for m in range(0, M, rows * per_call):
                n = min(per_call, (M - m) // rows)
                call(addr, _at(a, m * lda), lda, _at(koff, 0), K, _at(panels, p0), _at(panels, p0), 0,
                     _at(out, m * N + t * nr), N, True, n)
            continue
        for k0 in range(0, K, kblock):
            kn = min(kblock, K - k0)
            final = k0 + kn == K
            for m in range(0, M, rows):
                init, step = (_at(panels, p0), 0) if k0 == 0 else (_at(partial, m * nr), nr)
                dst, ldd = (_at(out, m * N + t * nr), N) if final else (_at(partial, m * nr), nr)
                call(addr, _at(a, m * lda), lda, _at(koff, k0), kn, _at(panels, p0 + k0 * nr), init, step, dst, ldd,
                     final, 1)


def pack(w: np.ndarray, b: np.ndarray, nr: int) -> np.ndarray:
    """Per column tile of nr: (1 + K) x nr, row 0 the bias (layout.pack_gemm's panels)."""
    k, n = w.shape
    return np.concatenate([np.vstack([b[t:t + nr], w[:, t:t + nr]]).ravel() for t in range(0, n, nr)])


def aligned(values: np.ndarray) -> np.ndarray:
    """A flat float32 copy on a 64-byte boundary (``layout.aligned_zeros``, as the project's arrays)."""
    out = aligned_zeros(values.size, np.float32)
    out[:] = values.ravel()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", help="markdown file for the report (also printed)")
    args = parser.parse_args()
    numba.set_num_threads(1)
    variants = {"4x64 (the project's)": (4, 64, 1, 10**9), "6x64": (6, 64, 1, 10**9), "8x32": (8, 32, 1, 10**9),
                "4x64, 16 per call": (4, 64, 16, 10**9), "4x64, K blocks of 128": (4, 64, 1, 128)}
    start = time.perf_counter()
    addresses = {shape: compile_tile(shape[0], shape[1]) for shape in {(r, nr) for r, nr, _, _ in variants.values()}}
    compile_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    lines = ["# Micro-tile variants (`benchmarks/tile_shapes.py`)", "",
             f"Command: `python benchmarks/tile_shapes.py --rounds {args.rounds}` ({time.strftime('%Y-%m-%d %H:%M')}); "
             f"{platform.processor() or platform.machine()}, one thread, Numba {numba.__version__}; compiled in "
             f"{compile_s:.1f} s. GFLOP/s (median of {args.rounds} interleaved rounds); in brackets the ratio to the "
             "project's 4x64 in the same rounds (above 1: faster).", "",
             "| layer (M pixels x K -> N) | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    for name, m, k, n in SHAPES:
        lda = -(-k // 16) * 16
        m = m // 24 * 24  # whole tiles for every variant
        a = aligned(rng.standard_normal(m * lda).astype(np.float32))
        koff = rng.permutation(k).astype(np.int64)  # (a shuffle folded into the read, as V1 does)
        w = rng.standard_normal((k, n)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        expected = np.maximum(a.reshape(m, lda)[:, koff] @ w + b, 0)
        runs = {}
        for label, (rows, nr, per_call, kblock) in variants.items():
            if kblock <= 128 and k <= kblock:
                continue  # (one block: the baseline again)
            panels, out, partial = aligned(pack(w, b, nr)), aligned(np.zeros(m * n, np.float32)), aligned(
                np.zeros(m * nr, np.float32))
            runs[label] = (addresses[rows, nr], rows, nr, per_call, kblock, a, m, lda, koff, k, panels, n, out, partial)
            run_gemm(*runs[label])
            error = np.abs(out.reshape(m, n) - expected).max() / np.abs(expected).max()
            if error > 1e-4:
                raise SystemExit(f"{label} on {name}: relative error {error:.1e}")
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.rounds):
            for label, arguments in runs.items():
                t0 = time.perf_counter()
                for _ in range(5):
                    run_gemm(*arguments)
                times[label].append((time.perf_counter() - t0) / 5)
        base = np.array(times["4x64 (the project's)"])
        cells = [f"{2 * m * k * n / np.median(times[label]) / 1e9:.0f} "
                 f"({np.median(base / np.array(times[label])):.2f}x)" if label in times else "= baseline"
                 for label in variants]
        lines.append(f"| {name} (M {m}, K {k}, N {n}) | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    report = "\n".join(lines) + "\n"
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
