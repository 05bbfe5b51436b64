"""The register-blocked GEMM micro-kernel: a tile of 4 pixels x NR output channels.

Every 1x1 convolution (grouped or not) and the classifier is a matrix product
``out[pixel, j] = bias[j] + sum_k A[pixel, k] * Wt[k, j]`` (see ``gemm.py``). The inner kernel,
``_tile``, computes a tile of 4 pixels x NR output channels (NR = 16, 24, 32, 48 or 64) with the
4 x NR partial sums held in CPU registers for the whole k loop: per k it loads one row of NR
weights, broadcasts 4 input values and issues 4 * NR/16 fused multiply-adds. On a 2-core AVX-512
machine that runs at 80-100 GFLOP/s per core on ShuffleNet's larger 1x1 convs, level with
OpenBLAS (whose per-call overhead would dominate these small matrices anyway).

Four details make LLVM generate that code, and each is load-bearing:

1. the accumulators are stack arrays (``tricks._stack_floats``) indexed only by loop counters of
   compile-time trip count (:func:`_tile_kernel` compiles one micro-kernel per NR), so LLVM
   unrolls the j loops and promotes the 4 x NR floats to vector registers;
2. the 4 pixel rows are written out by hand (``x0 .. x3``, ``acc0 .. acc3``), so no loop over
   rows survives for LLVM to vectorise the wrong way;
3. ``fastmath={"contract"}`` (``tricks.FASTMATH``): fused multiply-add is allowed, reassociation
   is not;
4. the epilogue reads each accumulator exactly once; and ``_tile`` is a function of its own: with
   an enclosing loop, or inlined into a caller's loop, LLVM leaves the accumulators in memory (3x
   slower).

Being a function of its own, ``_tile`` is *called* once per tile, through its address (the step
kernels find the micro-kernel of width NR at ``fns[FN_TILE + NR // 8]``), with raw pointers
(``tricks._at``) for arguments, since a call costs in proportion to its arguments.

The epilogues here are the ones that store straight from the registers (EPI_STORE,
EPI_RESIDUAL, EPI_INTERLEAVE); the LLVM SLP vectoriser turns them into vector instructions (see
``tricks.py``, trick 7).
"""

from __future__ import annotations

import numba
from numba import njit, types

from .steps import EPI_INTERLEAVE, EPI_RESIDUAL
from .tricks import FASTMATH, _caller, _stack_floats, _wide_vectors

ROWS = 4  # pixels per GEMM micro-tile

_PTR = types.CPointer(types.float32)
# the micro-kernel: (a0, a1, a2, a3, koff, K, panel, d0, d1, d2, d3, relu, epilogue, s0, s1, s2, s3)
TILE_ARGS = (_PTR,) * 4 + (types.CPointer(types.int64), types.int64, _PTR) + (_PTR,) * 4 + (
    types.boolean, types.int64) + (_PTR,) * 4
_call_tile = _caller(TILE_ARGS)  # _call_tile(fns[FN_TILE + NR // 8], *arguments): run a micro-kernel


