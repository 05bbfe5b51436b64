"""The optimisation ladder: one ShuffleNet V2 1x1 convolution, from three nested loops to the project's GEMM.

    python benchmarks/ladder.py [--rounds 400] [--out FILE]

**The layer.** ShuffleNet V2 x1.0 at 224 x 224 has one 1x1 convolution of 232 -> 232 channels on
14 x 14 = 196 pixels: ``units.12.pw1`` in the project's step names (torchvision's
``stage4.0.branch2.0``), the first 1x1 conv of the stride-2 unit that opens the last stage, run on
stage 3's 14 x 14 x 232 output. With its batch norm folded into a bias and its ReLU it computes

    out = relu(x @ w + b)        x: 196 pixels x K = 232,  w: K x N = 232,  b: N

2 * 196 * 232 * 232 = 21.1 million floating-point operations. Every rung below computes exactly
that, on one thread, from its inputs already in the layout it wants (a network keeps its
activations in its kernels' layout, so no rung pays for re-arranging them). Each rung is the one
before it with one thing changed:

1. **Triple loops over NCHW.** ``out[n, p] += w[n, k] * x[k, p]`` in the textbook order n, p, k.
   The innermost loop walks down a column of x: consecutive reads are 196 floats (784 bytes) apart,
   each on a new cache line, and every step adds to the same sum, one chain of dependent adds
   (the compiler may not reorder float additions). Bias and ReLU follow in a second pass.
2. **NHWC, loop order p, k, n.** Pixels as rows, channels contiguous: the inner loop
   ``out[p, n] += x[p, k] * wt[k, n]`` reads and writes consecutive floats and its iterations are
   independent. That alone lets LLVM's loop vectoriser turn it into 16-lane fused multiply-adds
   (4 x 16 channels per iteration behind a run-time check that ``out`` and ``wt`` do not overlap,
   an 8-lane loop for the 40 channels left over): the side row "(2)", the same code compiled with
   the vectorisers off, shows what that is worth.
3. **16-lane chunks, written out.** The channels are padded to a multiple of 16 (one AVX-512
   register, as ``kernels/cpu/layout.py`` pads them) and the inner loop is one vector: 16 loads
   of the output, 16 of the weights and 16 FMAs into a 16-float stack array, then 16 stores --
   the load / FMA / store that LLVM's SLP vectoriser emits as one instruction each, with no
   overlap check and no remainder (but a few scalar instructions per chunk that clamp its slices).
   Rungs 2 and 3 both load and store an output vector for every FMA: loads and stores, not
   arithmetic, set their pace, and the explicit form buys little over what LLVM found itself.
4. **A register tile.** 4 pixels x 64 output channels (16 vector registers) are held in stack
   arrays for the whole k loop, which LLVM keeps in registers (the "Four details" of
   ``kernels/cpu/micro_kernel.py``: stack arrays indexed by loops of compile-time trip count, the
   4 pixel rows written out by hand, contraction but no reassociation, and the tile a function of
   its own). Per k, 4 weight loads and 4 broadcasts feed 16 FMAs, and 16 independent sums hide
   the FMA's latency; the output is written once per tile instead of once per k.
5. **Packed weight panels.** The weights are re-arranged once, per tile of output channels, into
   a panel of (1 + K) rows x 64: row 0 the bias, row 1 + k the tile's weights for input k. The k
   loop then reads one contiguous stream (256 bytes per k) instead of 256 bytes out of each
   960-byte row of ``wt``, and the bias starts the sums, so the second pass is only the ReLU. On
   this layer that buys little: its weights (222 KB) sit in the L2 cache either way, and the
   hardware prefetchers follow a constant stride about as well as a stream. What the panel gives
   the project is one block of memory per tile (one pointer for the micro-kernel, whatever the
   layer or its groups) with the bias inside it.
6. **The fused epilogue.** The same micro-kernel applies the ReLU to each sum as it stores it
   from its register: the output is written once and never read back, no second pass over it
   (the pass it saves is small: 47 K floats, a few microseconds).

Beside the rungs, as side rows: "(2)" and "(6)" (rung 6 with its weight panels 16 bytes past a
cache line, where NumPy's allocator may well put them: every vector load of a weight row then
touches two cache lines); the project's own GEMM step (``kernels.cpu.gemm``, through
``kernels.cpu.run_step`` on a one-step table, as ``benchmarks/profile_layers.py`` times a step),
which adds the remaining tricks of ``kernels/cpu/tricks.py`` and ``gemm.py`` (micro-kernels called
by address with raw pointers, a 48-wide last tile, an offset table for the input channels, the
padded NHWC workspace), and is called from Python here, a few microseconds a call that a network
pass does not pay (the report measures them);
NumPy's ``np.matmul`` (its OpenBLAS SGEMM) on the same shapes (the matrix product alone, no
bias or ReLU); and NumPy's SGEMM on 1024 x 1024 matrices, the machine's ceiling for scale.

**How it is measured.** Every kernel is checked against NumPy before it is timed: its matrix
product against ``x @ w`` in float32 (``x @ w + b`` for the kernels that start from the bias),
then the whole layer against ``relu(x @ w + b)``; the relative error (the largest difference over
the largest value of NumPy's result) must stay below 1e-4. Every array a rung reads or writes
starts on a cache line (see "(6)"). The machine's speed drifts, so the rows run
in rounds, each round calling every row once (in a rotated order, after one untimed call that
brings its data into the cache as a network's previous layer would); the table gives each row's
median. Everything runs on one thread: no ``prange``, and the BLAS limited to one thread by
``OPENBLAS_NUM_THREADS=1`` / ``OMP_NUM_THREADS=1`` / ``MKL_NUM_THREADS=1``, set below before NumPy
is imported. Every kernel asks LLVM for 512-bit vectors (``tricks.py``, trick 8) and compiles
with LLVM's SLP vectoriser on (trick 7), as the project's kernels do.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # (before NumPy loads its BLAS, which reads these once, at start-up)
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit  # noqa: E402
from numba.core import config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # (this checkout's packages)
from npshuffle import kernel_cache  # noqa: E402

kernel_cache.install_locator()  # (before kernels.cpu is imported, as the backend does)
from kernels.cpu.tricks import _stack_floats, _wide_vectors  # noqa: E402

# the layer: V2 x1.0's 232 -> 232 1x1 conv at 14 x 14 (units.12.pw1, see above)
HEIGHT = WIDTH = 14
K_IN = N_OUT = 232

FASTMATH = {"contract"}  # fused multiply-add allowed, reassociation not (tricks.py, trick 5)
LANES = 16  # float32 lanes of one AVX-512 register
ROWS = 4  # pixels per register tile
WIDE = 64  # output channels per register tile (the narrow tiles at the right edge are LANES wide)
TOLERANCE = 1e-4  # relative error against NumPy


# the project's two LLVM helpers (kernels/cpu/tricks.py): _wide_vectors lets LLVM use 512-bit vectors
# in the function that calls it (trick 8: its tuning for Intel servers prefers 256-bit ones, with which
# a 4 x 64 tile spills); _stack_floats is a small stack array LLVM can keep in registers


@contextmanager
def llvm_settings(slp: bool = True, loop: bool = True):
    """Numba's switches for LLVM's two vectorisers while kernels compile inside this block (Numba
    re-reads its NUMBA_* variables before each compile; Numba's default: the loop vectoriser on, the
    SLP vectoriser off). Afterwards the variables are as they were."""
    wanted = {"NUMBA_SLP_VECTORIZE": str(int(slp)), "NUMBA_LOOP_VECTORIZE": str(int(loop))}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        config.reload_config()


# --------------------------------------------------------------------------------------------------
# layouts (plain NumPy, done once: not part of any rung's time)


def aligned(array, past: int = 0) -> np.ndarray:
    """A C-contiguous float32 copy of ``array`` starting on a 64-byte boundary (a cache line, one
    AVX-512 vector), or ``past`` bytes after one. NumPy leaves alignment to the C allocator, which
    guarantees 16 bytes: at 16, 32 or 48 bytes past a line every vector load straddles two lines,
    and which rung that hits would change from run to run (``kernels/cpu/layout.py``,
    ``aligned_zeros``; the side row "(6)" shows the cost)."""
    a = np.asarray(array, np.float32)
    raw = np.empty(a.size * 4 + 128, np.uint8)
    start = -raw.ctypes.data % 64 + past
    out = raw[start: start + a.size * 4].view(np.float32).reshape(a.shape)
    out[...] = a
    return out


def padded(n: int) -> int:
    """``n`` rounded up to a whole number of 16-lane vectors."""
    return -(-n // LANES) * LANES


def pad_columns(a: np.ndarray, width: int) -> np.ndarray:
    """``a`` (rows, n) as (rows, width), zeros past column n: padding channels compute zeros."""
    out = np.zeros((a.shape[0], width), np.float32)
    out[:, : a.shape[1]] = a
    return out


def tile_widths(n_padded: int) -> list[int]:
    """The output-channel tiles of rungs 4-6: 64 wide while 64 channels remain, then 16 wide."""
    return [WIDE] * (n_padded // WIDE) + [LANES] * (n_padded % WIDE // LANES)


def pack_panels(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rung 5's layout of ``w`` (K, N) and ``b`` (N): one flat array of panels, one per tile of
    output channels, and the tile table (j0, width, offset of the panel). The panel of the tile of
    width nr at channel j0 is (1 + K, nr), row-major: row 0 the bias, row 1 + k the weights of input
    k, ``w[k, j0 : j0 + nr]``; columns past N are zeros."""
    k_in, n_out = w.shape
    panels, tiles, offset, j0 = [], [], 0, 0
    for nr in tile_widths(padded(n_out)):
        n = max(0, min(nr, n_out - j0))
        panel = np.zeros((1 + k_in, nr), np.float32)
        panel[0, :n] = b[j0: j0 + n]
        panel[1:, :n] = w[:, j0: j0 + n]
        panels.append(panel.ravel())
        tiles.append((j0, nr, offset))
        offset += panel.size
        j0 += nr
    return np.concatenate(panels), np.array(tiles, np.int64)


