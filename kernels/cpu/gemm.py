"""GEMM steps: every 1x1 convolution (grouped or not), and the classifier.

A 1x1 conv is the matrix product ``out[pixel, j] = bias[j] + sum_k A[pixel, k] * Wt[k, j]``:
rows are the output pixels, in tiles of 4 (``micro_kernel.ROWS``), columns the output channels,
in tiles of NR per group, each tile computed by the micro-kernel (``micro_kernel.py``).

**Weights** are packed once by the backend (``layout.pack_gemm``): per output-channel tile, a
panel of shape (1 + K, NR) whose row 0 is the bias and rows 1..K the transposed weights
(zero-padded columns past the layer's width).

**The input side** is read through an *offset table* ``koff``: ``A[pixel, k] =
ws[row_base(pixel) + koff[k]]``. That one indirection lets a single kernel serve a 1x1 conv
reading any subset of its input's channels: a V2 unit's half (``koff = C/2 + k``), Megvii's odd
channels (``koff = 2k + 1``), or a V1 channel shuffle folded into the read (``koff =
permutation``) -- so split and shuffle cost no copy at all.

**The output side**, the *epilogue* (``steps.EPI_*``), writes each output channel straight to
its final slot, adding bias and ReLU on the way: interleaved with the passthrough channels, so a
V2 unit's concat + channel shuffle costs nothing beyond copying the passthrough half in the same
pass; after the pooled shortcut (V1's stride-2 concat); adding the residual (V1's stride-1 add);
or summed into the global average pool (the V2 head conv's output is never stored). When the
backend has given the output buffer room for whole tiles (``direct``), the micro-kernel stores
straight from its registers; otherwise (no room for whole tiles, and always for the pooled and
the Megvii passthrough epilogues) :func:`_finish_tile` stores the tile from a scratch copy.

**Threads** split the pixel tiles, or the column tiles (``steps.SPLIT_COLUMNS``): a layer with
few pixels and many channels, and the pooling epilogue, where each thread must own its pooled
values.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .micro_kernel import ROWS, _call_tile, _store, _store_interleaved, _store_sum
from .steps import EPI_INTERLEAVE, EPI_PASSTHROUGH, EPI_POOL, EPI_RESIDUAL, EPI_STORE, FN_TILE, SPLIT_COLUMNS, _split
from .tricks import FASTMATH, _at, _borrowed, _wide_vectors


@njit(fastmath=FASTMATH, cache=True)
def _finish_tile(tile, nrows, n, jg, ws, rows, st, pooled, inv):
    """Epilogue of one tile: row i's ``n`` valid outputs ``tile[64 * i: 64 * i + n]`` are output channels
    ``jg .. jg+n-1`` of the pixel whose offsets in the output / auxiliary buffer are
    ``rows[1, i]`` / ``rows[2, i]``. (The micro-kernel's own stores, with a runtime width and any
    channel step, plus the pooled sum and the Megvii passthrough copy.)"""
    _wide_vectors()  # (tricks.py, trick 8)
    mode, relu = st.mode, st.relu
    for i in range(nrows):
        acc = tile[64 * i: 64 * i + n]
        d, x = rows[1, i], rows[2, i]
        if mode == EPI_POOL:
            out = pooled[jg: jg + n]
            if relu:
                for j in range(n):
                    out[j] += max(acc[j], 0.0) * inv
            else:
                for j in range(n):
                    out[j] += acc[j] * inv
        elif mode == EPI_RESIDUAL:
            _store_sum(n, acc, ws[d + jg: d + jg + n], ws[x + jg: x + jg + n], relu)
        elif mode == EPI_INTERLEAVE:
            p0 = x + st.pass_from + st.pass_step * jg
            passthrough = ws[p0: p0 + st.pass_step * n: st.pass_step]
            _store_interleaved(n, acc, ws[d + 2 * jg: d + 2 * (jg + n)], passthrough, relu)
        else:
            step = st.out_step
            o0 = d + st.out_first + step * jg
            if step == 1:  # (a contiguous slice: vectorised stores)
                _store(n, acc, ws[o0: o0 + n], relu)
            else:
                _store(n, acc, ws[o0: o0 + step * n: step], relu)
            if mode == EPI_PASSTHROUGH:  # concat(passthrough, main): passthrough j -> j
                p0 = x + st.pass_from + st.pass_step * jg
                passthrough = ws[p0: p0 + st.pass_step * n: st.pass_step]
                out = ws[d + jg: d + jg + n]
                for j in range(n):
                    out[j] = passthrough[j]


@njit(inline="always")
def _pixel_offsets(st, y, x):
    """Workspace offsets for output pixel (y, x) of GEMM step ``st``: its A row (first input
    channel), its output pixel and its auxiliary (residual / passthrough) pixel. (A 1x1 conv,
    stride 1: the input, output and aux buffers have the same height and width.)"""
    pix = (y + 1) * (st.dst_w + 2) + x + 1  # the pixel in each padded buffer
    return st.src + pix * st.src_c, st.dst + pix * st.dst_c, st.aux + pix * st.aux_c


@njit(fastmath=FASTMATH, cache=True)
def gemm(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """One GEMM step (``steps.Gemm``), or this thread's share of it: its pixel tiles, or its
    column tiles with ``st.split == SPLIT_COLUMNS`` and always with EPI_POOL (a step kernel:
    ``steps.STEP_ARGS``; the micro-kernels are ``fns[FN_TILE + NR // 8]``)."""
    _wide_vectors()  # (tricks.py, trick 8)
    ws, wts, itab, pooled = _borrowed(ws), _borrowed(wts), _borrowed(itab), _borrowed(pooled)
    tile = np.empty(ROWS * 64, np.float32)  # scratch (not _borrowed: see there)
    rows = np.empty((3, ROWS), np.int64)  # per tile row: offset of its A row, its output pixel, its aux pixel
    K = st.k
    Wo = st.dst_w
    npix = st.dst_h * Wo
    ncols = st.groups * st.ntiles
    ntiles_pix = (npix + ROWS - 1) // ROWS
    inv = np.float32(1.0) / np.float32(npix)
    relu = st.relu != 0
    # store straight from the micro-kernel when the backend says whole tiles fit the output
    direct = st.direct != 0 and (st.mode == EPI_STORE or st.mode == EPI_RESIDUAL or st.mode == EPI_INTERLEAVE)
    interleave = direct and st.mode == EPI_INTERLEAVE
    tiles = itab[st.tiles: st.tiles + 4 * st.ntiles].reshape((st.ntiles, 4))
    if st.mode == EPI_POOL or st.split == SPLIT_COLUMNS:
        t_lo, t_hi = 0, ntiles_pix
        c_lo, c_hi = _split(ncols, part, nparts)
        if st.mode == EPI_POOL:
            for c in range(c_lo, c_hi):
                g, t = c // st.ntiles, c % st.ntiles
                jg = g * st.group_out + tiles[t, 0]
                for j in range(jg, jg + tiles[t, 2]):
                    pooled[j] = 0.0
    else:
        t_lo, t_hi = _split(ntiles_pix, part, nparts)
        c_lo, c_hi = 0, ncols
    for c in range(c_lo, c_hi):
        g, t = c // st.ntiles, c % st.ntiles
        j0, nr, n, poff = tiles[t, 0], tiles[t, 1], tiles[t, 2], tiles[t, 3]
        w0 = st.weights + g * st.group_floats + poff
        panel = wts[w0: w0 + (K + 1) * nr]
        koff = itab[st.koff + g * K: st.koff + (g + 1) * K]
        jg = g * st.group_out + j0
        tile_fn = fns[FN_TILE + nr // 8]  # the micro-kernel for this width
        o = st.out_first + (2 * jg if interleave else jg)  # (direct) the tile's first output channel
        p = st.pass_from + jg if interleave else jg  # (direct) its passthrough or residual channel
        y, x = divmod(t_lo * ROWS, Wo)  # output pixel of the next row, walked without divisions
        for tp in range(t_lo, t_hi):
            nrows = min(ROWS, npix - tp * ROWS)
            if direct and nrows == ROWS and x + ROWS <= Wo:
                # the common case: 4 pixels of one output row, at equal steps in every buffer
                a0, d0, s0 = _pixel_offsets(st, y, x)
                d0, s0 = d0 + o, s0 + p
                da, dd, ds = st.src_c, st.dst_c, st.aux_c
                _call_tile(tile_fn, _at(ws, a0), _at(ws, a0 + da), _at(ws, a0 + 2 * da), _at(ws, a0 + 3 * da),
                           _at(koff, 0), K, _at(panel, 0),
                           _at(ws, d0), _at(ws, d0 + dd), _at(ws, d0 + 2 * dd), _at(ws, d0 + 3 * dd), relu, st.mode,
                           _at(ws, s0), _at(ws, s0 + ds), _at(ws, s0 + 2 * ds), _at(ws, s0 + 3 * ds))
                x += ROWS
                if x == Wo:
                    x, y = 0, y + 1
                continue
            # otherwise (a tile across a row end or past the last pixel, or any tile of a step that is
            # not "direct"): walk the tile's pixels one by one
            for i in range(ROWS):
                if i < nrows:
                    rows[0, i], rows[1, i], rows[2, i] = _pixel_offsets(st, y, x)
                    x += 1
                    if x == Wo:
                        x, y = 0, y + 1
                else:  # past the last pixel: repeat the last A row (its result is dropped or stored twice)
                    rows[0, i] = rows[0, nrows - 1]
            a0, a1, a2, a3 = rows[0, 0], rows[0, 1], rows[0, 2], rows[0, 3]
            if direct:  # store from registers; rows past the end store to the last pixel again
                r1, r2, r3 = min(1, nrows - 1), min(2, nrows - 1), min(3, nrows - 1)
                d0, d1, d2, d3 = rows[1, 0] + o, rows[1, r1] + o, rows[1, r2] + o, rows[1, r3] + o
                s0, s1, s2, s3 = rows[2, 0] + p, rows[2, r1] + p, rows[2, r2] + p, rows[2, r3] + p
                out, rl, epi = ws, relu, st.mode
            else:  # into the scratch tile, for _finish_tile
                d0, d1, d2, d3, out, rl, epi = 0, 64, 128, 192, tile, False, EPI_STORE
                s0 = s1 = s2 = s3 = 0
            _call_tile(tile_fn, _at(ws, a0), _at(ws, a1), _at(ws, a2), _at(ws, a3), _at(koff, 0), K, _at(panel, 0),
                       _at(out, d0), _at(out, d1), _at(out, d2), _at(out, d3), rl, epi,
                       _at(ws, s0), _at(ws, s1), _at(ws, s2), _at(ws, s3))
            if not direct:
                _finish_tile(tile, nrows, n, jg, ws, rows, st, pooled, inv)


@njit(fastmath=FASTMATH, cache=True)
def classifier_part(fns, features, wts, itab, fc, logits, part, nparts):
    """logits = features @ W + b for this thread's range of column tiles (the classifier as a GEMM
    whose rows are images). ``fc``: the ``steps.Classifier`` record (k = the padded feature count).
    Argument types: ``steps.CLASSIFIER_ARGS``."""
    _wide_vectors()  # (tricks.py, trick 8)
    features, wts, itab, logits = _borrowed(features), _borrowed(wts), _borrowed(itab), _borrowed(logits)
    tile = np.empty(ROWS * 64, np.float32)  # scratch (not _borrowed: see there)
    K = fc.k
    n_images = logits.shape[0]
    lda = features.shape[1]
    src = features.ravel()
    koff = itab[fc.koff: fc.koff + K]
    tiles = itab[fc.tiles: fc.tiles + 4 * fc.ntiles].reshape((fc.ntiles, 4))
    c_lo, c_hi = _split(fc.ntiles, part, nparts)
    store, relu = EPI_STORE, False  # (no ReLU after the classifier)
    for r0 in range(0, n_images, ROWS):
        nrows = min(ROWS, n_images - r0)
        a0 = r0 * lda
        a1 = (r0 + min(1, nrows - 1)) * lda
        a2 = (r0 + min(2, nrows - 1)) * lda
        a3 = (r0 + min(3, nrows - 1)) * lda
        for t in range(c_lo, c_hi):
            j0, nr, n, poff = tiles[t, 0], tiles[t, 1], tiles[t, 2], tiles[t, 3]
            panel = wts[fc.weights + poff: fc.weights + poff + (K + 1) * nr]
            _call_tile(fns[FN_TILE + nr // 8], _at(src, a0), _at(src, a1), _at(src, a2), _at(src, a3), _at(koff, 0),
                       K, _at(panel, 0), _at(tile, 0), _at(tile, 64), _at(tile, 128), _at(tile, 192), relu, store,
                       _at(tile, 0), _at(tile, 0), _at(tile, 0), _at(tile, 0))
            for i in range(nrows):
                for j in range(n):
                    logits[r0 + i, j0 + j] = tile[64 * i + j]

