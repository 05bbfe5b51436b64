"""The ``@cuda.jit`` kernels: what one GPU thread computes (launched through ``kernels.cuda.launches``)."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..channel_map import NO_PERIOD
from .geometry import (
    A_LOADS,
    B_LOADS,
    CONV_CHANNELS,
    MICRO,
    SIDE_CARRY,
    SIDE_RESIDUAL,
    THREADS,
    THREADS_X,
    THREADS_Y,
    TILE_K,
    TILE_M,
    TILE_N,
)

# --------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------


@cuda.jit(device=True)
def _mapped(i, offset, step, period, jump):
    """ChannelMap.__call__ on the device."""
    return offset + step * (i % period) + jump * (i // period)


@cuda.jit
def conv2d_kernel(x, w, bias, out, stride, padding, groups, relu):
    """out[n, o, oy, ox] = relu?(sum_{c, ky, kx} x[n, c0 + c, oy*s - p + ky, ox*s - p + kx] * w[o, c, ky, kx]
    + bias[o]), c0 = the first input channel of o's group.

    x (N, C, H, W), w (O, C // groups, KH, KW), bias (O,), out (N, O, Ho, Wo). One thread per output
    pixel and CONV_CHANNELS output channels of one group: each input value it loads serves
    CONV_CHANNELS multiply-adds. blockIdx.x = (image, channel block), the threads of a block take
    consecutive pixels, so they share every weight (a broadcast) and read neighbouring inputs.
    Only the stem (3 -> 24 channels) uses it.
    """
    acc = cuda.local.array(CONV_CHANNELS, np.float32)
    out_channels, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    per_group = out_channels // groups
    blocks_per_group = (per_group + CONV_CHANNELS - 1) // CONV_CHANNELS
    n, block = cuda.blockIdx.x // (groups * blocks_per_group), cuda.blockIdx.x % (groups * blocks_per_group)
    group = block // blocks_per_group
    first_out = group * per_group + (block % blocks_per_group) * CONV_CHANNELS
    end_out = (group + 1) * per_group
    pixel = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if pixel >= out_h * out_w:
        return
    oy, ox = pixel // out_w, pixel % out_w
    in_per_group = w.shape[1]
    first_in = group * in_per_group
    for r in range(CONV_CHANNELS):
        acc[r] = np.float32(0.0)
    for c in range(in_per_group):
        for ky in range(w.shape[2]):
            iy = oy * stride - padding + ky
            if 0 <= iy < x.shape[2]:
                for kx in range(w.shape[3]):
                    ix = ox * stride - padding + kx
                    if 0 <= ix < x.shape[3]:
                        v = x[n, first_in + c, iy, ix]
                        for r in range(CONV_CHANNELS):
                            if first_out + r < end_out:
                                acc[r] += v * w[first_out + r, c, ky, kx]
    for r in range(CONV_CHANNELS):
        o = first_out + r
        if o < end_out:
            v = acc[r] + bias[o]
            if relu and v < np.float32(0.0):
                v = np.float32(0.0)
            out[n, o, oy, ox] = v


@cuda.jit(device=True)
def _plane_pixel(channels, out_h, out_w):
    """This thread's output element in the per-channel kernels' launch shape (one block row per
    (n, c) plane, one thread per output pixel): (n, c, oy, ox, inside the plane?)."""
    plane = cuda.blockIdx.x
    pixel = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    return plane // channels, plane % channels, pixel // out_w, pixel % out_w, pixel < out_h * out_w


@cuda.jit
def depthwise_kernel(x, w, bias, out, stride, padding, relu):
    """out[n, c, oy, ox] = relu?(sum_{ky, kx} x[n, c, oy*s - p + ky, ox*s - p + kx] * w[c, 0, ky, kx] + bias[c]).

    x (N, C, H, W), w (C, 1, KH, KW), bias (C,), out (N, C, Ho, Wo). One thread per output element,
    one block row per (n, c) plane: the block's threads share the channel's 9 weights and read
    overlapping input rows, which the cache serves.
    """
    channels, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    n, c, oy, ox, inside = _plane_pixel(channels, out_h, out_w)
    if not inside:
        return
    acc = np.float32(0.0)
    for ky in range(w.shape[2]):
        iy = oy * stride - padding + ky
        if 0 <= iy < x.shape[2]:
            for kx in range(w.shape[3]):
                ix = ox * stride - padding + kx
                if 0 <= ix < x.shape[3]:
                    acc += x[n, c, iy, ix] * w[c, 0, ky, kx]
    acc += bias[c]
    if relu and acc < np.float32(0.0):
        acc = np.float32(0.0)
    out[n, c, oy, ox] = acc


@cuda.jit
def pointwise_kernel(
    x, wt, bias, out, side, groups, relu,
    in_offset, in_step, in_period, in_jump,
    out_offset, out_step, out_period, out_jump,
    side_mode, side_offset, side_step, carry_offset, carry_step,
):
    """A 1x1 (grouped) convolution as a tiled matrix product, with a fused epilogue.

    Shapes: x (N, Cx, P) with P = H*W pixels; wt (K, O) = the weight transposed, K = input
    channels per group (``wt[k, o] = weight[o, k, 0, 0]``); bias (O,); out (N, Co, P); side
    (N, Cs, P) or any array when ``side_mode == SIDE_NONE``.

    Matrix view: the columns are the N*P (image, pixel) pairs; group g's output row o
    (g*O/G <= o < (g+1)*O/G) is ``sum_k wt[k, o] * x[n, in(g*K + k), p]`` with
    ``in = ChannelMap(in_*)``: an affine map (a split half) or a permutation (a V1 shuffle read
    back). An affine map (``in_period == NO_PERIOD``, the same for every thread, so the branch
    never diverges) skips the division. Grid: blockIdx.x = column tile, blockIdx.y = row tile
    within the group, blockIdx.z = group.

    Each step loads a TILE_K x TILE_M slice of wt and a TILE_K x TILE_N slice of x into shared
    memory (consecutive threads load consecutive addresses, for both), then every thread adds
    TILE_K rank-1 updates to its MICRO x MICRO accumulators (kept in registers).

    Epilogue, per output (o, column = (n, p)), dst = ChannelMap(out_*)(o):
        v = acc + bias[o];  v += side[n, dst, p] if SIDE_RESIDUAL;  v = max(v, 0) if relu
        out[n, dst, p] = v
        if SIDE_CARRY: out[n, carry(o), p] = side[n, side_map(o), p]
    The carry moves what a V2 unit concatenates beside its branch (the half of its input that skips
    the branch, or a stride-2 unit's projection) to its final (concatenated, shuffled) place, in
    the same pass that stores the branch: the kernel that produces a unit's output writes all of it.
    """
    a_tile = cuda.shared.array((TILE_K, TILE_M), np.float32)
    b_tile = cuda.shared.array((TILE_K, TILE_N), np.float32)
    acc = cuda.local.array((MICRO, MICRO), np.float32)
    a_reg = cuda.local.array(MICRO, np.float32)
    b_reg = cuda.local.array(MICRO, np.float32)

    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * THREADS_X + tx
    group = cuda.blockIdx.z
    k_size = wt.shape[0]  # input channels per group
    rows_per_group = wt.shape[1] // groups
    first_row = group * rows_per_group + cuda.blockIdx.y * TILE_M
    end_row = (group + 1) * rows_per_group
    pixels = x.shape[2]
    columns = x.shape[0] * pixels
    first_col = cuda.blockIdx.x * TILE_N
    first_k = group * k_size

    # What this thread loads each step: weight row load_row, and column load_col of x,
    # split into (image, pixel) here once rather than at every step.
    load_row = first_row + tid % TILE_M
    row_ok = load_row < end_row
    load_col = first_col + tid % TILE_N
    col_ok = load_col < columns
    load_n = load_col // pixels
    load_p = load_col - load_n * pixels

    for i in range(MICRO):
        for j in range(MICRO):
            acc[i, j] = np.float32(0.0)

    for k0 in range(0, k_size, TILE_K):
        for s in range(A_LOADS):
            kk = tid // TILE_M + s * (THREADS // TILE_M)
            k = k0 + kk
            if row_ok and k < k_size:
                a_tile[kk, tid % TILE_M] = wt[k, load_row]
            else:
                a_tile[kk, tid % TILE_M] = np.float32(0.0)
        for s in range(B_LOADS):
            kk = tid // TILE_N + s * (THREADS // TILE_N)
            k = k0 + kk
            if col_ok and k < k_size:
                if in_period == NO_PERIOD:
                    channel = in_offset + in_step * (first_k + k)
                else:
                    channel = _mapped(first_k + k, in_offset, in_step, in_period, in_jump)
                b_tile[kk, tid % TILE_N] = x[load_n, channel, load_p]
            else:
                b_tile[kk, tid % TILE_N] = np.float32(0.0)
        cuda.syncthreads()
        for kk in range(min(TILE_K, k_size - k0)):  # the last step may be a partial one
            for i in range(MICRO):
                a_reg[i] = a_tile[kk, ty + THREADS_Y * i]
            for j in range(MICRO):
                b_reg[j] = b_tile[kk, tx + THREADS_X * j]
            for i in range(MICRO):
                for j in range(MICRO):
                    acc[i, j] += a_reg[i] * b_reg[j]
        cuda.syncthreads()

    # Epilogue. Split this thread's MICRO columns into (image, pixel) once, not once per row.
    out_n = cuda.local.array(MICRO, np.int64)
    out_p = cuda.local.array(MICRO, np.int64)
    for j in range(MICRO):
        col = first_col + tx + THREADS_X * j
        out_n[j] = col // pixels if col < columns else -1  # -1: past the last column
        out_p[j] = col - (col // pixels) * pixels
    for i in range(MICRO):
        row = first_row + ty + THREADS_Y * i
        if row < end_row:
            b = bias[row]
            dst = _mapped(row, out_offset, out_step, out_period, out_jump)
            for j in range(MICRO):
                n = out_n[j]
                if n >= 0:
                    p = out_p[j]
                    v = acc[i, j] + b
                    if side_mode == SIDE_RESIDUAL:
                        v += side[n, dst, p]
                    if relu and v < np.float32(0.0):
                        v = np.float32(0.0)
                    out[n, dst, p] = v
                    if side_mode == SIDE_CARRY:
                        out[n, carry_offset + carry_step * row, p] = side[n, side_offset + side_step * row, p]


@cuda.jit
def max_pool_kernel(x, out, kernel, stride, padding):
    """out[n, c, oy, ox] = max of the kernel x kernel window at (oy*s - p, ox*s - p); taps in the
    padding are skipped, which is padding with -inf. One thread per output element."""
    channels, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    n, c, oy, ox, inside = _plane_pixel(channels, out_h, out_w)
    if not inside:
        return
    best = np.float32(-math.inf)
    for ky in range(kernel):
        iy = oy * stride - padding + ky
        if 0 <= iy < x.shape[2]:
            for kx in range(kernel):
                ix = ox * stride - padding + kx
                if 0 <= ix < x.shape[3]:
                    v = x[n, c, iy, ix]
                    if v > best:
                        best = v
    out[n, c, oy, ox] = best


@cuda.jit
def avg_pool_kernel(x, out, kernel, stride, padding, count_include_pad, out_offset):
    """out[n, out_offset + c, oy, ox] = mean of x[n, c]'s window at (oy*s - p, ox*s - p), padding
    zeros counted in the divisor when ``count_include_pad``. ``out`` may have more channels than
    ``x``: ShuffleNet V1's stride-2 unit stores its pooled shortcut straight into channels
    [0, C) of the unit's output. One thread per output element."""
    channels, out_h, out_w = x.shape[1], out.shape[2], out.shape[3]
    n, c, oy, ox, inside = _plane_pixel(channels, out_h, out_w)
    if not inside:
        return
    total = np.float32(0.0)
    count = 0
    for ky in range(kernel):
        iy = oy * stride - padding + ky
        if 0 <= iy < x.shape[2]:
            for kx in range(kernel):
                ix = ox * stride - padding + kx
                if 0 <= ix < x.shape[3]:
                    total += x[n, c, iy, ix]
                    count += 1
    if count_include_pad:
        count = kernel * kernel
    out[n, out_offset + c, oy, ox] = total / np.float32(count)


@cuda.jit
def global_avg_pool_kernel(x, out):
    """out[n, c] = mean over p of x[n, c, p]. x (N, C, P), out (N, C); one thread per (n, c)."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    channels, pixels = x.shape[1], x.shape[2]
    if i >= x.shape[0] * channels:
        return
    n, c = i // channels, i % channels
    total = np.float32(0.0)
    for p in range(pixels):
        total += x[n, c, p]
    out[n, c] = total / np.float32(pixels)