def _tile_kernel(NR: int):
    """The micro-kernel for tiles of width ``NR``, compiled on its own (one per width of
    ``layout.TILE_WIDTHS``, see ``driver.kernel_table``) and called by address (:data:`TILE_ARGS`)."""

    @njit(fastmath=FASTMATH, cache=True)
    def _tile(a0, a1, a2, a3, koff, K, panel, d0, d1, d2, d3, relu, epilogue, s0, s1, s2, s3):
        """A 4 x NR tile of a GEMM. Every argument but K, relu and epilogue is a raw pointer
        (``tricks._at``): a0 .. a3 to the first input of the tile's 4 pixels, koff to the offset table,
        panel to the tile's packed weights ((1 + K) x NR, row 0 the bias), d0 .. d3 to the outputs
        and s0 .. s3 to the residual / passthrough inputs of the 4 pixels.

            acc_i[j] = panel[j] + sum_k a_i[koff[k]] * panel[(1 + k) * NR + j]     (j < NR)

        then stores relu?(acc_i[j]) at d_i[j] (``epilogue`` EPI_STORE); or relu?(acc_i[j] + s_i[j])
        there (EPI_RESIDUAL: V1's residual add); or (EPI_INTERLEAVE) relu?(acc_i[j]) at d_i[2j + 1]
        and the passthrough channel s_i[j] at d_i[2j]: a V2 unit's concat + shuffle(2). The d_i
        point either into the workspace (a "direct" store of whole tiles: the columns past the
        layer's width hold zero weights and store zeros, or values a later tile overwrites), or
        into a scratch tile that ``gemm._finish_tile`` then distributes.

        NR is a constant of the enclosing :func:`_tile_kernel` call, so the j loops have a
        constant trip count: they unroll, and acc0..acc3 (4 x NR floats) live in registers.
        """
        _wide_vectors()  # (tricks.py, trick 8)
        acc0 = numba.carray(_stack_floats(NR), NR)
        acc1 = numba.carray(_stack_floats(NR), NR)
        acc2 = numba.carray(_stack_floats(NR), NR)
        acc3 = numba.carray(_stack_floats(NR), NR)
        for j in range(NR):
            acc0[j] = panel[j]
            acc1[j] = panel[j]
            acc2[j] = panel[j]
            acc3[j] = panel[j]
        for k in range(K):
            o = koff[k]
            x0 = a0[o]
            x1 = a1[o]
            x2 = a2[o]
            x3 = a3[o]
            row = (k + 1) * NR
            for j in range(NR):
                w = panel[row + j]
                acc0[j] += x0 * w
                acc1[j] += x1 * w
                acc2[j] += x2 * w
                acc3[j] += x3 * w
        # the epilogue reads each accumulator once, straight from its register (modifying the stack
        # arrays in place first would make LLVM spill them)
        if epilogue == EPI_INTERLEAVE:
            _store_interleaved(NR, acc0, d0, s0, relu)
            _store_interleaved(NR, acc1, d1, s1, relu)
            _store_interleaved(NR, acc2, d2, s2, relu)
            _store_interleaved(NR, acc3, d3, s3, relu)
        elif epilogue == EPI_RESIDUAL:
            _store_sum(NR, acc0, d0, s0, relu)
            _store_sum(NR, acc1, d1, s1, relu)
            _store_sum(NR, acc2, d2, s2, relu)
            _store_sum(NR, acc3, d3, s3, relu)
        else:
            _store(NR, acc0, d0, relu)
            _store(NR, acc1, d1, relu)
            _store(NR, acc2, d2, relu)
            _store(NR, acc3, d3, relu)

    return _tile


@njit(fastmath=FASTMATH, inline="always")
def _store(NR, acc, out, relu):
    """out[j] = relu?(acc[j]), j < NR."""
    if relu:
        for j in range(NR):
            out[j] = max(acc[j], 0.0)
    else:
        for j in range(NR):
            out[j] = acc[j]


@njit(fastmath=FASTMATH, inline="always")
def _store_sum(NR, acc, out, residual, relu):
    """out[j] = relu?(acc[j] + residual[j]): V1's residual add."""
    if relu:
        for j in range(NR):
            out[j] = max(acc[j] + residual[j], 0.0)
    else:
        for j in range(NR):
            out[j] = acc[j] + residual[j]


@njit(fastmath=FASTMATH, inline="always")
def _store_interleaved(NR, acc, out, passthrough, relu):
    """out[2j] = passthrough[j], out[2j + 1] = relu?(acc[j]): a V2 unit's concat + shuffle(2)."""
    if relu:
        for j in range(NR):
            out[2 * j] = passthrough[j]
            out[2 * j + 1] = max(acc[j], 0.0)
    else:
        for j in range(NR):
            out[2 * j] = passthrough[j]
            out[2 * j + 1] = acc[j]