# --------------------------------------------------------------------------------------------------
# rung 1: triple loops over NCHW


@njit(fastmath=FASTMATH)
def gemm1_nchw(x_kp, w_nk, out_np):
    """out[n, p] = sum_k w[n, k] * x[k, p]: activations as (channels, pixels) (NCHW), weights as
    PyTorch stores them (out, in), loops in the textbook order n, p, k."""
    _wide_vectors()
    n_out, k_in = w_nk.shape
    for n in range(n_out):
        for p in range(x_kp.shape[1]):
            out_np[n, p] = 0.0
            for k in range(k_in):
                out_np[n, p] += w_nk[n, k] * x_kp[k, p]  # x read down a column: a new cache line each k


@njit(fastmath=FASTMATH)
def bias_relu_nchw(out_np, b):
    """The second pass of rung 1: out[n, p] = relu(out[n, p] + b[n])."""
    _wide_vectors()
    for n in range(out_np.shape[0]):
        for p in range(out_np.shape[1]):
            out_np[n, p] = max(out_np[n, p] + b[n], 0.0)


# --------------------------------------------------------------------------------------------------
# rung 2: NHWC, the inner loop over output channels


def _gemm2_nhwc(x, wt, out):
    """out[p, n] = sum_k x[p, k] * wt[k, n]: pixels as rows, channels contiguous, loop order p, k, n."""
    _wide_vectors()
    n_pixels, k_in = x.shape
    n_out = wt.shape[1]
    for p in range(n_pixels):
        for n in range(n_out):
            out[p, n] = 0.0
        for k in range(k_in):
            xv = x[p, k]
            for n in range(n_out):  # consecutive floats, independent iterations: LLVM vectorises this
                out[p, n] += xv * wt[k, n]


