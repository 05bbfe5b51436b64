"""Layout: padded channels-last images in one flat workspace, and the packed weights.

Every activation of one image is a *padded NHWC* block inside one flat float32 array ``ws`` (the
workspace), described by (offset, H, W, channel stride C) (``steps.Buffer``)::

    value of channel c at pixel (y, x)  =  ws[offset + ((y + 1) * (W + 2) + (x + 1)) * C + c]

* **channels last**: a 1x1 conv is then one matrix product over all pixels (rows = pixels,
  columns = channels), and the depthwise conv and the average / global pools vectorise over the
  contiguous channels;
* **C is a multiple of 16** (one AVX-512 register of float32) and at least the channel count, so
  channel loops run in whole 16-lane vectors; padding channels hold zeros or harmless finite
  values and are never read as real channels;
* **a one-pixel zero border** around every image, so the 3x3 depthwise conv and the 3x3 average
  pool (all of ShuffleNet's 3x3 ops have padding 1) read their neighbours without bounds checks.
  Nothing ever writes a border, so it stays zero.

Only the network input arrives as NCHW; ``stem.phase_input`` copies it into rows split by column
phase, from which ``stem.stem_pool`` computes the stem conv and its max-pool in one pass (see
``stem.py``).

Weights are *packed* once by the backend, into one flat float32 array ``wts``, by the functions
here (plain NumPy): a GEMM (1x1 conv, classifier) as panels per output-channel tile
(:func:`pack_gemm`), a depthwise conv as 10 rows of taps (:func:`pack_depthwise`), the stem conv in
blocks of 8 output channels (:func:`pack_stem`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..sizes import output_size

LANES = 16  # float32 lanes of one AVX-512 register; every channel count is padded to a multiple
TILE_WIDTHS = (64, 48, 32, 24, 16)  # the widths NR of the GEMM micro-kernel's tiles (see micro_kernel.py)
STEM_CB = 8  # output channels per stem micro-tile (see stem.py)
STEM_QB = 32  # output columns per stem micro-tile (two 16-lane vectors)


CACHE_LINE = 64  # bytes: one AVX-512 vector


def aligned_zeros(shape, dtype) -> np.ndarray:
    """``np.zeros(shape, dtype)`` whose data starts on a cache-line (64-byte) boundary.

    NumPy leaves alignment to the C allocator, and glibc puts a large block 16 bytes past a page
    boundary: every 64-byte vector load then straddles two cache lines. The kernels' offsets are
    multiples of 16 floats from the start of their arrays (``LANES``), so with the start aligned
    every vector load of a channel run is aligned too.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(count * dtype.itemsize + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start: start + count * dtype.itemsize].view(dtype).reshape(shape)


