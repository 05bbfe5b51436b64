"""numba.cuda kernels for every op of a ShuffleNet: the GPU twins of ``kernels.reference``.

Each op comes in three layers, so that it can be read, tested and run:

* a ``@cuda.jit`` **kernel** (``*_kernel``): what one GPU thread computes;
* a **launch factory** (``*_launch``): picks the grid and block for device arrays and returns a
  :class:`Launch`, a kernel with all its arguments bound. ``npshuffle.backend_cuda`` builds the
  whole network as a list of these once per input shape and then just calls them;
* a **host launcher** with the same name and shape contract as its ``kernels.reference`` twin
  (``conv2d``, ``depthwise_conv2d``, ``pointwise_conv2d``, ``max_pool2d``, ``avg_pool2d``,
  ``global_avg_pool``, ``linear``): NumPy in, NumPy out, for tests. Stride and padding are ints here
  (ShuffleNet only uses square ones), and the output is always float32.

Layout: NCHW, as in the reference. Within one (image, channel) plane the pixels are contiguous, so
the threads of a warp, which take consecutive pixels, load and store consecutive addresses
(coalesced) in every kernel. The 1x1 convolutions, which hold almost all of ShuffleNet's
multiply-adds, do not care about the image boundary: :func:`pointwise_kernel` treats every
(image, pixel) pair of the batch as one column of a matrix product and splits a column number into
(image, pixel) once per thread. Channel split, concat and shuffle only permute channels, so they
are index arithmetic on the channel number (see :class:`ChannelMap`), done where a kernel loads its
input or stores its output: no kernel ever just copies data.

Kernels:

==========================  ===================================================================
``conv2d_kernel``           dense/grouped KxK conv (the stem), one thread per output pixel and
                            8 output channels
``depthwise_kernel``        depthwise KxK conv (ShuffleNet: 3x3), one thread per output element
``pointwise_kernel``        1x1 (grouped) conv as a shared-memory tiled matrix product, with a
                            fused epilogue: + bias, [+ residual], [ReLU], store to a mapped
                            channel, [carry the untouched half of a V2 split to its slot]
``max_pool_kernel``         max pool (padding never wins), one thread per output element
``avg_pool_kernel``         avg pool (count_include_pad either way), can store into a channel
                            slice of a wider tensor (ShuffleNet V1's stride-2 concat)
``global_avg_pool_kernel``  mean over the pixels, one thread per (image, channel)
==========================  ===================================================================

The classifier (``linear``) is :func:`pointwise_kernel` on a 1x1 "image" per sample.

Every kernel computes in float32: constants are ``np.float32`` so that nothing is promoted to
float64 (which GPUs run many times slower). Plain FMA on CUDA cores, no tensor cores (TF32 would
round the inputs to 10 mantissa bits and lose the 1e-4 parity with the NumPy reference).

Why NCHW rather than NHWC: the 1x1 convs read a TILE_K x TILE_N slice (channels x pixels) of the
input per step, and in NCHW each of its rows is contiguous pixels, so loads are coalesced and so
are the stores of every output row; depthwise convs and pools run on whole planes, which NCHW
keeps contiguous; and the batch arrives and the reference works in NCHW, so nothing is transposed.
"""

from __future__ import annotations

import math

import numpy as np
from numba import config as _numba_config
from numba import cuda

from .channel_map import IDENTITY, NO_PERIOD, ChannelMap, shuffle_destination

SIMULATOR = bool(getattr(_numba_config, "ENABLE_CUDASIM", 0))  # numba's CUDA simulator (no GPU)

# A kernel that *stores* channel k at shuffle_map(...)(k) has shuffled its output
# (kernels.channel_map.shuffle_destination, under the name this module has always used)
shuffle_map = shuffle_destination


