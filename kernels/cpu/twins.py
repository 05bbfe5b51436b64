"""Array in, array out: the fast CPU kernels with the reference's names and shape contracts.

The network runs its kernels on a flat workspace of padded NHWC buffers through step records
(``layout.py``, ``steps.py``); that is what makes them fast, and what makes them hard to try in a
REPL. Each function here sets up exactly one step the way ``npshuffle.backend_numba`` does (the
input copied into a padded channels-last buffer, the weights packed, the record built and packed),
runs it with :func:`driver.run_step`, and returns the result as the ``kernels.reference`` function
of the same name would: float32, NCHW ``(N, C, H, W)``, one image at a time. So::

    >>> from kernels import reference
    >>> from kernels.cpu import twins
    >>> y = twins.pointwise_conv2d(x, w, b, groups=3, relu=True)
    >>> np.abs(y - reference.pointwise_conv2d(x, w, b, groups=3, relu=True)).max()   # ~1e-6

They are for learning and testing (each call packs its weights again); the kernels themselves
support only what ShuffleNet needs, and a twin refuses the rest with a ValueError (a depthwise
conv is 3x3 with padding 1, a pool 3x3 with padding 1, the stem a 3x3 / 2 conv with padding 1 and
a ReLU, then its 3x3 / 2 max-pool).
"""

from __future__ import annotations

import numpy as np

from .driver import kernel_table, run_step
from .gemm import classifier_part
from .layout import (
    from_padded_nhwc,
    pack_depthwise,
    pack_gemm,
    pack_pointwise,
    pack_stem,
    padded,
    stem_geometry,
    to_padded_nhwc,
)
from .steps import (
    SPLIT_PIXELS,
    AvgPool,
    Buffer,
    Classifier,
    Depthwise,
    Gemm,
    GlobalPool,
    PackedGemm,
    PhaseInput,
    StemPool,
    pack_steps,
)


class Workspace:
    """A flat float32 workspace being laid out: buffers appended one after the other."""

    def __init__(self):
        self.blocks: list[np.ndarray] = []
        self.size = 0

    def add(self, block: np.ndarray) -> int:
        """Append ``block`` (flattened); returns its offset."""
        offset = self.size
        self.blocks.append(np.asarray(block, np.float32).ravel())
        self.size += self.blocks[-1].size
        return offset

    def buffer(self, channels: int, height: int, width: int, stride: int | None = None) -> Buffer:
        """A zeroed padded NHWC buffer (zero border, channel stride a multiple of 16)."""
        stride = padded(channels) if stride is None else stride
        return Buffer(self.add(np.zeros((height + 2) * (width + 2) * stride, np.float32)), height, width, stride)

    def array(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.float32)


def _run(record, ws: np.ndarray, wts: np.ndarray, itab: np.ndarray | None = None, image=None, pooled=None) -> None:
    """Run one step record on one thread, with the argument types the backend uses."""
    step = pack_steps([record], [SPLIT_PIXELS])[0]
    itab = np.zeros(16, np.int64) if itab is None else np.ascontiguousarray(itab, np.int64)
    image = np.zeros((1, 1, 1), np.float32) if image is None else image
    pooled = np.zeros(16, np.float32) if pooled is None else pooled
    run_step(ws, np.ascontiguousarray(wts, np.float32).ravel(), itab, step, image, pooled, np.int64(0), np.int64(1))


