"""The NumPy backend: the lowered program (``npshuffle.lowering``) run op by op with NumPy.

``NumpyBackend().prepare(plan, weights)`` returns a runner, an NCHW float32 batch ``(N, 3, H, W)``
-> logits ``(N, classes)``, that needs no compiler and nothing to warm up (a batch-1 forward in
~5-10 ms: ``benchmarks/numpy_batch1.py``). It runs the same :class:`~npshuffle.lowering.Program`
as the Numba and CUDA backends, with ``kernels.reference``'s single-image forms of each op.

Activations are one image's ``(C, H, W)`` float32 arrays, C-contiguous, so an image's pixels
``P = H*W`` form the rows of a ``(C, P)`` matrix. A channel map that is affine (``offset + step *
i``) is then a row slice, a *view*: a 1x1 conv reads its half of a split, and writes its slots of
a concat or a shuffle, in place, with no copy. The one non-affine map, a V1 unit's shuffle read
back by pw2, is a gather (``np.take``) of whole channel planes.

:meth:`NumpyBackend.prepare_reference` is the plain walk of the *plan* (not the program) with
``kernels.reference``'s batched functions, exactly as the plan's docstrings describe the network:
the definition the program is tested against (tests/test_numpy_backend.py).

Every call allocates its own arrays (a runner may be called from several threads at once) and
runs a batch image by image (see ``NumpyRunner.__call__``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kernels import reference as ref
from kernels.channel_map import ChannelMap

from .lowering import AvgPool, Conv, Depthwise, GlobalPool, Linear, MaxPool, Pointwise, Program, Value, lower
from .plan import POOL_KERNEL, POOL_PADDING, POOL_STRIDE, ConvLayer, Plan, V1Unit, V2Unit

# An op as NumPy runs it: reads and writes one image's values, {Value: (C, H, W) array}.
Step = Callable[[dict], None]


def channels(where: ChannelMap, count: int) -> slice | np.ndarray:
    """An index of channels ``where(0 .. count-1)`` for ``x[index]`` (x: (C, ...)): a slice, so a
    view, when the map is affine; else the channel numbers, a gather (a copy)."""
    if where.is_affine:
        return slice(where.offset, where.offset + where.step * (count - 1) + 1, where.step)
    return where.indices(count)


def _slots(where: ChannelMap, count: int) -> slice:
    """:func:`channels` for writing: a slice (the map must be affine)."""
    if not where.is_affine:
        raise ValueError(f"the NumPy backend writes through affine channel maps only, got {where}")
    return channels(where, count)


def _output(values: dict, dst: Value, h: int, w: int) -> np.ndarray:
    """``dst``'s array, allocated by the first op that writes it (all of a value's channels get written)."""
    if dst not in values:
        values[dst] = np.empty((dst.channels, h, w), np.float32)
    return values[dst]


def _conv_step(op: Conv) -> Step:
    """The stem: im2col + one matrix product (weight flattened once to (O, C*K*K))."""
    if op.groups != 1:
        raise ValueError(f"{op.name}: the NumPy backend's stem is an ungrouped conv (as in every ShuffleNet)")
    weight, bias = op.weight.reshape(op.weight.shape[0], -1), op.bias[:, None]

    def conv(values: dict) -> None:
        x = values[op.src]
        out = _output(values, op.dst, op.output_size(x.shape[1]), op.output_size(x.shape[2]))
        ref.conv_image(x, weight, bias, op.kernel, op.stride, op.padding, op.relu, out.reshape(len(out), -1))

    return conv


def _max_pool_step(op: MaxPool) -> Step:
    def max_pool(values: dict) -> None:
        x = values[op.src]
        out = _output(values, op.dst, op.output_size(x.shape[1]), op.output_size(x.shape[2]))
        ref.max_pool_image(x, op.kernel, op.stride, op.padding, out.reshape(len(out), -1))

    return max_pool


def _avg_pool_step(op: AvgPool) -> Step:
    slots = _slots(op.writes, op.src.channels)

    def avg_pool(values: dict) -> None:
        x = values[op.src]
        out = _output(values, op.dst, op.output_size(x.shape[1]), op.output_size(x.shape[2]))
        ref.avg_pool_image(x, op.kernel, op.stride, op.padding, out.reshape(len(out), -1)[slots])

    return avg_pool


def _depthwise_step(op: Depthwise) -> Step:
    k = op.kernel
    weight, bias = op.weight.reshape(len(op.weight), 1, k * k), op.bias[:, None]

    def depthwise(values: dict) -> None:
        x = values[op.src]
        out = _output(values, op.dst, op.output_size(x.shape[1]), op.output_size(x.shape[2]))
        ref.depthwise_conv_image(x, weight, bias, k, op.stride, op.padding, op.relu, out.reshape(len(out), -1))

    return depthwise


def _pointwise_step(op: Pointwise) -> Step:
    """One (grouped) matrix product ``(G, O/G, K) @ (G, K, P)`` with the epilogue of the op."""
    g, o = op.groups, op.out_channels
    weight = np.ascontiguousarray(op.weight.reshape(g, o // g, -1))
    bias = op.bias.reshape(g, o // g, 1)
    late_relu = op.relu and op.residual is not None  # the ReLU comes after the residual add
    reads = channels(op.reads, op.in_channels)  # (a gather only for a V1 shuffle read back)
    writes = None if op.pool else _slots(op.writes, o)
    carry = op.carry
    if carry is not None:
        carry_from, carry_to = channels(carry.source, o), _slots(carry.destination, o)

    def pointwise(values: dict) -> None:
        src = values[op.src]
        _, h, w = src.shape
        x = src.reshape(len(src), h * w)[reads]
        if writes is None:  # the head, pooled: only the mean of its output is kept
            y = np.empty((o, h * w), np.float32)
        else:
            y = _output(values, op.dst, h, w).reshape(op.dst.channels, h * w)[writes]
        # (C, P) -> (G, C/G, P): a view, as a row-strided matrix splits into row blocks
        ref.pointwise_conv_image(x.reshape(g, -1, h * w), weight, bias, op.relu and not late_relu,
                                 y.reshape(g, -1, h * w))
        if op.residual is not None:
            residual = values[op.residual]
            np.add(y, residual.reshape(len(residual), h * w)[writes], out=y)
            if late_relu:
                np.maximum(y, 0.0, out=y)
        if writes is None:
            values[op.dst] = y.mean(axis=1, dtype=np.float32).reshape(o, 1, 1)
        if carry is not None:
            side, dst = values[carry.value], values[op.dst]
            np.copyto(dst.reshape(len(dst), h * w)[carry_to], side.reshape(len(side), h * w)[carry_from])

    return pointwise


def _global_pool_step(op: GlobalPool) -> Step:
    def global_pool(values: dict) -> None:
        x = values[op.src]
        values[op.dst] = x.reshape(len(x), -1).mean(axis=1, dtype=np.float32).reshape(-1, 1, 1)

    return global_pool


def _linear_step(op: Linear) -> Step:
    def linear(values: dict) -> None:
        values[op.dst] = (op.weight @ values[op.src].reshape(-1) + op.bias).reshape(-1, 1, 1)

    return linear


STEPS: dict[type, Callable] = {
    Conv: _conv_step, MaxPool: _max_pool_step, AvgPool: _avg_pool_step, Depthwise: _depthwise_step,
    Pointwise: _pointwise_step, GlobalPool: _global_pool_step, Linear: _linear_step,
}


class NumpyRunner:
    """``runner(x)``: logits ``(N, classes)`` of an NCHW float32 batch, through :attr:`program`."""

    def __init__(self, program: Program):
        self.program = program
        self.steps = [STEPS[type(op)](op) for op in program.ops]
        self.dead_after = program.dead_after()

    def run_one(self, image: np.ndarray) -> np.ndarray:
        """One image (3, H, W) -> its logits (classes,)."""
        values = {self.program.image: np.ascontiguousarray(image, np.float32)}
        for step, dead in zip(self.steps, self.dead_after, strict=True):
            step(values)
            for value in dead:  # let go of what no later op reads: a forward pass then stays in
                del values[value]  # a few MB that malloc reuses, hot in cache (holding every
                # activation to the end made the window ops ~2x slower, all on fresh pages)
        return values[self.program.logits].reshape(-1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # One image at a time, so that an image's logits never depend on its neighbours: BLAS
        # picks its kernel (GEMV for one row, GEMM tiles and edge cases for more) by the matrix
        # sizes, and with the batch inside the matrix an image's position in it would change the
        # rounding (by ~1e-6, differently on each CPU).
        x = np.asarray(x, np.float32)
        if len(x) == 0:
            return np.zeros((0, self.program.logits.channels), np.float32)
        return np.stack([self.run_one(image) for image in x])


class NumpyBackend:
    """Plain NumPy, one image at a time; no compiler, nothing to warm up (see the module docstring)."""

    name = "numpy"

    def prepare(self, plan: Plan, weights: dict[str, np.ndarray]) -> NumpyRunner:
        return NumpyRunner(lower(plan, weights))

    def prepare_reference(self, plan: Plan, weights: dict[str, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """The plain walk: the plan op by op with ``kernels.reference``'s batched functions, exactly
        as the plan's docstrings describe the network. ~4x slower than :meth:`prepare`; the
        program is tested against it."""

        def conv(layer: ConvLayer, x: np.ndarray) -> np.ndarray:
            w, b = weights[f"{layer.name}.weight"], weights[f"{layer.name}.bias"]
            return ref.conv2d(x, w, b, stride=layer.stride, padding=layer.padding, groups=layer.groups, relu=layer.relu)

        def v1_unit(u: V1Unit, x: np.ndarray) -> np.ndarray:
            y = conv(u.pw1, x)
            if u.groups > 1:
                y = ref.channel_shuffle(y, u.groups, u.shuffle)
            y = conv(u.pw2, conv(u.dw, y))
            if u.stride == 1:
                return ref.bias_relu(x + y, None, relu=True)
            shortcut = ref.avg_pool2d(x, POOL_KERNEL, POOL_STRIDE, POOL_PADDING, count_include_pad=True)
            return ref.concat_channels(shortcut, ref.bias_relu(y, None, relu=True))

        def v2_unit(u: V2Unit, x: np.ndarray) -> np.ndarray:
            if u.stride == 1:
                passthrough, x = ref.split_channels(x, u.split)
            else:
                passthrough = conv(u.proj_pw, conv(u.proj_dw, x))
            out = ref.concat_channels(passthrough, conv(u.pw2, conv(u.dw, conv(u.pw1, x))))
            return ref.channel_shuffle(out, 2, "torchvision") if u.shuffle_after else out

        def run_one(x: np.ndarray) -> np.ndarray:
            x = ref.max_pool2d(conv(plan.stem, x), POOL_KERNEL, POOL_STRIDE, POOL_PADDING)
            for unit in plan.units:
                x = v1_unit(unit, x) if isinstance(unit, V1Unit) else v2_unit(unit, x)
            if plan.head is not None:
                x = conv(plan.head, x)
            c = plan.classifier
            return ref.linear(ref.global_avg_pool(x), weights[f"{c.name}.weight"], weights[f"{c.name}.bias"])

        def run(x: np.ndarray) -> np.ndarray:
            # one image at a time, like the program's runner (see there)
            return np.concatenate([run_one(x[i: i + 1]) for i in range(x.shape[0])])

        return run
