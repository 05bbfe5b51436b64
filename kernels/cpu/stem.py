"""The stem: 3x3 conv, stride 2 (+ bias + ReLU), then 3x3 max-pool, stride 2, in one pass.

The stem has 3 input channels, so the channels-last GEMM (``gemm.py``) would have only 27
multiply-adds per output to amortise its loads and its epilogue, and the max-pool would read back
a 112x112 map that has fallen out of the L2 cache. Here the conv is vectorised over *pixels*
instead: a micro-tile is 8 output channels x 32 output columns of one row, 16 registers of
accumulators, and every tap costs two vector loads and eight broadcast weights for 16 vector FMAs.

Both stride-2 ops want every other column. So the input is stored split into its four column
phases (padded column 4q + p at phase p, position q: :func:`phase_input`), and the stem computes
its even output columns 2q (taps at 4q + dx) and odd ones 2q + 1 (taps at 4q + 2 + dx) as
separate rows E and O: each tap (dy, dx) of each is a *contiguous* run of q. The max-pool's
window at pooled column q covers stem columns 2q - 1, 2q, 2q + 1, that is O[q - 1], E[q], O[q]:
contiguous again. Three stem rows are kept in a small per-thread ring; each pooled row computes
two new ones. The ReLU comes free: the pooled maximum starts at 0 (max(0, a, b, ...) =
max(relu(a), relu(b), ...)), which also makes the zero padding of the max-pool right.

The sizes (Q, the floats of one phase row, and the rest) are ``layout.stem_geometry``'s; the
weights are ``layout.pack_stem``'s.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from .layout import STEM_CB, STEM_QB
from .steps import _split
from .tricks import FASTMATH, _borrowed, _stack_floats, _wide_vectors


@njit(cache=True)
def phase_input(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """Copy an NCHW image (C, H, W) into zero-padded rows split by column phase: row r (0..H+1,
    padded) of channel c starts at ``st.dst + (c * (H + 2) + r) * 4 * Q`` (Q = ``st.phase_row``), and
    holds phase p (padded columns 4q + p) at [p * Q, (p + 1) * Q). Threads split the rows."""
    _wide_vectors()  # (tricks.py, trick 8)
    ws, image = _borrowed(ws), _borrowed(image)
    C, H, W = image.shape
    Q = st.phase_row
    lo, hi = _split(C * (H + 2), part, nparts)
    for rr in range(lo, hi):
        r = rr % (H + 2)
        row = ws[st.dst + rr * 4 * Q: st.dst + (rr + 1) * 4 * Q]
        for i in range(4 * Q):
            row[i] = 0.0
        if 1 <= r <= H:
            src = image[rr // (H + 2), r - 1]
            # image column x is padded column x + 1 = 4q + p. The bulk: q = 1 .. last, whose four
            # phases all lie inside the row, in one loop (LLVM loads 4 vectors and deinterleaves them)
            last = (W - 3) // 4
            p0, p1, p2, p3 = row[:Q], row[Q: 2 * Q], row[2 * Q: 3 * Q], row[3 * Q:]
            for q in range(1, last + 1):
                p0[q] = src[4 * q - 1]
                p1[q] = src[4 * q]
                p2[q] = src[4 * q + 1]
                p3[q] = src[4 * q + 2]
            for x in range(min(3, W)):  # the first columns: q = 0
                row[((x + 1) % 4) * Q + (x + 1) // 4] = src[x]
            for x in range(max(4 * last + 3, 3), W):  # and the last ones, past the bulk
                row[((x + 1) % 4) * Q + (x + 1) // 4] = src[x]


@njit(fastmath=FASTMATH, cache=True)
def _stem_tile(inp, a, toff, K, wp, out, o0, o_stride):
    """The stem micro-kernel: 8 output channels x 32 columns.

        acc_co[i] = wp[0, co] + sum_t inp[a + toff[t] + i] * wp[1 + t, co]     (co < 8, i < 32)

    stored (no ReLU) at out[o0 + co * o_stride + i]. As in ``micro_kernel._tile``, the accumulator rows are
    written out by hand so that LLVM keeps them in 16 registers."""
    _wide_vectors()  # (tricks.py, trick 8)
    acc0 = numba.carray(_stack_floats(32), 32)
    acc1 = numba.carray(_stack_floats(32), 32)
    acc2 = numba.carray(_stack_floats(32), 32)
    acc3 = numba.carray(_stack_floats(32), 32)
    acc4 = numba.carray(_stack_floats(32), 32)
    acc5 = numba.carray(_stack_floats(32), 32)
    acc6 = numba.carray(_stack_floats(32), 32)
    acc7 = numba.carray(_stack_floats(32), 32)
    b = wp[0]
    for i in range(32):
        acc0[i] = b[0]
        acc1[i] = b[1]
        acc2[i] = b[2]
        acc3[i] = b[3]
        acc4[i] = b[4]
        acc5[i] = b[5]
        acc6[i] = b[6]
        acc7[i] = b[7]
    for t in range(K):
        s = a + toff[t]
        x = inp[s: s + 32]
        w = wp[1 + t]
        w0, w1, w2, w3, w4, w5, w6, w7 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
        for i in range(32):
            v = x[i]
            acc0[i] += w0 * v
            acc1[i] += w1 * v
            acc2[i] += w2 * v
            acc3[i] += w3 * v
            acc4[i] += w4 * v
            acc5[i] += w5 * v
            acc6[i] += w6 * v
            acc7[i] += w7 * v
    # plain copies: they store straight from the registers (a max() here would be scalarised)
    _copy32(acc0, out[o0: o0 + 32])
    _copy32(acc1, out[o0 + o_stride: o0 + o_stride + 32])
    _copy32(acc2, out[o0 + 2 * o_stride: o0 + 2 * o_stride + 32])
    _copy32(acc3, out[o0 + 3 * o_stride: o0 + 3 * o_stride + 32])
    _copy32(acc4, out[o0 + 4 * o_stride: o0 + 4 * o_stride + 32])
    _copy32(acc5, out[o0 + 5 * o_stride: o0 + 5 * o_stride + 32])
    _copy32(acc6, out[o0 + 6 * o_stride: o0 + 6 * o_stride + 32])
    _copy32(acc7, out[o0 + 7 * o_stride: o0 + 7 * o_stride + 32])


@njit(inline="always")
def _copy32(acc, out):
    for i in range(32):
        out[i] = acc[i]


@njit(fastmath=FASTMATH, cache=True)
def stem_pool(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """The stem conv (3x3, stride 2, padding 1, + bias + ReLU) and the 3x3 / 2 max-pool after it,
    from :func:`phase_input`'s rows at ``st.src`` (image ``st.src_h`` x ``st.src_w``,
    ``st.channels`` channels, Q = ``st.phase_row``) to the padded NHWC buffer at ``st.dst``.

    Weights: ``layout.pack_stem``'s blocks at ``wts[st.weights:]``, ``st.out_channels`` outputs. Threads
    split the pooled rows (each recomputes the one stem row it shares with its neighbour).
    """
    _wide_vectors()  # (tricks.py, trick 8)
    ws, wts = _borrowed(ws), _borrowed(wts)
    H, W, Q = st.src_h, st.src_w, st.phase_row
    K = 9 * st.channels
    nblocks = (st.out_channels + STEM_CB - 1) // STEM_CB
    cop = nblocks * STEM_CB
    wpk = wts[st.weights: st.weights + nblocks * (1 + K) * STEM_CB].reshape((nblocks, 1 + K, STEM_CB))
    Hs, Ws = (H - 1) // 2 + 1, (W - 1) // 2 + 1
    Hp, Wp = st.dst_h, st.dst_w
    NX = Q - 16
    L = NX + 16  # one ring row (channel, phase): position 1 + q holds column q, position 0 stays 0
    ring = np.zeros(3 * cop * 2 * L, np.float32)  # (stem row % 3, channel, phase, position)
    pooled = np.empty(cop * NX, np.float32)  # (channel, pooled column)
    # tap (c, dy, dx) of output column 2q + phase reads padded column 4q + 2 * phase + dx
    toff = np.empty((2, K), np.int64)
    for ph in range(2):
        for t in range(K):
            c, dy, dx = t // 9, t % 9 // 3, t % 3
            col = 2 * ph + dx
            toff[ph, t] = ((c * (H + 2) + dy) * 4 + col % 4) * Q + col // 4
    valid = ((Ws + 1) // 2, Ws // 2)  # stem columns 2q (E) and 2q + 1 (O) that exist
    lo, hi = _split(Hp, part, nparts)
    have = -1  # the last stem row in the ring
    for py in range(lo, hi):
        first, last = max(2 * py - 1, 0), min(2 * py + 1, Hs - 1)
        for sy in range(max(first, have + 1), last + 1):
            slot = sy % 3
            for ph in range(2):
                for cb in range(nblocks):
                    o0 = ((slot * cop + cb * STEM_CB) * 2 + ph) * L + 1
                    for qb in range(0, NX, STEM_QB):
                        _stem_tile(ws, st.src + 2 * sy * 4 * Q + qb, toff[ph], K, wpk[cb], ring, o0 + qb, 2 * L)
                for co in range(cop):  # columns past the stem's last: zero, as the pool's padding
                    r0 = ((slot * cop + co) * 2 + ph) * L + 1
                    tail = ring[r0 + valid[ph]: r0 + NX]
                    for i in range(NX - valid[ph]):
                        tail[i] = 0.0
        have = last
        for co in range(cop):
            m = pooled[co * NX: co * NX + Wp]
            for q in range(Wp):
                m[q] = 0.0  # the ReLU, and the zero padding
            for sy in range(first, last + 1):
                e0 = (sy % 3 * cop + co) * 2 * L
                even = ring[e0 + 1: e0 + 1 + Wp]  # E[q]
                left = ring[e0 + L: e0 + L + Wp]  # O[q - 1]
                right = ring[e0 + L + 1: e0 + L + 1 + Wp]  # O[q]
                for q in range(Wp):
                    m[q] = max(max(m[q], even[q]), max(left[q], right[q]))
        row = st.dst + ((py + 1) * (Wp + 2) + 1) * st.dst_c
        for q in range(Wp):  # (channel, column) -> channels-last
            out = ws[row + q * st.dst_c: row + q * st.dst_c + cop]
            for co in range(cop):
                out[co] = pooled[co * NX + q]