def _restore_numpy_row_stack() -> None:
    """numba-cuda <= 0.30.4 registers an overload for ``np.row_stack``, an alias NumPy 2.5 removed;
    without it the first kernel compile fails with "module 'numpy' has no attribute 'row_stack'".
    Restoring the alias (it always meant np.vstack) lets that combination work. Called when the
    first launch is prepared (:class:`Launch`), not at import: importing this module changes nothing."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


__all__ = [
    "ChannelMap",
    "CudaGraph",
    "GraphUnavailable",
    "Launch",
    "avg_pool_launch",
    "conv2d_launch",
    "depthwise_launch",
    "global_avg_pool_launch",
    "max_pool_launch",
    "pointwise_launch",
    "avg_pool2d",
    "conv2d",
    "depthwise_conv2d",
    "global_avg_pool",
    "linear",
    "max_pool2d",
    "pointwise_conv2d",
    "shuffle_map",
]

# --------------------------------------------------------------------------
# Launch geometry
# --------------------------------------------------------------------------

# Pointwise (1x1) conv = matrix product out[o, col] = sum_k w[o, k] * x[k, col]. A block of
# 16 x 16 threads computes a TILE_M x TILE_N tile of out; each thread a MICRO x MICRO piece of it,
# rows ty, ty + 16, ty + 32, ty + 48 and columns tx, tx + 16, ... (so that neighbouring threads
# store neighbouring columns). The K dimension is walked TILE_K channels at a time through
# shared memory: each weight read from global memory serves TILE_N columns and each activation
# TILE_M output channels, and each value a thread reads from shared memory serves MICRO FMAs.
THREADS_X = 16
THREADS_Y = 16
THREADS = THREADS_X * THREADS_Y
MICRO = 4
TILE_M = THREADS_Y * MICRO  # 64 output channels per block
TILE_N = THREADS_X * MICRO  # 64 columns (image, pixel) per block
TILE_K = 16  # input channels per shared-memory step
A_LOADS = TILE_K * TILE_M // THREADS  # weights each thread loads per step (4)
B_LOADS = TILE_K * TILE_N // THREADS  # activations each thread loads per step (4)

# Per-element kernels: blocks of up to 128 threads along one (image, channel) plane's pixels;
# blockIdx.x picks the plane (that grid axis has room for ~2e9 of them), blockIdx.y the pixel block.
PLANE_THREADS = 128
# conv2d_kernel: output channels per thread
CONV_CHANNELS = 8

# pointwise_kernel's side input
SIDE_NONE = 0  # none
SIDE_RESIDUAL = 1  # v += side[n, dst, p] before the ReLU (ShuffleNet V1 stride 1)
SIDE_CARRY = 2  # also copy side[n, side_map(o), p] to out[n, carry_map(o), p] (ShuffleNet V2 stride 1)

def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _plane_geometry(planes: int, pixels: int) -> tuple[tuple[int, int], int]:
    """(grid, block) for one thread per output pixel, blockIdx.x = plane."""
    threads = min(PLANE_THREADS, 32 * _cdiv(pixels, 32))
    blocks = _cdiv(pixels, threads)
    if blocks > 65535:  # CUDA's limit for gridDim.y
        raise ValueError(f"{pixels} output pixels per plane is more than this launch layout handles")
    return (planes, blocks), threads


# Channel maps (split, concat and shuffle as index arithmetic): kernels.channel_map.ChannelMap,
# applied on the device by _mapped.


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
    The carry moves the half of a V2 unit's input that skips the branch to its final (concatenated,
    shuffled) place, in the same pass that stores the branch: the kernel that produces a unit's
    output writes all of it.
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


# --------------------------------------------------------------------------
# Launch factories (device arrays in, nothing copied)
# --------------------------------------------------------------------------


class Launch:
    """A kernel with its grid, block and arguments bound: ``launch()`` enqueues it on its stream
    (the default stream unless :meth:`set_stream` changed it) and returns at once. A backend builds
    its network as a list of these, once. ``name`` is the kernel kind ("pointwise", ...);
    ``label`` a free-form description a backend may set (the layer, its shape) for profiles."""

    __slots__ = ("kernel", "grid", "block", "args", "name", "label", "stream", "configured")

    def __init__(self, kernel, grid, block, args: tuple, name: str = ""):
        _restore_numpy_row_stack()
        self.kernel, self.grid, self.block, self.args, self.name = kernel, grid, block, args, name
        self.label = name
        self.set_stream(0)

    def set_stream(self, stream) -> Launch:
        """Launch on ``stream`` (a numba stream, or 0 for the default one) from now on."""
        self.stream = stream
        configured = self.kernel[self.grid, self.block, stream]
        # numba's simulator configures the kernel object itself (and returns it), so a configured
        # kernel cannot be kept there: configure it at each call instead
        self.configured = None if configured is self.kernel else configured
        return self

    def __call__(self) -> None:
        if self.configured is None:
            self.kernel[self.grid, self.block, self.stream](*self.args)
        else:
            self.configured(*self.args)

    def __repr__(self) -> str:
        return f"Launch({self.label}, grid={self.grid}, block={self.block})"


class GraphUnavailable(RuntimeError):
    """Raised by :class:`CudaGraph` where a CUDA graph cannot be built (the simulator, no cuda.core,
    a driver that refuses the capture); the message says why. Callers fall back to launches."""


class CudaGraph:
    """A list of :class:`Launch` es captured once into a CUDA graph and replayed by ``launch()`` on
    ``stream`` (a numba stream) with a single driver call.

    Why: numba dispatches each kernel launch through Python (argument typing and marshalling, a
    launch-config object, then the driver), tens of microseconds per launch; a ShuffleNet is ~60
    launches, so at small batches the host, not the GPU, sets the pace. A graph is captured with
    the launches' own arguments (device pointers, shapes, scalars), so a replay computes exactly
    what the launches compute, on the same buffers; the launches (and so their arrays) are kept
    alive with the graph.

    Capture uses cuda.core (a dependency of numba-cuda >= 0.2x), the path numba-cuda documents and
    tests: a ``GraphBuilder`` passed as a kernel's stream (``kernel[grid, block, builder](...)``).
    The kernels must already be compiled (run the launches once first): capture records, it does
    not compile.
    """

    def __init__(self, launches, stream):
        if SIMULATOR:
            raise GraphUnavailable("numba's CUDA simulator has no graphs")
        try:
            from cuda.core import Device, Stream
        except ImportError as exc:
            raise GraphUnavailable(f"cuda.core is not importable ({exc})") from None
        try:
            device = Device(cuda.get_current_device().id)
            device.set_current()  # the primary context, which numba uses too
            builder = device.create_graph_builder()
            try:
                builder.begin_building(mode="relaxed")
            except TypeError:  # an older cuda.core without the mode argument
                builder.begin_building()
            try:
                for launch in launches:
                    launch.kernel[launch.grid, launch.block, builder](*launch.args)
            finally:
                builder.end_building()
            self.graph = builder.complete()
            handle = int(stream.handle)
            self.stream = Stream.from_handle(handle)
        except Exception as exc:
            raise GraphUnavailable(f"graph capture failed: {type(exc).__name__}: {exc}") from exc
        try:
            self.graph.upload(self.stream)  # optional: the first launch would upload it anyway
        except Exception:
            pass
        self.launches = list(launches)  # keeps every argument (device array) alive

    def launch(self) -> None:
        self.graph.launch(self.stream)

    def __len__(self) -> int:
        return len(self.launches)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


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
        tuple(out.shape) == (n, o, _conv_out(h, kh, stride, padding), _conv_out(width, kw, stride, padding)),
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
        tuple(out.shape) == (n, c, _conv_out(h, kh, stride, padding), _conv_out(width, kw, stride, padding)),
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
        tuple(out.shape) == (n, c, _conv_out(h, kernel, stride, padding), _conv_out(w, kernel, stride, padding)),
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
    ho, wo = _conv_out(h, kernel, stride, padding), _conv_out(w, kernel, stride, padding)
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


# --------------------------------------------------------------------------
# Host launchers: the same contracts as kernels.reference (NumPy in, NumPy out)
# --------------------------------------------------------------------------


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _bias_or_zeros(bias, channels: int):
    return cuda.to_device(np.zeros(channels, np.float32) if bias is None else _f32(bias))


def conv2d(x, weight, bias=None, *, stride: int = 1, padding: int = 0, groups: int = 1, relu: bool = False):
    """Twin of ``reference.conv2d`` (int stride and padding)."""
    x, weight = _f32(x), _f32(weight)
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    out = cuda.device_array((n, o, _conv_out(h, kh, stride, padding), _conv_out(w, kw, stride, padding)), np.float32)
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
    out = cuda.device_array((n, c, _conv_out(h, kh, stride, padding), _conv_out(w, kw, stride, padding)), np.float32)
    launch = depthwise_launch(
        cuda.to_device(x), cuda.to_device(weight), _bias_or_zeros(bias, c), out,
        stride=stride, padding=padding, relu=relu,
    )
    launch()
    return out.copy_to_host()


def pack_pointwise_weight(weight) -> np.ndarray:
    """(O, K, 1, 1) or (O, K) -> the (K, O) layout :func:`pointwise_kernel` reads (contiguous)."""
    weight = _f32(weight)
    return np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T)


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
    ho, wo = _conv_out(h, kernel_size, stride, padding), _conv_out(w, kernel_size, stride, padding)
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
    ho, wo = _conv_out(h, kernel_size, stride, padding), _conv_out(w, kernel_size, stride, padding)
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
