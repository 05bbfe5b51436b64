"""Plain-NumPy reference implementation of every op a ShuffleNet V1/V2 needs.

Every activation is a float32 array in NCHW layout, ``(batch, channels, height,
width)``, C-contiguous, so the last (width) index moves fastest; every function
here returns float32.  These functions are the *specification* the fast
Numba/CUDA kernels are tested against, so they favour clarity over speed while
staying vectorised enough (im2col + one matrix product per group, one shifted
view per kernel tap) to run a 224x224 ShuffleNet in well under a second.  How
the network maps onto them: the stem is a dense 3x3 stride-2 ``conv2d`` (BN
folded into weight and bias, ``relu=True``) and a 3x3/2 ``max_pool2d``.  A
ShuffleNet V1 unit is a grouped 1x1 ``pointwise_conv2d`` (a grouped conv has
1/G of the parameters of a dense one, ``O * C/G * KH * KW`` instead of
``O * C * KH * KW``, because each output channel only sees the C/G input
channels of its own group), a ``channel_shuffle`` so that the next grouped
conv mixes information across groups, a 3x3 ``depthwise_conv2d`` (groups == C),
a second grouped 1x1, then a residual add or, at stride 2, a
``concat_channels`` with an ``avg_pool2d(3, 2, 1)`` shortcut.  A ShuffleNet V2
unit ``split_channels`` its input, sends one half through 1x1 -> depthwise
3x3 -> 1x1 (at stride 2 both branches take the full input instead), joins the
branches with ``concat_channels`` and applies ``channel_shuffle`` with 2
groups.  V2 adds a final 1x1 conv; both networks end with ``global_avg_pool``,
``linear`` and ``softmax``.  ``batch_norm`` and ``bias_relu`` are the unfolded
BN and the fused bias+ReLU epilogue that fast kernels must reproduce.

In ``image.py``, single-image forms of the window ops and convs
(``*_image``, ``window_columns``) compute the same for one (C, H, W) image
into a caller's array, without validation: npshuffle's NumPy backend runs on
them (a batch-1 forward in a few milliseconds instead of tens), and each is
tested against the batched definition it speeds up.

Files: ``convs.py`` (conv2d, pointwise_conv2d, depthwise_conv2d, bias_relu, batch_norm),
``channels.py`` (channel_shuffle, shuffle_permutation, split_channels, concat_channels),
``pooling.py`` (max_pool2d, avg_pool2d, global_avg_pool), ``classifier.py`` (linear, softmax),
``image.py`` (the single-image forms); ``_args.py`` checks the arguments.
"""

from __future__ import annotations

from ..channel_map import SHUFFLE_CONVENTIONS, SPLIT_CONVENTIONS
from .channels import channel_shuffle, concat_channels, shuffle_permutation, split_channels
from .classifier import linear, softmax
from .convs import batch_norm, bias_relu, conv2d, depthwise_conv2d, pointwise_conv2d
from .image import (
    avg_pool_image,
    bias_relu_,
    conv_image,
    depthwise_conv_image,
    max_pool_image,
    pointwise_conv_image,
    tap_ranges,
    window_columns,
)
from .pooling import avg_pool2d, global_avg_pool, max_pool2d

__all__ = [
    "SHUFFLE_CONVENTIONS",
    "SPLIT_CONVENTIONS",
    "avg_pool2d",
    "avg_pool_image",
    "batch_norm",
    "bias_relu",
    "bias_relu_",
    "channel_shuffle",
    "concat_channels",
    "conv2d",
    "conv_image",
    "depthwise_conv2d",
    "depthwise_conv_image",
    "global_avg_pool",
    "linear",
    "max_pool2d",
    "max_pool_image",
    "pointwise_conv2d",
    "pointwise_conv_image",
    "shuffle_permutation",
    "softmax",
    "split_channels",
    "tap_ranges",
    "window_columns",
]