gemm2_nhwc = njit(fastmath=FASTMATH)(_gemm2_nhwc)
# the same code, compiled with LLVM's vectorisers off (see compile_all): what rung 2 would be without them
gemm2_scalar = njit(fastmath=FASTMATH)(_gemm2_nhwc)


@njit(fastmath=FASTMATH)
def bias_relu_nhwc(out, b):
    """The second pass of rungs 2-4: out[p, n] = relu(out[p, n] + b[n]) (``b`` as wide as ``out``)."""
    _wide_vectors()
    for p in range(out.shape[0]):
        row = out[p]
        for n in range(row.shape[0]):
            row[n] = max(row[n] + b[n], 0.0)


@njit(fastmath=FASTMATH)
def relu_nhwc(out):
    """The second pass of rung 5 (the bias is already in): out = relu(out)."""
    _wide_vectors()
    for p in range(out.shape[0]):
        row = out[p]
        for n in range(row.shape[0]):
            row[n] = max(row[n], 0.0)


# --------------------------------------------------------------------------------------------------
# rung 3: the inner loop as explicit 16-lane vectors


@njit(fastmath=FASTMATH)
def gemm3_lanes(x, wt, out):
    """Rung 2 with the channels in 16-lane chunks: ``wt`` (K, Np) and ``out`` (P, Np), Np a multiple
    of 16 (the padding columns of ``wt`` zeros)."""
    _wide_vectors()
    n_pixels, k_in = x.shape
    n_padded = wt.shape[1]
    if n_padded % LANES:
        raise ValueError("gemm3_lanes: the channels must be padded to a multiple of 16")
    vec = numba.carray(_stack_floats(LANES), LANES)  # one vector register
    for p in range(n_pixels):
        row = out[p]
        for n in range(n_padded):
            row[n] = 0.0
        for k in range(k_in):
            xv = x[p, k]
            w_row = wt[k]
            for j0 in range(0, n_padded, LANES):
                o = row[j0: j0 + LANES]  # (slices indexed by the loop counter alone: tricks.py, trick 4)
                w = w_row[j0: j0 + LANES]
                # loads and FMAs into the stack vector first, stores after: unrolled, the 16 loads,
                # FMAs and stores each become one vector instruction (the SLP vectoriser). Written as
                # o[j] += ..., each store could overwrite the next w[j] as far as LLVM knows, and the
                # 16 lanes would stay scalar.
                for j in range(LANES):
                    vec[j] = o[j] + xv * w[j]
                for j in range(LANES):
                    o[j] = vec[j]


