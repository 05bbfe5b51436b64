"""Per-channel ops: the 3x3 depthwise conv, the 3x3 average pool and the global average pool.

These loop over the channels innermost, which LLVM vectorises 16 channels per instruction -- if
it can see that the loop reads consecutive floats. A signed index ``row[offset + c]`` hides that:
Numba wraps negative indices around (``i + len`` if ``i < 0``), a select per element. Two ways
out: slices indexed by the loop counter alone (9 slices per output pixel, which cost as much as
the arithmetic for ShuffleNet's narrow layers), or *unsigned* indices, which Numba never wraps
(the depthwise conv and the average pool: no slicing in their pixel loops at all). See
``tricks.py``, trick 4.

Each works on the first ``st.channels`` channels (a multiple of 16) of padded NHWC buffers (see
``layout.py``): the zero border stands for the padding of the 3x3 windows. Threads split the
output rows (the global pool: blocks of 16 channels).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from .layout import LANES
from .steps import _split
from .tricks import FASTMATH, _borrowed, _stack_floats, _wide_vectors


@njit(fastmath=FASTMATH, cache=True)
def depthwise3x3(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """3x3 depthwise conv, padding 1, stride ``st.stride``, on the first ``st.channels`` channels (a
    multiple of 16) of padded NHWC buffers.

    Weights: ``wts[st.weights:]`` holds (10, channels): row 0 the bias, row 1 + 3*dy + dx the tap (dy, dx).
    Threads split the output rows; each row runs in blocks of 16 channels (:func:`_depthwise_block`).
    """
    _wide_vectors()  # (tricks.py, trick 8)
    ws, wts = _borrowed(ws), _borrowed(wts)
    n, C, s = st.channels, st.src_c, st.stride
    Wo, dC = st.dst_w, st.dst_c
    row_floats = (st.src_w + 2) * C  # one padded input row
    w = wts[st.weights: st.weights + 10 * n].reshape((10, n))
    lo, hi = _split(st.dst_h, part, nparts)
    for oy in range(lo, hi):
        top = st.src + oy * s * row_floats  # padded coordinates: the windows start at row oy * s
        rows = ws[top: top + 3 * row_floats]
        o = st.dst + ((oy + 1) * (Wo + 2) + 1) * dC
        out = ws[o: o + Wo * dC]
        for cb in range(0, n, LANES):
            _depthwise_block(rows, w, cb, out, Wo, row_floats, C, s, dC, st.relu != 0)


@njit(fastmath=FASTMATH, cache=True)
def _depthwise_block(rows, w, cb, out, Wo, R, C, s, dC, relu):
    """Channels cb .. cb+15 of one output row: out[ox * dC + cb + c] from the three input rows
    ``rows`` (R floats each, channel stride C), stride s. The 10 weight vectors are copied to the
    stack first, where LLVM keeps them in registers for the whole row; every index is unsigned."""
    _wide_vectors()  # (tricks.py, trick 8)
    k = numba.carray(_stack_floats(160), 160)  # k[16 * i + c] = w[i, cb + c]
    for i in range(10):
        wi = w[i, cb: cb + LANES]
        for c in range(LANES):
            k[16 * i + c] = wi[c]
    U = np.uint64
    c1, c2, r1, r2 = U(C), U(2 * C), U(R), U(2 * R)
    for ox in range(Wo):
        p = U(ox * s * C + cb)  # the window's top-left pixel, channel cb
        q = U(ox * dC + cb)
        for c in range(U(LANES)):
            v = (k[c] + rows[p + c] * k[16 + c] + rows[p + c1 + c] * k[32 + c] + rows[p + c2 + c] * k[48 + c]
                 + rows[p + r1 + c] * k[64 + c] + rows[p + r1 + c1 + c] * k[80 + c]
                 + rows[p + r1 + c2 + c] * k[96 + c] + rows[p + r2 + c] * k[112 + c]
                 + rows[p + r2 + c1 + c] * k[128 + c] + rows[p + r2 + c2 + c] * k[144 + c])
            out[q + c] = max(v, 0.0) if relu else v


@njit(fastmath=FASTMATH, cache=True)
def avg_pool3x3(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """3x3 average pool counting the zero padding (padding 1, any stride): V1's stride-2 shortcut.

    Reads src's first ``st.channels`` channels (a multiple of 16), writes them to dst channels
    ``out_first ..`` (the first channels of the unit's output, before pw2's).
    """
    _wide_vectors()  # (tricks.py, trick 8)
    ws = _borrowed(ws)
    n, C, s = st.channels, st.src_c, st.stride
    Wo, dC = st.dst_w, st.dst_c
    R = (st.src_w + 2) * C  # one padded input row
    ninth = np.float32(1.0 / 9.0)
    U = np.uint64
    c1, c2, r1, r2 = U(C), U(2 * C), U(R), U(2 * R)
    lo, hi = _split(st.dst_h, part, nparts)
    for oy in range(lo, hi):
        top = st.src + oy * s * R  # padded coordinates: the windows start at row oy * s
        rows = ws[top: top + 3 * R]
        o = st.dst + ((oy + 1) * (Wo + 2) + 1) * dC + st.out_first
        out = ws[o: o + (Wo - 1) * dC + n]
        for ox in range(Wo):
            for cb in range(0, n, LANES):  # 16 channels at a time, every index unsigned
                p = U(ox * s * C + cb)  # the window's top-left pixel, channel cb
                q = U(ox * dC + cb)
                for c in range(U(LANES)):
                    out[q + c] = (rows[p + c] + rows[p + c1 + c] + rows[p + c2 + c]
                                  + rows[p + r1 + c] + rows[p + r1 + c1 + c] + rows[p + r1 + c2 + c]
                                  + rows[p + r2 + c] + rows[p + r2 + c1 + c] + rows[p + r2 + c2 + c]) * ninth


@njit(fastmath=FASTMATH, cache=True)
def global_pool(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """Mean over the interior pixels of src's first ``st.channels`` channels (a multiple of 16), in
    chunks of 16 channels split across threads."""
    _wide_vectors()  # (tricks.py, trick 8)
    ws, pooled = _borrowed(ws), _borrowed(pooled)
    C = st.src_c
    H, W = st.src_h, st.src_w
    inv = np.float32(1.0) / np.float32(H * W)
    lo, hi = _split(st.channels // LANES, part, nparts)
    c0, c1 = lo * LANES, hi * LANES
    out = pooled[c0: c1]
    for j in range(c1 - c0):
        out[j] = 0.0
    for y in range(H):
        for x in range(W):
            p = st.src + ((y + 1) * (W + 2) + x + 1) * C + c0
            pix = ws[p: p + c1 - c0]
            for j in range(c1 - c0):
                out[j] += pix[j]
    for j in range(c1 - c0):
        out[j] *= inv