def aligned_copy(array: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``array`` in :func:`aligned_zeros` memory."""
    out = aligned_zeros(array.shape, array.dtype)
    out[...] = array
    return out


def padded(channels: int) -> int:
    """``channels`` rounded up to a whole number of 16-lane vectors."""
    return -(-channels // LANES) * LANES


def tile_widths(n: int) -> list[int]:
    """Split ``n`` output channels into micro-kernel tiles: 64 wide, then the narrowest of
    16/24/32/48 that holds the rest (so the tiles never cover more than ``padded(n)`` channels;
    24 = one 16-lane and one 8-lane register, for the many 24-channel layers)."""
    widths = []
    while n > 0:
        nr = next(w for w in sorted(TILE_WIDTHS) if w >= min(n, 64))
        widths.append(nr)
        n -= nr
    return widths


def pack_gemm(wt: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Pack a (grouped) GEMM for ``gemm.gemm``: ``wt`` (groups, K, N) transposed weights, ``bias``
    (groups * N,). Returns (panels, tile table, floats per group): group g's tile t is the (1 + K, nr)
    panel at ``g * group_floats + table[t, 3]``, row 0 its bias; table rows are (first output
    channel j0, width nr, valid columns n, panel offset)."""
    groups, k, n_out = wt.shape
    bias = np.asarray(bias, np.float32).reshape(groups, n_out)
    table, panels, offset, j0 = [], [[] for _ in range(groups)], 0, 0
    for nr in tile_widths(n_out):
        n = min(nr, n_out - j0)
        for g in range(groups):
            panel = np.zeros((1 + k, nr), np.float32)
            panel[0, :n] = bias[g, j0: j0 + n]
            panel[1:, :n] = wt[g, :, j0: j0 + n]
            panels[g].append(panel.ravel())
        table.append((j0, nr, n, offset))
        offset += (1 + k) * nr
        j0 += n
    return np.concatenate([np.concatenate(p) for p in panels]), np.array(table, np.int64), offset


def pack_pointwise(weight: np.ndarray, bias: np.ndarray, groups: int):
    """:func:`pack_gemm` for a 1x1 conv weight (O, C/groups, 1, 1)."""
    out_channels, cg = weight.shape[:2]
    return pack_gemm(weight.reshape(groups, out_channels // groups, cg).transpose(0, 2, 1), bias)


def pack_depthwise(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(10, padded(C)) for ``per_channel.depthwise3x3``: the bias, then the taps (dy, dx) in row 1 + 3*dy + dx."""
    c = weight.shape[0]
    block = np.zeros((10, padded(c)), np.float32)
    block[0, :c] = bias
    block[1:, :c] = np.asarray(weight, np.float32).reshape(c, 9).T
    return block


def to_padded_nhwc(x: np.ndarray, stride: int | None = None) -> np.ndarray:
    """(C, H, W) -> the flat padded NHWC block (zero border, channel stride ``stride`` >= C)."""
    c, h, w = x.shape
    stride = padded(c) if stride is None else stride
    out = np.zeros((h + 2, w + 2, stride), np.float32)
    out[1:-1, 1:-1, :c] = x.transpose(1, 2, 0)
    return out.ravel()


def from_padded_nhwc(block: np.ndarray, h: int, w: int, stride: int, channels: int, first: int = 0) -> np.ndarray:
    """Inverse of :func:`to_padded_nhwc`: channels ``first .. first + channels - 1`` as (C, H, W)."""
    img = block[: (h + 2) * (w + 2) * stride].reshape(h + 2, w + 2, stride)
    return np.ascontiguousarray(img[1:-1, 1:-1, first: first + channels].transpose(2, 0, 1))


class StemGeometry(NamedTuple):
    """The fused stem's sizes for one input size (see ``stem.py``)."""

    stem_h: int  # the stem conv's output (3x3, stride 2, padding 1)
    stem_w: int
    pooled_h: int  # the max-pool's output (3x3, stride 2, padding 1)
    pooled_w: int
    nx: int  # the pooled width rounded up to whole micro-tiles
    q: int  # floats per input phase row: NX + 16 (the last tile reads position NX, one past the
    #         computed ones; 16 keeps the rows 64-byte aligned)


def stem_geometry(height: int, width: int) -> StemGeometry:
    """:class:`StemGeometry` for an input of ``height`` x ``width``."""
    hs, ws = output_size(height, 3, 2, 1), output_size(width, 3, 2, 1)
    hp, wp = output_size(hs, 3, 2, 1), output_size(ws, 3, 2, 1)
    nx = -(-wp // STEM_QB) * STEM_QB
    return StemGeometry(hs, ws, hp, wp, nx, nx + 16)


def pack_stem(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(nblocks, 1 + C*9, 8) for ``stem.stem_pool``: per block of 8 output channels, row 0 the bias
    and row 1 + 9c + 3dy + dx the tap (c, dy, dx); channels past the last are zero."""
    o, c = weight.shape[:2]
    nblocks = -(-o // STEM_CB)
    packed = np.zeros((nblocks * STEM_CB, 1 + 9 * c), np.float32)
    packed[:o, 0] = bias
    packed[:o, 1:] = np.asarray(weight, np.float32).reshape(o, 9 * c)
    return np.ascontiguousarray(packed.reshape(nblocks, STEM_CB, 1 + 9 * c).transpose(0, 2, 1))

