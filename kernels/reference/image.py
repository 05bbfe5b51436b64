"""Single-image fast forms of the window ops and convs (the NumPy backend's hot path at batch 1).

The other reference ops take a batch, validate every argument and return new arrays. The ones
here compute the same ops for ONE image held as a (C, H, W) float32 array, trust their caller
(no validation: the backend checked the shapes once, when it lowered the plan), take weights
already laid out for them, and write into the caller's ``out`` array. With ShuffleNet's small
tensors (30 channels of 28x28 is typical) the batched forms spend their time in NumPy's per-row
loop overhead, in im2col copies and in temporaries, not in arithmetic; these keep every pass over
the data on long contiguous rows: a 1x1 conv is one matrix product, and every KxK window op works
on the image's ``window_columns``: K*K shifted copies of it, each a plain (C, Ho*Wo) matrix. Each
is tested against its batched definition in tests/test_reference_images.py.
"""

from __future__ import annotations

import numpy as np

from ..sizes import output_size


def tap_ranges(size: int, kernel: int, stride: int, padding: int) -> tuple[int, list[tuple[slice, slice]]]:
    """Where each kernel tap lands along one axis, with the padding left out.

    Returns ``(out_size, taps)``, ``out_size = (size + 2*padding - kernel) // stride + 1``
    and ``taps[t] = (dst, src)`` for tap t = 0..kernel-1: output positions ``i``
    in ``dst`` read input position ``i*stride + t - padding`` and ``src`` lists
    those input positions in the same order.  Outputs whose input would fall in
    the padding are left out of ``dst``.
    """
    out_size = output_size(size, kernel, stride, padding)
    taps = []
    for t in range(kernel):
        first = max(0, -((t - padding) // stride))                      # ceil((padding - t) / stride)
        stop = min(out_size, (size - 1 + padding - t) // stride + 1)   # one past the last valid output
        count = max(0, stop - first)
        start = first * stride + t - padding
        end = start + (count - 1) * stride + 1 if count else start     # one past the last input read
        taps.append((slice(first, first + count), slice(start, end, stride)))
    return out_size, taps


def window_columns(x, kernel: int, stride: int, padding: int, fill: float = 0.0) -> np.ndarray:
    """im2col for one image: every KxK window a window op at (stride, padding) reads, as columns.

    x (C, H, W) C-contiguous.  Returns a new (C, K*K, Ho*Wo) float32 array whose
    ``[c, ky*K + kx, i*Wo + j]`` is ``x[c, i*stride + ky - padding, j*stride + kx - padding]``,
    or ``fill`` where that falls in the padding.  Row ``[c, t]`` is tap t's shifted image
    of channel c, so a depthwise conv is a (1, K*K) @ (K*K, Ho*Wo) product per channel,
    a dense conv one (O, C*K*K) @ (C*K*K, Ho*Wo) product, a pool a max or sum over axis 1.

    How: write ``ky - padding = stride*dy + a`` (0 <= a < stride), and the same for x with
    (dx, b).  Input row ``i*stride + ky - padding`` is then row ``i + dy`` of the *phase
    plane* ``x[:, a::stride, b::stride]`` (the image itself at stride 1).  When H = stride*Ho
    and W = stride*Wo (every ShuffleNet layer on an even-sized input) the phase planes are
    Ho x Wo: laid out flat with pitch Wo between rows of ``fill``, a shift by (dy, dx) is a
    shift of the flat index by ``dy*Wo + dx``, so each tap is one slice copied as long
    contiguous rows, instead of NumPy's per-row loops over 28-pixel rows.  Columns that a
    shift by dx moves past the left or right edge wrap onto the neighbouring row instead of
    the padding; those ``|dx|`` output columns are set to ``fill`` afterwards.  Other sizes:
    one strided copy per tap (``tap_ranges``).
    """
    c, h, w = x.shape
    k, s, p = kernel, stride, padding
    ho, taps_y = tap_ranges(h, k, s, p)
    wo, taps_x = tap_ranges(w, k, s, p)
    cols = np.empty((c, k, k, ho, wo), dtype=np.float32)
    if h != s * ho or w != s * wo:
        for ky, (dst_y, src_y) in enumerate(taps_y):
            for kx, (dst_x, src_x) in enumerate(taps_x):
                tap = cols[:, ky, kx]
                if (dst_y.stop - dst_y.start, dst_x.stop - dst_x.start) != (ho, wo):
                    tap.fill(fill)   # part of this tap lies in the padding
                tap[:, dst_y, dst_x] = x[:, src_y, src_x]
        return cols.reshape(c, k * k, ho * wo)
    # The s*s phase planes, each between `border` rows of fill: more than any shift reaches.
    border = k + -(-k // wo)
    rows = border + ho + border
    phases = np.empty((c, s, s, rows, wo), dtype=np.float32)
    phases[:, :, :, :border] = fill
    phases[:, :, :, border:border + ho] = x.reshape(c, ho, s, wo, s).transpose(0, 2, 4, 1, 3)
    phases[:, :, :, border + ho:] = fill
    flat = phases.reshape(c, s * s * rows * wo)
    n = ho * wo
    for ky in range(k):
        dy, a = divmod(ky - p, s)
        for kx in range(k):
            dx, b = divmod(kx - p, s)
            start = ((a * s + b) * rows + border + dy) * wo + dx
            cols[:, ky, kx] = flat[:, start:start + n].reshape(c, ho, wo)
    for kx in range(k):   # the wrapped columns (see above)
        dx = (kx - p) // s
        if dx < 0:
            cols[:, :, kx, :, :-dx] = fill
        elif dx > 0:
            cols[:, :, kx, :, wo - dx:] = fill
    return cols.reshape(c, k * k, ho * wo)


def bias_relu_(y: np.ndarray, bias: np.ndarray | None, relu: bool) -> np.ndarray:
    """In-place ``bias_relu``: ``y += bias`` (broadcast), then ``y = max(y, 0)`` if relu. Returns y."""
    if bias is not None:
        np.add(y, bias, out=y)
    if relu:
        np.maximum(y, 0.0, out=y)
    return y


def pointwise_conv_image(x, weight, bias, relu: bool, out) -> np.ndarray:
    """Grouped 1x1 conv of one image as one stacked matrix product, into ``out``.

    x      (G, C/G, P)    the image's P = H*W pixels, channels in G groups; any view whose
                          matrices have unit pixel stride (BLAS reads strided rows)
    weight (G, O/G, C/G)  ``pointwise_conv2d``'s (O, C/G, 1, 1) weight, reshaped once
    bias   (G, O/G, 1) or None
    out    (G, O/G, P)    same rule as x; a strided view here is how a caller writes a
                          concat or a shuffle into place instead of copying afterwards

    ``out[g] = weight[g] @ x[g] (+ bias[g]) (ReLU)``: that is ``pointwise_conv2d`` for one
    image; ``G = 1`` is a dense 1x1 conv.  Returns ``out``.
    """
    np.matmul(weight, x, out=out)
    return bias_relu_(out, bias, relu)


def depthwise_conv_image(x, weight, bias, kernel: int, stride: int, padding: int, relu: bool, out) -> np.ndarray:
    """Depthwise conv of one image, into ``out``.

    x      (C, H, W) C-contiguous
    weight (C, 1, K*K)   ``depthwise_conv2d``'s (C, 1, K, K) weight, reshaped once
    bias   (C, 1) or None
    out    (C, Ho*Wo),   Ho = (H + 2*padding - K) // stride + 1  (same for W)

    Channel c's output is its (1, K*K) filter times its (K*K, Ho*Wo) ``window_columns``,
    so the whole conv is one stacked matrix product ``(C, 1, K*K) @ (C, K*K, Ho*Wo)``: one
    BLAS call per channel, which beats K*K multiply-add passes with a per-channel broadcast
    weight (~2x slower per element than a plain NumPy multiply).  Returns ``out``.
    """
    np.matmul(weight, window_columns(x, kernel, stride, padding), out=out[:, None, :])
    return bias_relu_(out, bias, relu)


def conv_image(x, weight, bias, kernel: int, stride: int, padding: int, relu: bool, out) -> np.ndarray:
    """Dense KxK conv of one image (the stem) as im2col + one matrix product, into ``out``.

    x      (C, H, W) C-contiguous
    weight (O, C*K*K)   ``conv2d``'s (O, C, K, K) weight flattened once, columns in (c, ky, kx) order
    bias   (O, 1) or None
    out    (O, Ho*Wo)

    ``out = weight @ cols`` with the (C*K*K, Ho*Wo) ``window_columns``.  Returns ``out``.
    """
    cols = window_columns(x, kernel, stride, padding)
    np.matmul(weight, cols.reshape(-1, cols.shape[2]), out=out)
    return bias_relu_(out, bias, relu)


def max_pool_image(x, kernel: int, stride: int, padding: int, out) -> np.ndarray:
    """Max pooling of one image, x (C, H, W) C-contiguous -> out (C, Ho*Wo), as ``max_pool2d``
    (-inf padding, ``padding <= kernel // 2`` so no window is all padding, floor sizes).

    The maximum of the ``window_columns`` (filled with -inf) over their K*K taps: bitwise
    the same as ``max_pool2d``, as max is exact whatever the order.  Returns ``out``.
    """
    return np.max(window_columns(x, kernel, stride, padding, fill=-np.inf), axis=1, out=out)


def avg_pool_image(x, kernel: int, stride: int, padding: int, out) -> np.ndarray:
    """Average pooling of one image with ``count_include_pad=True``: x (C, H, W) C-contiguous ->
    out (C, Ho*Wo), as ``avg_pool2d`` (zero padding, ``padding <= kernel // 2``, floor sizes).

    The sum of the ``window_columns`` over their K*K taps, divided by K*K: the same sums as
    ``avg_pool2d`` in another order, so equal to float32 rounding.  ``out`` may be a channel
    slice of a bigger array (V1's stride-2 concat).  Returns ``out``.
    """
    np.sum(window_columns(x, kernel, stride, padding), axis=1, out=out)
    return np.divide(out, np.float32(kernel * kernel), out=out)
