"""Launch factories: for device arrays, pick the grid and block of a kernel and bind its arguments
into a :class:`~kernels.cuda.graphs.Launch` (nothing is copied; ``npshuffle.backend_cuda`` builds the
whole network as a list of these once per input shape)."""

from __future__ import annotations

import numpy as np

from ..channel_map import IDENTITY, ChannelMap
from ..sizes import output_size
from .device import (
    avg_pool_kernel,
    conv2d_kernel,
    depthwise_kernel,
    global_avg_pool_kernel,
    max_pool_kernel,
    pointwise_kernel,
)
from .geometry import (
    CONV_CHANNELS,
    PLANE_THREADS,
    SIDE_CARRY,
    SIDE_NONE,
    SIDE_RESIDUAL,
    THREADS_X,
    THREADS_Y,
    TILE_M,
    TILE_N,
    _cdiv,
    _plane_geometry,
)
from .graphs import Launch


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def conv2d_launch(x, w, bias, out, *, stride: int = 1, padding: int = 0, groups: int = 1, relu: bool = False):
    """x (N, C, H, W), w (O, C // groups, KH, KW), bias (O,), out (N, O, Ho, Wo): all on the device."""
    n, c, h, width = x.shape
    o, cg, kh, kw = w.shape
    _check(
        c % groups == 0 and o % groups == 0 and cg == c // groups,
        f"conv2d: weight {w.shape} with groups={groups} does not fit input {x.shape}",
    )
    _check(
        tuple(out.shape) == (n, o, output_size(h, kh, stride, padding), output_size(width, kw, stride, padding)),
        f"conv2d: output shape {out.shape} does not fit input {x.shape} and weight {w.shape}",
    )
    blocks = groups * _cdiv(o // groups, CONV_CHANNELS)
    grid, block = _plane_geometry(n * blocks, out.shape[2] * out.shape[3])
    return Launch(conv2d_kernel, grid, block, (x, w, bias, out, stride, padding, groups, relu), "conv2d")


def depthwise_launch(x, w, bias, out, *, stride: int = 1, padding: int = 0, relu: bool = False):
    """x (N, C, H, W), w (C, 1, KH, KW), bias (C,), out (N, C, Ho, Wo): all on the device."""
    n, c, h, width = x.shape
    _check(w.shape[0] == c and w.shape[1] == 1, f"depthwise: weight {w.shape} does not fit input {x.shape}")
    kh, kw = w.shape[2], w.shape[3]
    _check(
        tuple(out.shape) == (n, c, output_size(h, kh, stride, padding), output_size(width, kw, stride, padding)),
        f"depthwise: output shape {out.shape} does not fit input {x.shape}",
    )
    grid, block = _plane_geometry(n * c, out.shape[2] * out.shape[3])
    return Launch(depthwise_kernel, grid, block, (x, w, bias, out, stride, padding, relu), "depthwise")


def pointwise_launch(
    x, wt, bias, out, *,
    groups: int = 1,
    relu: bool = False,
    in_map: ChannelMap = IDENTITY,
    out_map: ChannelMap = IDENTITY,
    residual=None,
    carry=None,
):
    """1x1 conv on the device: x (N, Cx, P), wt (K, O) (the weight transposed), bias (O,),
    out (N, Co, P).

    ``in_map`` says where input channel i (0 <= i < K * groups) is in x; ``out_map`` where output
    channel o goes in out. ``residual`` (an array
    like out) is added before the ReLU, read at the output's channel. ``carry = (side, side_map,
    carry_map)`` copies ``side[:, side_map(o)]`` to ``out[:, carry_map(o)]`` for each output
    channel o (both affine maps).
    """
    n, _, pixels = x.shape
    k_size, o = wt.shape
    _check(o % groups == 0, f"pointwise: {o} output channels are not divisible by groups={groups}")
    reach = int(np.max(in_map.indices(k_size * groups)))
    _check(reach < x.shape[1], f"pointwise: input channels up to {reach} do not fit x {x.shape}")
    _check(out.shape[0] == n and out.shape[2] == pixels, f"pointwise: out {out.shape} does not fit x {x.shape}")
    _check(int(np.max(out_map(np.arange(o)))) < out.shape[1], f"pointwise: output channels do not fit out {out.shape}")
    side, side_mode, side_map, carry_map = out, SIDE_NONE, IDENTITY, IDENTITY
    if residual is not None:
        _check(tuple(residual.shape) == tuple(out.shape), f"pointwise: residual {residual.shape} != out {out.shape}")
        side, side_mode = residual, SIDE_RESIDUAL
    elif carry is not None:
        side, side_map, carry_map = carry
        side_mode = SIDE_CARRY
        _check(side_map.is_affine and carry_map.is_affine, "pointwise: carry maps must be affine (offset + step * i)")
        _check(side.shape[0] == n and side.shape[2] == pixels, f"pointwise: carry {side.shape} does not fit {x.shape}")
        _check(
            side_map(o - 1) < side.shape[1] and carry_map(o - 1) < out.shape[1],
            f"pointwise: carry maps out of range for {side.shape} -> {out.shape}",
        )
    rows_per_group = o // groups
    grid = (_cdiv(n * pixels, TILE_N), _cdiv(rows_per_group, TILE_M), groups)
    args = (
        x, wt, bias, out, side, groups, relu,
        in_map.offset, in_map.step, in_map.period, in_map.jump,
        out_map.offset, out_map.step, out_map.period, out_map.jump,
        side_mode, side_map.offset, side_map.step, carry_map.offset, carry_map.step,
    )
    return Launch(pointwise_kernel, grid, (THREADS_X, THREADS_Y), args, "pointwise")


def max_pool_launch(x, out, *, kernel: int, stride: int, padding: int):
    n, c, h, w = x.shape
    _check(padding <= kernel // 2, f"max_pool: padding {padding} > kernel // 2")
    _check(
        tuple(out.shape) == (n, c, output_size(h, kernel, stride, padding), output_size(w, kernel, stride, padding)),
        f"max_pool: output {out.shape} does not fit input {x.shape}",
    )
    grid, block = _plane_geometry(n * c, out.shape[2] * out.shape[3])
    return Launch(max_pool_kernel, grid, block, (x, out, kernel, stride, padding), "max_pool")


def avg_pool_launch(
    x, out, *, kernel: int, stride: int, padding: int, count_include_pad: bool = True, out_offset: int = 0
):
    """Pool x (N, C, H, W) into channels [out_offset, out_offset + C) of out (N, Co, Ho, Wo)."""
    n, c, h, w = x.shape
    _check(padding <= kernel // 2, f"avg_pool: padding {padding} > kernel // 2")
    ho, wo = output_size(h, kernel, stride, padding), output_size(w, kernel, stride, padding)
    _check(
        out.shape[0] == n and out.shape[2:] == (ho, wo) and out_offset + c <= out.shape[1],
        f"avg_pool: output {out.shape} (from channel {out_offset}) does not fit input {x.shape}",
    )
    grid, block = _plane_geometry(n * c, ho * wo)
    args = (x, out, kernel, stride, padding, count_include_pad, out_offset)
    return Launch(avg_pool_kernel, grid, block, args, "avg_pool")


def global_avg_pool_launch(x, out):
    """x (N, C, P) -> out (N, C), on the device."""
    n, c, _ = x.shape
    _check(tuple(out.shape) == (n, c), f"global_avg_pool: out {out.shape} != {(n, c)}")
    return Launch(global_avg_pool_kernel, _cdiv(n * c, PLANE_THREADS), PLANE_THREADS, (x, out), "global_avg_pool")


def pack_pointwise_weight(weight) -> np.ndarray:
    """(O, K, 1, 1) or (O, K) -> the (K, O) layout :func:`pointwise_kernel` reads (contiguous)."""
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    return np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T)