# --------------------------------------------------------------------------------------------------
# rung 4: a 4 x 64 register tile


@njit(fastmath=FASTMATH, inline="always")
def _store(nr, acc, out, relu):
    """out[j] = relu?(acc[j]), j < nr: each accumulator read once, straight from its register."""
    if relu:
        for j in range(nr):
            out[j] = max(acc[j], 0.0)
    else:
        for j in range(nr):
            out[j] = acc[j]


def _register_tile(nr: int):
    """Rung 4's micro-kernel for tiles ``nr`` channels wide (one compiled function per width, so that
    ``nr`` is a compile-time constant: the j loops unroll and the 4 x nr sums live in registers)."""

    @njit(fastmath=FASTMATH)
    def tile(x, wt, out, p0, j0):
        """out[p0 + i, j0 + j] = sum_k x[p0 + i, k] * wt[k, j0 + j], i < 4, j < nr. Past the last
        pixel the tile repeats it: the extra rows store the same values to the same place."""
        _wide_vectors()
        n_pixels, k_in = x.shape
        p1, p2, p3 = min(p0 + 1, n_pixels - 1), min(p0 + 2, n_pixels - 1), min(p0 + 3, n_pixels - 1)
        acc0 = numba.carray(_stack_floats(nr), nr)
        acc1 = numba.carray(_stack_floats(nr), nr)
        acc2 = numba.carray(_stack_floats(nr), nr)
        acc3 = numba.carray(_stack_floats(nr), nr)
        for j in range(nr):
            acc0[j] = 0.0
            acc1[j] = 0.0
            acc2[j] = 0.0
            acc3[j] = 0.0
        for k in range(k_in):
            x0, x1, x2, x3 = x[p0, k], x[p1, k], x[p2, k], x[p3, k]  # broadcast to 4 vectors
            w = wt[k, j0: j0 + nr]  # nr / 16 vector loads, each used by 4 FMAs
            for j in range(nr):
                acc0[j] += x0 * w[j]
                acc1[j] += x1 * w[j]
                acc2[j] += x2 * w[j]
                acc3[j] += x3 * w[j]
        _store(nr, acc0, out[p0, j0: j0 + nr], False)
        _store(nr, acc1, out[p1, j0: j0 + nr], False)
        _store(nr, acc2, out[p2, j0: j0 + nr], False)
        _store(nr, acc3, out[p3, j0: j0 + nr], False)

    return tile


_tile4_wide = _register_tile(WIDE)
_tile4_narrow = _register_tile(LANES)


@njit
def gemm4_register_tile(x, wt, out):
    """out = x @ wt in 4 x 64 tiles (4 x 16 at the right edge): ``wt`` (K, Np) and ``out`` (P, Np),
    Np a multiple of 16. Each column of tiles runs down all pixels, so its weights stay in cache."""
    n_pixels = x.shape[0]
    n_padded = wt.shape[1]
    if n_padded % LANES:
        raise ValueError("gemm4_register_tile: the channels must be padded to a multiple of 16")
    wide_end = n_padded - n_padded % WIDE
    for j0 in range(0, wide_end, WIDE):
        for p0 in range(0, n_pixels, ROWS):
            _tile4_wide(x, wt, out, p0, j0)
    for j0 in range(wide_end, n_padded, LANES):
        for p0 in range(0, n_pixels, ROWS):
            _tile4_narrow(x, wt, out, p0, j0)


# --------------------------------------------------------------------------------------------------
# rungs 5 and 6: packed weight panels; the fused epilogue


def _panel_tile(nr: int):
    """The micro-kernel of rungs 5 and 6: rung 4's, reading a packed panel (see :func:`pack_panels`)."""

    @njit(fastmath=FASTMATH)
    def tile(x, panel, out, p0, j0, relu):
        """out[p0 + i, j0 + j] = relu?(panel[0, j] + sum_k x[p0 + i, k] * panel[1 + k, j]), the
        panel (1 + K, nr)."""
        _wide_vectors()
        n_pixels, k_in = x.shape
        p1, p2, p3 = min(p0 + 1, n_pixels - 1), min(p0 + 2, n_pixels - 1), min(p0 + 3, n_pixels - 1)
        acc0 = numba.carray(_stack_floats(nr), nr)
        acc1 = numba.carray(_stack_floats(nr), nr)
        acc2 = numba.carray(_stack_floats(nr), nr)
        acc3 = numba.carray(_stack_floats(nr), nr)
        bias = panel[0]
        for j in range(nr):  # row 0, the bias, starts the sums
            acc0[j] = bias[j]
            acc1[j] = bias[j]
            acc2[j] = bias[j]
            acc3[j] = bias[j]
        for k in range(k_in):
            x0, x1, x2, x3 = x[p0, k], x[p1, k], x[p2, k], x[p3, k]
            w = panel[1 + k]  # the next nr floats of one contiguous stream
            for j in range(nr):
                acc0[j] += x0 * w[j]
                acc1[j] += x1 * w[j]
                acc2[j] += x2 * w[j]
                acc3[j] += x3 * w[j]
        # the epilogue: with relu (rung 6) the ReLU is applied on the way out of the registers
        _store(nr, acc0, out[p0, j0: j0 + nr], relu)
        _store(nr, acc1, out[p1, j0: j0 + nr], relu)
        _store(nr, acc2, out[p2, j0: j0 + nr], relu)
        _store(nr, acc3, out[p3, j0: j0 + nr], relu)

    return tile


