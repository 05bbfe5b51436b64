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
copy): copying a 12-megapixel photo out of PIL costs as much as decoding it.

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


@njit(cache=True, nogil=True)
def resize_crop_normalise(words, box, size_w, size_h, left, top, kind, tables, order, out):
    """PIL's ``image.resize((size_w, size_h), filter, box).crop((left, top, left + C, top + C))``,
    then normalised, into ``out``.

    words: uint32 (H, W), the RGB image as PIL keeps it in memory, a word per pixel ``R | G << 8 |
    B << 16`` (``npshuffle.pixels.rgbx_view``); box: float32 (4,), the source box (x0, y0, x1, y1),
    (0, 0, W, H) for the whole image; kind: BILINEAR or BICUBIC; tables: float32 (3, 256), row c
    the normalised value of each 8-bit value of output channel c; order: int64 (3,), output
    channel c reads source channel ``order[c]``; out: float32 (3, C, C), C the crop's size, which
    must lie inside the resized image.
    """
    _wide_vectors()  # (tricks.py, trick 8)
    height, width = words.shape[0], words.shape[1]
    crop = out.shape[1]
    half = np.int32(1 << (PRECISION_BITS - 1))
    x_start, x_taps, x_w = _weights(kind, width, box[0], box[2], size_w, left, crop)
    y_start, y_taps, y_w = _weights(kind, height, box[1], box[3], size_h, top, crop)
    first = y_start[0]
    rows = y_start[crop - 1] + y_taps[crop - 1] - first
    # the horizontal pass, on the source rows the crop needs, into (row, channel, column). As
    # gathers, so that it vectorises across the columns: for tap t, output column j reads the
    # pixel word index[t, j] (all three channels at once) with weight across_w[t, j] (0 past its
    # last tap, which reads any valid pixel); 32-bit indices give 16-lane gathers
    ksize = x_w.shape[1]
    index = np.empty((ksize, crop), np.int32)
    across_w = np.zeros((ksize, crop), np.int32)
    for j in range(crop):
        for t in range(ksize):
            index[t, j] = x_start[j] + min(t, x_taps[j] - 1)
            if t < x_taps[j]:
                across_w[t, j] = x_w[j, t]
    across = np.empty((rows, 3, crop), np.int32)
    red, green, blue = np.empty(crop, np.int32), np.empty(crop, np.int32), np.empty(crop, np.int32)
    for r in range(rows):
        line = words[first + r]
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
RESAMPLE_ARGS = (types.Array(types.uint32, 2, "C", readonly=True), types.float32[::1], types.int64, types.int64,
                 types.int64, types.int64, types.int64, types.float32[:, ::1], types.int64[::1],
                 types.float32[:, :, ::1])
