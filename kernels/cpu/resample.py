"""Resize, centre crop and normalise in one pass, pixel-identical to PIL's ``Image.resize``.

torchvision's evaluation transforms resize the whole photo (shorter side -> 256) and then keep a
224 x 224 centre crop of it: 40 % of the resized pixels are computed and thrown away, the crop is
copied, and the normalisation makes a float copy of its own. :func:`resize_crop_normalise`
computes only the crop's pixels, each exactly as PIL computes it, and writes them normalised,
channel-planar, straight into the network's input.

Exactly as PIL (``libImaging/Resample.c``, 8 bits per channel) means:

* the filter weights of output pixel ``xx`` (of ``out_size``) over the source box ``[in0, in1)``
  (single-precision floats, as PIL takes them): ``scale = (in1 - in0) / out_size``, the filter
  stretched by ``max(scale, 1)``, centred at ``in0 + (xx + 0.5) * scale``, taps from
  ``int(center - support + 0.5)`` (clamped to the image) to ``int(center + support + 0.5)``, each
  weight ``filter((x - center + 0.5) / stretch)``, divided by their sum (summed in tap order) and
  rounded to fixed point with 22 fractional bits (:func:`_weights`);
* two passes: horizontal, each needed source row into an 8-bit row of the output's width (sums
  start at one half, are shifted right by 22 and clamped to 0..255), then vertical over those rows.

It reads the pixels where PIL keeps them (``npshuffle.pixels.rgbx_view``: four bytes a pixel, no
copy): copying a 12-megapixel photo out of PIL costs as much as decoding it. And it reads a photo
whose EXIF orientation says it is stored turned as if it were upright (``_TURNS``), the pixels
``ImageOps.exif_transpose`` would give, without turning it first (96 ms for a 12 MP photo).

An output pixel depends only on its own taps, so computing a subset of the outputs (the crop)
gives the very same values as computing them all and cropping. ``tests/test_resample.py`` checks
this against PIL itself on photos and on random sizes, boxes and crops.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types

from .tricks import _wide_vectors

PRECISION_BITS = 22  # PIL's fixed point for 8-bit resampling: 32 - 8 - 2
BILINEAR, BICUBIC = 0, 1  # the filters (PIL's supports: 1 and 2 source pixels)
FILTERS = {"bilinear": BILINEAR, "bicubic": BICUBIC}
_SUPPORT = (1.0, 2.0)


@njit(inline="always")
def _filter(kind, x):
    """PIL's bilinear (triangle) or bicubic (a = -0.5) filter at distance ``x``."""
    if x < 0.0:
        x = -x
    if kind == BILINEAR:
        return 1.0 - x if x < 1.0 else 0.0
    if x < 1.0:
        return (1.5 * x - 2.5) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * -0.5
    return 0.0