_tile5_wide = _panel_tile(WIDE)
_tile5_narrow = _panel_tile(LANES)


@njit
def gemm_panels(x, panels, tiles, out, relu):
    """out = relu?(x @ w + b) from :func:`pack_panels`'s panels and tile table; ``out`` (P, Np)."""
    n_pixels, k_in = x.shape
    for t in range(tiles.shape[0]):
        j0, nr, offset = tiles[t, 0], tiles[t, 1], tiles[t, 2]
        if j0 + nr > out.shape[1]:
            raise ValueError("gemm_panels: out is narrower than the tiles")
        panel = panels[offset: offset + (1 + k_in) * nr].reshape((1 + k_in, nr))
        for p0 in range(0, n_pixels, ROWS):
            if nr == WIDE:
                _tile5_wide(x, panel, out, p0, j0, relu)
            else:
                _tile5_narrow(x, panel, out, p0, j0, relu)


# --------------------------------------------------------------------------------------------------
# the rungs as the benchmark runs them


@dataclass
class Rung:
    """One row of the table: ``layer()`` computes relu(x @ w + b) into its own output, ``result()``
    returns that output as (pixels, N); ``gemm()`` runs the rung's matrix product alone, leaving
    ``x @ w`` (``gemm_adds_bias``: ``x @ w + b``) where ``result()`` reads."""

    label: str
    what: str
    layer: Callable[[], None]
    gemm: Callable[[], None] | None
    result: Callable[[], np.ndarray]
    gemm_adds_bias: bool = False
    flops: float = 0.0  # of one call (0: the layer's, 2 * P * K * N)


def build_rungs(x: np.ndarray, w: np.ndarray, b: np.ndarray, side_rows: bool = False) -> list[Rung]:
    """The six rungs on ``x`` (P, K), ``w`` (K, N), ``b`` (N), each with its inputs in its own layout
    and its own output array; with ``side_rows``, also "(2)": rung 2 compiled without LLVM's
    vectorisers, and "(6)": rung 6 with its weight panels 16 bytes past a cache line."""
    x, w, b = aligned(x), aligned(w), aligned(b)  # (every array a rung reads or writes: see aligned)
    n_pixels, n_out = x.shape[0], w.shape[1]
    n_padded = padded(n_out)
    # rung 1: NCHW
    x_kp, w_nk = aligned(x.T), aligned(w.T)
    out1 = aligned(np.zeros((n_out, n_pixels)))
    # rung 2: NHWC; rungs 3-4: NHWC with the channels padded to 16; rungs 5-6: packed panels
    out2 = aligned(np.zeros((n_pixels, n_out)))
    wt_pad, b_pad = aligned(pad_columns(w, n_padded)), aligned(pad_columns(b[None], n_padded)[0])
    out3, out4, out5, out6 = (aligned(np.zeros((n_pixels, n_padded))) for _ in range(4))
    panels, tiles = pack_panels(w, b)
    panels = aligned(panels)  # (each panel is a whole number of cache lines: all start aligned)

    def two_pass(gemm, epilogue, *args):
        def layer():
            gemm()
            epilogue(*args)
        return layer

    g1 = lambda: gemm1_nchw(x_kp, w_nk, out1)  # noqa: E731
    g2 = lambda: gemm2_nhwc(x, w, out2)  # noqa: E731
    g3 = lambda: gemm3_lanes(x, wt_pad, out3)  # noqa: E731
    g4 = lambda: gemm4_register_tile(x, wt_pad, out4)  # noqa: E731
    g5 = lambda: gemm_panels(x, panels, tiles, out5, False)  # noqa: E731
    g6 = lambda: gemm_panels(x, panels, tiles, out6, False)  # noqa: E731  (checked before the ReLU too)
    rungs = [
        Rung("1", "triple loops over NCHW, order n, p, k; bias + ReLU in a second pass",
             two_pass(g1, bias_relu_nchw, out1, b), g1, lambda: out1.T),
        Rung("2", "NHWC, loop order p, k, n: the inner loop runs over contiguous output channels",
             two_pass(g2, bias_relu_nhwc, out2, b), g2, lambda: out2),
        Rung("3", "channels padded to 16; the inner loop written as 16-lane vectors",
             two_pass(g3, bias_relu_nhwc, out3, b_pad), g3, lambda: out3[:, :n_out]),
        Rung("4", "register tile: 4 pixels x 64 channels summed in registers over the whole k loop",
             two_pass(g4, bias_relu_nhwc, out4, b_pad), g4, lambda: out4[:, :n_out]),
        Rung("5", "packed weight panels: one contiguous stream per tile, bias as row 0; ReLU pass",
             two_pass(g5, relu_nhwc, out5), g5, lambda: out5[:, :n_out], gemm_adds_bias=True),
        Rung("6", "fused epilogue: ReLU applied as the tile leaves the registers, no second pass",
             lambda: gemm_panels(x, panels, tiles, out6, True), g6, lambda: out6[:, :n_out], gemm_adds_bias=True),
    ]
    if side_rows:
        out2s = aligned(np.zeros((n_pixels, n_out)))
        g2s = lambda: gemm2_scalar(x, w, out2s)  # noqa: E731
        rungs.insert(2, Rung("(2)", "rung 2 compiled with LLVM's vectorisers off (side row)",
                             two_pass(g2s, bias_relu_nhwc, out2s, b), g2s, lambda: out2s))
        panels_off, out6o = aligned(panels, past=16), aligned(np.zeros((n_pixels, n_padded)))
        g6o = lambda: gemm_panels(x, panels_off, tiles, out6o, False)  # noqa: E731
        rungs.append(Rung("(6)", "rung 6 with its weight panels 16 bytes past a cache line (side row)",
                          lambda: gemm_panels(x, panels_off, tiles, out6o, True), g6o,
                          lambda: out6o[:, :n_out], gemm_adds_bias=True))
    return rungs


