"""Host launchers: the same names and shape contracts as their ``kernels.reference`` twins
(NumPy in, NumPy out), for tests. Stride and padding are ints here (ShuffleNet only uses square
ones), and the output is always float32."""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..channel_map import IDENTITY, ChannelMap
from ..sizes import output_size
from .launches import (
    avg_pool_launch,
    conv2d_launch,
    depthwise_launch,
    global_avg_pool_launch,
    max_pool_launch,
    pack_pointwise_weight,
    pointwise_launch,
)


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _bias_or_zeros(bias, channels: int):
    return cuda.to_device(np.zeros(channels, np.float32) if bias is None else _f32(bias))


def conv2d(x, weight, bias=None, *, stride: int = 1, padding: int = 0, groups: int = 1, relu: bool = False):
    """Twin of ``reference.conv2d`` (int stride and padding)."""
    x, weight = _f32(x), _f32(weight)
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    out = cuda.device_array((n, o, ho, wo), np.float32)
    launch = conv2d_launch(
        cuda.to_device(x), cuda.to_device(weight), _bias_or_zeros(bias, o), out,
        stride=stride, padding=padding, groups=groups, relu=relu,
    )
    launch()
    return out.copy_to_host()


def depthwise_conv2d(x, weight, bias=None, *, stride: int = 1, padding: int = 0, relu: bool = False):
    """Twin of ``reference.depthwise_conv2d`` (int stride and padding)."""
    x, weight = _f32(x), _f32(weight)
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    ho, wo = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    out = cuda.device_array((n, c, ho, wo), np.float32)
    launch = depthwise_launch(
        cuda.to_device(x), cuda.to_device(weight), _bias_or_zeros(bias, c), out,
        stride=stride, padding=padding, relu=relu,
    )
    launch()
    return out.copy_to_host()


def pointwise_conv2d(
    x, weight, bias=None, *,
    groups: int = 1,
    relu: bool = False,
    in_map: ChannelMap = IDENTITY,
    out_map: ChannelMap = IDENTITY,
    out_channels: int | None = None,
    residual=None,
    carry=None,
):
    """Twin of ``reference.pointwise_conv2d``; the keyword extras expose the fused epilogue.

    With the defaults: x (N, C, H, W), weight (O, C // groups, 1, 1) -> (N, O, H, W).
    ``in_map``: where the conv's input channel i is in x (x may have more channels).
    ``out_map`` / ``out_channels``: output channel o is stored at channel ``out_map(o)`` of a
    result with ``out_channels`` channels (default O); channels nobody writes are zero.
    ``residual`` (N, out_channels, H, W): added before the ReLU. ``carry = (side, side_map,
    carry_map)``: also copy ``side[:, side_map(o)]`` to ``result[:, carry_map(o)]``.
    """
    x = _f32(x)
    n, c, h, w = x.shape
    wt = pack_pointwise_weight(weight)
    o = wt.shape[1]
    out_channels = o if out_channels is None else out_channels
    out = cuda.to_device(np.zeros((n, out_channels, h * w), np.float32))
    side_args = {}
    if residual is not None:
        side_args["residual"] = cuda.to_device(_f32(residual).reshape(n, out_channels, h * w))
    if carry is not None:
        side, side_map, carry_map = carry
        side = _f32(side)
        side_args["carry"] = (cuda.to_device(side.reshape(n, side.shape[1], h * w)), side_map, carry_map)
    launch = pointwise_launch(
        cuda.to_device(x.reshape(n, c, h * w)), cuda.to_device(wt), _bias_or_zeros(bias, o), out,
        groups=groups, relu=relu, in_map=in_map, out_map=out_map, **side_args,
    )
    launch()
    return out.copy_to_host().reshape(n, out_channels, h, w)


def max_pool2d(x, kernel_size: int, stride: int | None = None, padding: int = 0):
    """Twin of ``reference.max_pool2d`` (int kernel, stride, padding)."""
    x = _f32(x)
    stride = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    ho, wo = output_size(h, kernel_size, stride, padding), output_size(w, kernel_size, stride, padding)
    out = cuda.device_array((n, c, ho, wo), np.float32)
    max_pool_launch(cuda.to_device(x), out, kernel=kernel_size, stride=stride, padding=padding)()
    return out.copy_to_host()


def avg_pool2d(x, kernel_size: int, stride: int | None = None, padding: int = 0, count_include_pad: bool = True,
               *, out_offset: int = 0, out_channels: int | None = None):
    """Twin of ``reference.avg_pool2d`` (int kernel, stride, padding). With ``out_offset`` /
    ``out_channels`` the pooled channels land at [out_offset, out_offset + C) of a wider result
    (other channels zero), as in ShuffleNet V1's stride-2 concat."""
    x = _f32(x)
    stride = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    ho, wo = output_size(h, kernel_size, stride, padding), output_size(w, kernel_size, stride, padding)
    out = cuda.to_device(np.zeros((n, c if out_channels is None else out_channels, ho, wo), np.float32))
    avg_pool_launch(
        cuda.to_device(x), out, kernel=kernel_size, stride=stride, padding=padding,
        count_include_pad=count_include_pad, out_offset=out_offset,
    )()
    return out.copy_to_host()


def global_avg_pool(x):
    """Twin of ``reference.global_avg_pool``: (N, C, H, W) -> (N, C)."""
    x = _f32(x)
    n, c, h, w = x.shape
    out = cuda.device_array((n, c), np.float32)
    global_avg_pool_launch(cuda.to_device(x.reshape(n, c, h * w)), out)()
    return out.copy_to_host()


def linear(x, weight, bias=None):
    """Twin of ``reference.linear``: x (N, F), weight (O, F) -> (N, O), run as a 1x1 conv on
    N one-pixel images (:func:`pointwise_kernel`)."""
    x, weight = _f32(x), _f32(weight)
    n, f = x.shape
    o = weight.shape[0]
    out = cuda.device_array((n, o, 1), np.float32)
    pointwise_launch(
        cuda.to_device(x.reshape(n, f, 1)), cuda.to_device(pack_pointwise_weight(weight)), _bias_or_zeros(bias, o), out,
    )()
    return out.copy_to_host().reshape(n, o)