@njit(cache=True, nogil=True)
def _weights(kind, in_size, in0, in1, out_size, first, count):
    """Fixed-point weights of outputs ``first .. first + count - 1`` of a resize of ``[in0, in1)``
    (of a source ``in_size`` long) to ``out_size``: ``(starts, taps, weights)``, output i reading
    source ``starts[i] + t`` with weight ``weights[i, t]`` for ``t < taps[i]``."""
    _wide_vectors()  # (tricks.py, trick 8)
    scale = np.float64(np.float32(in1 - in0)) / out_size
    stretch = max(scale, 1.0)
    inverse = 1.0 / stretch  # (PIL multiplies by this rather than dividing by the stretch)
    support = _SUPPORT[kind] * stretch
    ksize = int(math.ceil(support)) * 2 + 1
    starts = np.empty(count, np.int64)
    taps = np.empty(count, np.int64)
    weights = np.zeros((count, ksize), np.int32)
    exact = np.empty(ksize, np.float64)
    for i in range(count):
        center = np.float64(in0) + (first + i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # int(): truncation, as C's cast
        n = min(int(center + support + 0.5), in_size) - lo
        total = 0.0
        for t in range(n):
            w = _filter(kind, (np.float64(t + lo) - center + 0.5) * inverse)
            exact[t] = w
            total += w
        for t in range(n):
            w = exact[t] / total if total != 0.0 else exact[t]
            weights[i, t] = int(w * (1 << PRECISION_BITS) + (0.5 if w >= 0 else -0.5))
        starts[i], taps[i] = lo, n
    return starts, taps, weights


@njit(inline="always")
def _clip8(total):
    v = total >> PRECISION_BITS
    return 0 if v < 0 else (255 if v > 255 else v)


# EXIF orientation (1-8) -> how the upright picture U reads the stored pixels W (H x W):
# (swap, flip_r, flip_x). Without swap U[r, x] = W[r', x'], with r' = H-1-r under flip_r and x' =
# W-1-x under flip_x; with swap (the quarter turns and transposes) U[r, x] = W[x', r'], where x' =
# H-1-x under flip_x and r' = W-1-r under flip_r. The same pixels as ImageOps.exif_transpose.
_TURNS = ((False, False, False), (False, False, False), (False, False, True), (False, True, True),
          (False, True, False), (True, False, False), (True, False, True), (True, True, True), (True, True, False))
# filters up to this many taps (a shrink under ~3.5x, bilinear) go tap by tap: measured on flower photos
# (~1.3x shrinks, 5 taps) 2.0-2.1x PIL's speed against 1.7-1.8x for dot products padded to 16 taps;
# a 12 MP photo (25 taps) the other way round
NARROW_TAPS = 8
_LANES = 256  # stored columns per block in the turned horizontal pass (see _across_columns)


@njit(inline="always")
def _add_channel_scaled(acc, words, shift, w):
    """acc[k] += byte ``shift // 8`` of words[k], times the scalar w. One array written per loop,
    so that LLVM vectorises it (three accumulators updated in one loop need more run-time alias
    checks than it makes, and it gave up)."""
    for k in range(acc.shape[0]):
        acc[k] += ((np.int32(words[k]) >> shift) & 255) * w


@njit(inline="always")
def _across_rows_by_output(words, flip_r, first, rows, x_start, x_taps, x_w, crop, half, across):
    """The horizontal pass of a picture stored without a quarter turn (upright row ``first + r``
    is a stored row), for wide filters (a big shrink). Output column j is a dot product of
    ``taps`` neighbouring pixel words with its weights. Every j reads the same number of words
    (``taps``, a multiple of 16, so that each dot product is whole 512-bit vectors) from
    ``start[j]``, with zero weights where it has no tap (a start moved left where the row would
    end too soon)."""
    height, width = words.shape[0], words.shape[1]
    taps = min((x_w.shape[1] + 15) // 16 * 16, width)
    start = np.empty(crop, np.int64)
    weights = np.zeros((crop, taps), np.int32)
    for j in range(crop):
        start[j] = min(x_start[j], width - taps)
        offset = x_start[j] - start[j]
        weights[j, offset: offset + x_taps[j]] = x_w[j, :x_taps[j]]
    for r in range(rows):
        line = words[height - 1 - (first + r) if flip_r else first + r]
        dst = across[r]
        for j in range(crop):
            pixels, w = line[start[j]: start[j] + taps], weights[j]
            for c in range(3):
                total = np.int64(half)
                for t in range(taps):
                    total += ((np.int32(pixels[t]) >> (8 * c)) & 255) * w[t]
                dst[c, j] = _clip8(total)


@njit(inline="always")
def _across_rows_by_tap(words, flip_r, first, rows, x_start, x_taps, x_w, crop, half, across):
    """The same as :func:`_across_rows_by_output`, for narrow filters (a small shrink, where padding
    each dot product to 16 taps would waste most of it): for tap t, output column j reads the pixel
    word ``index[t, j]`` with weight ``across_w[t, j]`` (0 past its last tap, which reads any valid
    pixel), a loop along the crop's columns."""
    height = words.shape[0]
    ksize = x_w.shape[1]
    index = np.empty((ksize, crop), np.int32)
    across_w = np.zeros((ksize, crop), np.int32)
    for j in range(crop):
        for t in range(ksize):
            index[t, j] = x_start[j] + min(t, x_taps[j] - 1)
            if t < x_taps[j]:
                across_w[t, j] = x_w[j, t]
    red, green, blue = np.empty(crop, np.int32), np.empty(crop, np.int32), np.empty(crop, np.int32)
    for r in range(rows):
        line = words[height - 1 - (first + r) if flip_r else first + r]
        red[:] = half
        green[:] = half
        blue[:] = half
        for t in range(ksize):
            idx, w = index[t], across_w[t]
            for j in range(crop):
                v = np.int32(line[idx[j]])
                red[j] += (v & 255) * w[j]
                green[j] += ((v >> 8) & 255) * w[j]
                blue[j] += ((v >> 16) & 255) * w[j]
        dst = across[r]
        for j in range(crop):
            dst[0, j] = _clip8(red[j])
            dst[1, j] = _clip8(green[j])
            dst[2, j] = _clip8(blue[j])


@njit(inline="always")
def _across_columns(words, flip_r, first, rows, x_start, x_taps, x_w, crop, half, across):
    """The horizontal pass of a picture stored a quarter turn away: upright row r is stored column
    ``r'`` (see _TURNS), and the taps of an output pixel walk down stored rows. Vectorised across
    blocks of _LANES stored columns, that is _LANES upright rows at once: each tap reads _LANES
    neighbouring words of one stored row, no gather. (Narrower blocks visit each stored row's page
    more often: with 16 columns, page walks made it 2x slower.)"""
    width = words.shape[1]
    lo = width - first - rows if flip_r else first  # the stored columns the needed rows are
    hi = lo + rows
    acc = np.empty((3, _LANES), np.int32)
    for block in range(lo, hi, _LANES):
        c0 = max(min(block, hi - _LANES), lo)  # (the last block ends at hi, overlapping the one before)
        n = min(_LANES, hi - c0)
        for j in range(crop):
            acc[:] = half
            for t in range(x_taps[j]):
                line, w = words[x_start[j] + t, c0: c0 + n], x_w[j, t]  # (flip_x: the caller reversed the taps)
                for c in range(3):
                    _add_channel_scaled(acc[c, :n], line, 8 * c, w)
            for k in range(n):
                dst = across[(width - 1 - (c0 + k) if flip_r else c0 + k) - first]
                for c in range(3):
                    dst[c, j] = _clip8(acc[c, k])


@njit(inline="always")
def _crop_only(words, swap, flip_r, flip_x, left, top, tables, order, out):
    """No resize (the size is the upright picture's and the box all of it: PIL's resize then copies
    the picture): the crop's pixels read as they are, upright, and normalised."""
    stored_h, stored_w = words.shape[0], words.shape[1]
    crop = out.shape[1]
    shifts = np.empty(3, np.int64)
    for c in range(3):
        shifts[c] = 8 * order[c]
    for i in range(crop):
        r = top + i
        for j in range(crop):
            x = left + j
            if swap:  # U[r, x] = W[x', r'] (see _TURNS)
                v = words[stored_h - 1 - x if flip_x else x, stored_w - 1 - r if flip_r else r]
            else:
                v = words[stored_h - 1 - r if flip_r else r, stored_w - 1 - x if flip_x else x]
            for c in range(3):
                out[c, i, j] = tables[c, (np.int64(v) >> shifts[c]) & 255]


@njit(cache=True, nogil=True)
def resize_crop_normalise(words, orientation, box, size_w, size_h, left, top, kind, tables, order, out):
    """PIL's ``upright.resize((size_w, size_h), filter, box).crop((left, top, left + C, top + C))``,
    then normalised, into ``out``; ``upright`` is the picture turned as its EXIF ``orientation``
    (1-8, 1: as stored) says, as ``ImageOps.exif_transpose`` turns it.

    words: uint32 (H, W), the RGB image as stored in memory by PIL, a word per pixel ``R | G << 8 |
    B << 16`` (``npshuffle.pixels.rgbx_view``); box: float32 (4,), the source box (x0, y0, x1, y1)
    in the upright picture, (0, 0, W, H) for the whole of it; kind: BILINEAR or BICUBIC; tables:
    float32 (3, 256), row c the normalised value of each 8-bit value of output channel c; order:
    int64 (3,), output channel c reads source channel ``order[c]``; out: float32 (3, C, C), C the
    crop's size, which must lie inside the resized image.
    """
    _wide_vectors()  # (tricks.py, trick 8)
    swap, flip_r, flip_x = _TURNS[orientation]
    height, width = (words.shape[1], words.shape[0]) if swap else (words.shape[0], words.shape[1])  # upright
    crop = out.shape[1]
    if size_w == width and size_h == height and box[0] == 0 and box[1] == 0 and box[2] == width and box[3] == height:
        _crop_only(words, swap, flip_r, flip_x, left, top, tables, order, out)
        return
    half = np.int32(1 << (PRECISION_BITS - 1))
    x_start, x_taps, x_w = _weights(kind, width, box[0], box[2], size_w, left, crop)
    y_start, y_taps, y_w = _weights(kind, height, box[1], box[3], size_h, top, crop)
    if flip_x:  # upright column x is stored at width - 1 - x: read each output's taps in reverse
        for j in range(crop):
            n = x_taps[j]
            x_start[j] = width - x_start[j] - n
            x_w[j, :n] = x_w[j, :n][::-1].copy()
    first = y_start[0]
    rows = y_start[crop - 1] + y_taps[crop - 1] - first
    # the horizontal pass, on the upright rows the crop needs, into (row, channel, column)
    across = np.empty((rows, 3, crop), np.int32)
    if swap:
        _across_columns(words, flip_r, first, rows, x_start, x_taps, x_w, crop, half, across)
    elif x_w.shape[1] > NARROW_TAPS:
        _across_rows_by_output(words, flip_r, first, rows, x_start, x_taps, x_w, crop, half, across)
    else:
        _across_rows_by_tap(words, flip_r, first, rows, x_start, x_taps, x_w, crop, half, across)
    # the vertical pass, an output row at a time (the inner loop runs along the row: vectorised),
    # then the table lookup that normalises into the planar output
    acc = np.empty((3, crop), np.int32)
    for i in range(crop):
        acc[:] = half
        y0, k = y_start[i] - first, y_w[i]
        for t in range(y_taps[i]):
            row, w = across[y0 + t], k[t]
            for c in range(3):
                for j in range(crop):
                    acc[c, j] += row[c, j] * w
        for c in range(3):
            table, plane, channel = tables[c], out[c, i], acc[order[c]]
            for j in range(crop):
                plane[j] = table[_clip8(channel[j])]


# the argument types it is compiled for: the pixel words read-only, as npshuffle.pixels.rgbx_view gives them
RESAMPLE_ARGS = (types.Array(types.uint32, 2, "C", readonly=True), types.int64, types.float32[::1], types.int64,
                 types.int64, types.int64, types.int64, types.int64, types.float32[:, ::1], types.int64[::1],
                 types.float32[:, :, ::1])