def compile_all() -> None:
    """Compile every kernel here (on a tiny layer), with LLVM's SLP vectoriser on, and rung 2's
    scalar twin with both vectorisers off. (Called before any kernel runs; a kernel first called
    without it compiles with Numba's defaults: the same results, maybe slower.)"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 70)).astype(np.float32)
    with llvm_settings(slp=False, loop=False):  # (that kernel alone: its second pass is rung 2's)
        gemm2_scalar(x, w, np.zeros((x.shape[0], w.shape[1]), np.float32))
    gemm2_scalar.disable_compile()  # (no later compile with the vectorisers back on)
    with llvm_settings(slp=True, loop=True):
        for rung in build_rungs(x, w, w[0]):
            rung.layer()


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| / max |expected| (1 for shapes that differ)."""
    if got.shape != expected.shape:
        return 1.0
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    return float(np.abs(got.astype(np.float64) - expected).max(initial=0.0)) / scale


def check_rung(rung: Rung, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> list[str]:
    """What ``rung`` gets wrong against NumPy (float32): its matrix product alone (``x @ w``, or
    ``x @ w + b`` where the rung starts its sums with the bias), then the whole layer
    ``relu(x @ w + b)``. An empty list when both are within :data:`TOLERANCE`."""
    product = x @ w
    problems = []
    if rung.gemm is not None:
        rung.gemm()
        expected = product + b if rung.gemm_adds_bias else product
        err = relative_error(rung.result(), expected)
        if not err < TOLERANCE:
            problems.append(f"its matrix product differs from NumPy's: relative error {err:.2e}")
    rung.layer()
    err = relative_error(rung.result(), np.maximum(product + b, 0))
    if not err < TOLERANCE:
        problems.append(f"its relu(x @ w + b) differs from NumPy's: relative error {err:.2e}")
    return problems


# --------------------------------------------------------------------------------------------------
# the rows for scale: the project's kernel, NumPy


def project_rung(x: np.ndarray, w: np.ndarray, b: np.ndarray, height: int, width: int) -> Rung:
    """The project's GEMM step on this layer, built from ``kernels.cpu``'s public pieces as the
    backend builds it: the input in a padded NHWC workspace (cache-line aligned), the panels of
    ``pack_gemm``, an offset table reading all K channels, the output stored straight from the
    micro-kernel's registers (``direct``) with the ReLU fused; run by ``run_step`` on one thread.
    Compiles the project's kernels on first use (or loads them from its cache)."""
    from npshuffle.backend_numba import cpu, ensure_kernels  # (installs the project's kernel cache first)

    ensure_kernels()
    n_pixels, k_in = x.shape
    n_out = w.shape[1]
    panels, table, group_floats = cpu.pack_gemm(np.ascontiguousarray(w, np.float32)[None], b)
    wts = cpu.aligned_copy(panels)
    itab = np.concatenate([np.arange(k_in), table.ravel()]).astype(np.int64)  # offsets, then tiles
    c_in, c_out = cpu.padded(k_in), cpu.padded(n_out)
    in_floats = (height + 2) * (width + 2) * c_in
    ws = cpu.aligned_zeros(in_floats + (height + 2) * (width + 2) * c_out, np.float32)
    ws[:in_floats] = cpu.to_padded_nhwc(np.ascontiguousarray(x.T).reshape(k_in, height, width), c_in)
    packed = cpu.PackedGemm(weights_at=0, group_floats=group_floats, tiles_at=k_in, ntiles=len(table), groups=1,
                            group_in=k_in, group_out=n_out)
    src, dst = cpu.Buffer(0, height, width, c_in), cpu.Buffer(in_floats, height, width, c_out)
    direct = sum(cpu.tile_widths(n_out)) <= c_out  # whole tiles fit each output pixel
    steps = cpu.pack_steps([cpu.Gemm(packed, src, dst, channel_offsets_at=0, relu=relu, direct=direct)
                            for relu in (False, True)])
    image, pooled = np.zeros((1, 1, 1), np.float32), np.zeros(16, np.float32)
    zero, one = np.int64(0), np.int64(1)

    def result() -> np.ndarray:
        return cpu.from_padded_nhwc(ws[in_floats:], height, width, c_out, n_out).reshape(n_out, n_pixels).T

    return Rung("project", "the project's GEMM step, kernels.cpu.gemm (raw pointers, 48-wide last tile, ...)",
                lambda: cpu.run_step(ws, wts, itab, steps[1], image, pooled, zero, one),
                lambda: cpu.run_step(ws, wts, itab, steps[0], image, pooled, zero, one), result,
                gemm_adds_bias=True)


def call_overhead(rung: Rung, calls: int = 2000) -> float:
    """Median seconds of ``rung.layer()`` over ``calls`` calls (on a 1-pixel, 1-channel layer: the cost
    of calling it from Python, which a network pass, one compiled call for all its steps, never pays)."""
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        rung.layer()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def numpy_rows(x: np.ndarray, w: np.ndarray, ceiling_size: int = 1024) -> list[Rung]:
    """NumPy's matmul (its BLAS) on the layer's shapes, and on two ``ceiling_size`` squares."""
    out = np.empty((x.shape[0], w.shape[1]), np.float32)
    rng = np.random.default_rng(1)
    a, c = (rng.standard_normal((ceiling_size, ceiling_size)).astype(np.float32) for _ in range(2))
    big = np.empty_like(a)
    n = ceiling_size
    return [
        Rung("NumPy", "np.matmul (BLAS SGEMM) on the same shapes: the product alone, no bias, no ReLU",
             lambda: np.matmul(x, w, out=out), None, lambda: out),
        Rung(f"NumPy {n}", f"np.matmul on {n} x {n} matrices: the machine's ceiling, for scale",
             lambda: np.matmul(a, c, out=big), None, lambda: big, flops=2.0 * n ** 3),
    ]


# --------------------------------------------------------------------------------------------------
# timing and the report


def time_rounds(rows: list[Rung], rounds: int) -> list[np.ndarray]:
    """Seconds per call of each row's layer, ``rounds`` samples each: every round calls each row once
    (after one untimed call: its data in the cache), the order rotated from round to round."""
    samples = [[] for _ in rows]
    order = list(range(len(rows)))
    for r in range(rounds):
        shift = r % len(order)
        for i in order[shift:] + order[:shift]:
            rows[i].layer()
            start = time.perf_counter()
            rows[i].layer()
            samples[i].append(time.perf_counter() - start)
    return [np.array(s) for s in samples]


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it, its family / model numbers, and whether it has AVX-512."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return "unknown CPU (no /proc/cpuinfo)"
    avx512 = "avx512f" in fields.get("flags", "").split()
    return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}), {os.cpu_count()} logical CPUs, AVX-512 {'yes' if avx512 else 'no'}")