def _batch(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ValueError(f"{name}: expected an NCHW batch (N, C, H, W), got shape {x.shape}")
    return x


def pointwise_conv2d(x, weight, bias=None, *, groups=1, relu=False) -> np.ndarray:
    """1x1 conv, ``groups`` groups: x (N, C, H, W), weight (O, C/groups[, 1, 1]), bias (O,) ->
    (N, O, H, W); the GEMM step (``gemm.gemm``, its 4 x NR micro-kernel, the fused bias and ReLU)."""
    x = _batch(x, "pointwise_conv2d")
    _, c, h, w = x.shape
    weight = np.asarray(weight, np.float32)
    o = weight.shape[0]
    if weight.shape[1] * groups != c or o % groups:
        raise ValueError(f"pointwise_conv2d: weight {weight.shape} does not fit {c} input channels in {groups} groups")
    bias = np.zeros(o, np.float32) if bias is None else np.asarray(bias, np.float32)
    panels, table, group_floats = pack_pointwise(weight.reshape(o, c // groups, 1, 1), bias, groups)
    packed = PackedGemm(weights_at=0, group_floats=group_floats, tiles_at=0, ntiles=len(table), groups=groups,
                        group_in=c // groups, group_out=o // groups)
    itab = np.concatenate([table.ravel(), np.arange(c)])  # the tile table, then the input channel offsets

    def record(src, dst):
        return Gemm(packed, src, dst, channel_offsets_at=table.size, relu=relu)

    return _each_image(x, (o, h, w), panels, record, itab)


def depthwise_conv2d(x, weight, bias=None, *, stride=1, padding=1, relu=False) -> np.ndarray:
    """3x3 depthwise conv, padding 1: x (N, C, H, W), weight (C, 1, 3, 3), bias (C,) -> (N, C, H', W');
    ``per_channel.depthwise3x3``."""
    x = _batch(x, "depthwise_conv2d")
    c = x.shape[1]
    weight = np.asarray(weight, np.float32)
    if weight.shape != (c, 1, 3, 3) or padding != 1:
        raise ValueError("depthwise_conv2d: the kernel is 3x3 with padding 1, one filter per channel "
                         f"(weight ({c}, 1, 3, 3)); got weight {weight.shape}, padding {padding}")
    bias = np.zeros(c, np.float32) if bias is None else np.asarray(bias, np.float32)

    def record(src, dst):
        return Depthwise(src, dst, channels=padded(c), stride=stride, relu=relu, weights_at=0)

    return _each_image(x, _window_output(x, stride), pack_depthwise(weight, bias), record)


def avg_pool2d(x, kernel_size=3, stride=None, padding=1, count_include_pad=True) -> np.ndarray:
    """3x3 average pool, padding 1, the zeros of the padding counted: (N, C, H, W) -> (N, C, H', W');
    ``per_channel.avg_pool3x3`` (V1's stride-2 shortcut)."""
    x = _batch(x, "avg_pool2d")
    stride = kernel_size if stride is None else stride
    if (kernel_size, padding, count_include_pad) != (3, 1, True):
        raise ValueError("avg_pool2d: the kernel is a 3x3 window with padding 1, the padding counted")
    channels = padded(x.shape[1])
    return _each_image(x, _window_output(x, stride), np.zeros(16, np.float32),
                       lambda src, dst: AvgPool(src, dst, channels=channels, stride=stride))


def _window_output(x: np.ndarray, stride: int) -> tuple[int, int, int]:
    """(C, H', W') of a 3x3, padding 1 window op on ``x`` (N, C, H, W) with ``stride``."""
    _, c, h, w = x.shape
    return c, (h - 1) // stride + 1, (w - 1) // stride + 1


def _each_image(x: np.ndarray, out_shape: tuple[int, int, int], wts: np.ndarray, record,
                itab: np.ndarray | None = None) -> np.ndarray:
    """Run the step ``record(src, dst)`` on each image of ``x`` (N, C, H, W): the image copied into a
    padded NHWC buffer, the output (C', H', W') of ``out_shape`` read back from its own."""
    n, c, h, w = x.shape
    co, ho, wo = out_shape
    out = np.empty((n, co, ho, wo), np.float32)
    for i in range(n):
        layout = Workspace()
        src = Buffer(layout.add(to_padded_nhwc(x[i])), h, w, padded(c))
        dst = layout.buffer(co, ho, wo)
        ws = layout.array()
        _run(record(src, dst), ws, wts, itab)
        out[i] = from_padded_nhwc(ws[dst.offset:], ho, wo, dst.channel_stride, co)
    return out


def global_avg_pool(x) -> np.ndarray:
    """Mean over each channel's pixels: (N, C, H, W) -> (N, C); ``per_channel.global_pool``."""
    x = _batch(x, "global_avg_pool")
    n, c, h, w = x.shape
    out = np.empty((n, c), np.float32)
    for i in range(n):
        layout = Workspace()
        src = Buffer(layout.add(to_padded_nhwc(x[i])), h, w, padded(c))
        pooled = np.zeros(padded(c), np.float32)
        _run(GlobalPool(src, channels=padded(c)), layout.array(), np.zeros(16, np.float32), pooled=pooled)
        out[i] = pooled[:c]
    return out


def stem_conv_max_pool(x, weight, bias=None) -> np.ndarray:
    """The stem, fused: ``max_pool2d(conv2d(x, weight, bias, stride=2, padding=1, relu=True), 3, 2, 1)``;
    x (N, C, H, W), weight (O, C, 3, 3) -> (N, O, H'', W''); ``stem.phase_input`` then ``stem.stem_pool``."""
    x = _batch(x, "stem_conv_max_pool")
    n, c, h, w = x.shape
    weight = np.asarray(weight, np.float32)
    o = weight.shape[0]
    if weight.shape != (o, c, 3, 3):
        raise ValueError(f"stem_conv_max_pool: the stem is a dense 3x3 conv, weight ({o}, {c}, 3, 3); "
                         f"got {weight.shape}")
    bias = np.zeros(o, np.float32) if bias is None else np.asarray(bias, np.float32)
    geometry = stem_geometry(h, w)
    hp, wp, q = geometry.pooled_h, geometry.pooled_w, geometry.q
    out = np.empty((n, o, hp, wp), np.float32)
    for i in range(n):
        layout = Workspace()
        rows = layout.add(np.zeros(c * (h + 2) * 4 * q, np.float32))  # the input split by column phase
        dst = layout.buffer(o, hp, wp)
        ws = layout.array()
        _run(PhaseInput(rows_at=rows, phase_row=q), ws, np.zeros(16, np.float32), image=x[i])
        _run(StemPool(rows_at=rows, phase_row=q, image_height=h, image_width=w, image_channels=c, dst=dst,
                      weights_at=0, out_channels=o), ws, pack_stem(weight, bias))
        out[i] = from_padded_nhwc(ws[dst.offset:], hp, wp, dst.channel_stride, o)
    return out


def linear(x, weight, bias=None) -> np.ndarray:
    """The classifier: x (N, F) @ weight.T (weight (K, F)) + bias (K,) -> (N, K), the images as the
    GEMM's rows (``gemm.classifier_part``)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"linear: expected (N, features), got shape {x.shape}")
    n, features = x.shape
    weight = np.asarray(weight, np.float32)
    classes = weight.shape[0]
    bias = np.zeros(classes, np.float32) if bias is None else np.asarray(bias, np.float32)
    panels, table, group_floats = pack_gemm(np.ascontiguousarray(weight.T)[None], bias)
    itab = np.concatenate([table.ravel(), np.arange(features)]).astype(np.int64)
    packed = PackedGemm(weights_at=0, group_floats=group_floats, tiles_at=0, ntiles=len(table), groups=1,
                        group_in=features, group_out=classes)
    step = pack_steps([Classifier(packed, channel_offsets_at=table.size)])[0]
    rows = np.zeros((n, padded(features)), np.float32)
    rows[:, :features] = x
    logits = np.zeros((n, classes), np.float32)
    classifier_part(kernel_table(), rows, panels, itab, step, logits, np.int64(0), np.int64(1))
    return logits