def blas_kernel() -> str:
    """The kernel OpenBLAS chose for this CPU (NumPy's wheels bundle it), or 'unknown'."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line})
    except OSError:
        return "unknown"
    for lib in libs:
        for symbol in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
            fn = getattr(ctypes.CDLL(lib), symbol, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return "unknown"


def report(rows: list[Rung], seconds: list[np.ndarray], header: list[str], layer_flops: float) -> str:
    """The markdown report: the header lines, the table, and each row's time per call."""
    lines = [*header, "", "| rung | what changed | GFLOP/s | x previous | x rung 1 |", "|---|---|---:|---:|---:|"]
    # the speed-ups are paired: the median over the rounds of one round's ratio, so drift between rounds cancels
    rates = [(row.flops or layer_flops) / s for row, s in zip(rows, seconds, strict=True)]  # per round
    previous = None
    for row, s, rate in zip(rows, seconds, rates, strict=True):
        side = row.label.startswith("(") or row.label.startswith("NumPy")
        vs_previous = "" if side or previous is None else f"{np.median(rate / previous):.2f}x"
        gflops = (row.flops or layer_flops) / np.median(s) / 1e9
        lines.append(f"| {row.label} | {row.what} | {gflops:.1f} | {vs_previous} | {np.median(rate / rates[0]):.1f}x |")
        if not side:
            previous = rate
    lines += ["", "Time per call, median (25th-75th percentile) over the rounds:", ""]
    lines += [f"* {row.label}: {np.median(s) * 1e6:.1f} us ({np.percentile(s, 25) * 1e6:.1f}-"
              f"{np.percentile(s, 75) * 1e6:.1f})" for row, s in zip(rows, seconds, strict=True)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="rounds of timing (each calls every row once)")
    parser.add_argument("--out", type=Path, help="write the markdown report to this file as well")
    args = parser.parse_args()

    start = time.perf_counter()
    compile_all()
    compile_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    n_pixels = HEIGHT * WIDTH
    x = rng.standard_normal((n_pixels, K_IN)).astype(np.float32)
    w = (rng.standard_normal((K_IN, N_OUT)) / np.sqrt(K_IN)).astype(np.float32)
    b = rng.standard_normal(N_OUT).astype(np.float32)
    rows = build_rungs(x, w, b, side_rows=True)
    start = time.perf_counter()
    try:
        rows.append(project_rung(x, w, b, HEIGHT, WIDTH))
        ready_s = time.perf_counter() - start
        one = np.ones((1, 1), np.float32)
        ours = call_overhead(build_rungs(one, one, one[0])[-1])
        theirs = call_overhead(project_rung(one, one, one[0], 1, 1))
        project_note = (f"the project's kernels (compiled or loaded from its cache in {ready_s:.1f} s) run through "
                        "`kernels.cpu.run_step`; a call of it from Python costs "
                        f"{theirs * 1e6:.1f} us (measured on a 1-pixel, 1-channel layer: typing the step record), "
                        f"against {ours * 1e6:.1f} us for rung 6: the project row pays that difference per call, "
                        "which a network pass (one compiled call for all its steps) does not")
    except Exception as exc:  # noqa: BLE001 - a checkout mid-edit: the ladder runs without that row
        project_note = f"the project's kernel row left out: {type(exc).__name__}: {exc}"
        print(project_note, file=sys.stderr)
    for row in rows:
        problems = check_rung(row, x, w, b)
        if problems:
            sys.exit(f"rung {row.label} ({row.what}): " + "; ".join(problems) + " -- not timed, stopping here")
    rows += numpy_rows(x, w)

    layer_flops = 2.0 * n_pixels * K_IN * N_OUT
    start = time.perf_counter()
    seconds = time_rounds(rows, args.rounds)
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    header = [
        "# The optimisation ladder: one ShuffleNet V2 1x1 convolution",
        "",
        f"Command: `python {' '.join(sys.argv)}` ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"* CPU: {cpu_model()}",
        f"* layer: ShuffleNet V2 x1.0 at 224 x 224, `units.12.pw1` (torchvision `stage4.0.branch2.0`): "
        f"{HEIGHT} x {WIDTH} = {n_pixels} pixels, K = {K_IN} input channels -> N = {N_OUT} output channels, "
        f"out = relu(x @ w + b); {layer_flops / 1e6:.1f} MFLOP (2 * M * N * K) per call",
        "* one thread: no prange in any kernel; OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1 and "
        f"MKL_NUM_THREADS=1 set before NumPy was imported (OpenBLAS kernel: {blas_kernel()}"
        + (f"; OPENBLAS_CORETYPE={coretype} is set" if coretype else "") + ")",
        f"* every row checked against NumPy first (relative error < {TOLERANCE:g}); {args.rounds} rounds, "
        "each calling every row once (after an untimed call) in a rotated order; GFLOP/s from the median time, "
        "the speed-ups the median of each round's ratio (paired within a round, so the drift cancels)",
        f"* Numba {numba.__version__}, NumPy {np.__version__}; the rungs compiled in {compile_s:.1f} s; "
        f"timing took {time.perf_counter() - start:.0f} s",
        f"* {project_note}",
        "* rows in parentheses and NumPy's are for scale, not rungs: \"x previous\" skips them",
    ]
    text = report(rows, seconds, header, layer_flops)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
