"""The lowering: a plan (what the network is) becomes a program (what every backend runs).

A :class:`~npshuffle.plan.Plan` describes a ShuffleNet the way the papers do: units that split,
convolve, concatenate and shuffle. Split, concat and shuffle compute nothing; they only move
channels. :func:`lower` decides, once for every backend, how that movement happens: not as copies
but as *channel maps* (``kernels.channel_map``) on the convolutions that read and write the
tensors, plus a few fused epilogues. The NumPy, Numba and CUDA backends all run the resulting
:class:`Program`; none of them walks the plan itself.

A program is a flat list of ops over named tensors (:class:`Value`), one image's worth of
activations each, ``(channels, height, width)``:

==========================  ==================================================================
op                          computes
==========================  ==================================================================
:class:`Conv`               dense KxK conv (the stem), + bias, [ReLU]
:class:`MaxPool`            3x3 / 2 / 1 max-pool (after the stem)
:class:`Pointwise`          1x1 conv, grouped or not: input channel k read from
                            ``src[reads(k)]``, output o written to ``dst[writes(o)]``, with an
                            epilogue: + bias, [+ residual], [ReLU], [carry], [global pool]
:class:`Depthwise`          3x3 depthwise conv, + bias, [ReLU]
:class:`AvgPool`            3x3 / 2 / 1 average pool (zeros counted) into ``dst[writes(c)]``
:class:`GlobalPool`         mean over the pixels -> the features
:class:`Linear`             the classifier: features -> logits
==========================  ==================================================================

How each unit is lowered (channel maps as in ``kernels.channel_map``):

* **V1** ``pw1 -> shuffle(G) -> dw -> pw2``: a per-channel op commutes with a permutation, so the
  shuffle moves past the depthwise conv (whose filters are permuted to match) and into pw2's
  reads (``reads = shuffle_source``). pw1 and dw then run on plain, unshuffled channels.
  Stride 1: pw2's epilogue adds the unit input and applies the ReLU (``residual``). Stride 2:
  the average pool writes channels ``[0, C)`` of the output and pw2 ``[C, C')`` (``writes``
  offset C); the pool comes first.
* **V2 stride 1** ``concat(a, main(b))``, ``(a, b) = split(x)``: pw1 reads b straight out of x
  (``reads``: the second half, or the odd channels); pw2 writes main's channels to their final
  slots and, in the same pass, *carries* a from x to its slots (``carry``). With a shuffle(2)
  after the concat the slots interleave: a's channel j at 2j, main's at 2j + 1.
* **V2 stride 2** ``concat(proj(x), main(x))``: proj_pw writes its own tensor, which pw2 carries
  into the output as above (so the interleaved store happens in one op, as in stride 1); without
  a shuffle proj_pw writes the output's first channels directly.
* The head conv (V2) folds the global average pool into its epilogue (``pool``): its output is
  never needed, only its mean.

Shapes come from one place: :meth:`Program.shapes` (with ``kernels.sizes.output_size``); so do the
values' lifetimes: :meth:`Program.last_use`, :meth:`Program.dead_after`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.channel_map import EVEN_CHANNELS, IDENTITY, ODD_CHANNELS, ChannelMap, shuffle_source

from .plan import POOL_KERNEL, POOL_PADDING, POOL_STRIDE, ConvLayer, Plan, V1Unit, V2Unit, output_size


class LoweringError(ValueError):
    """A plan that cannot be lowered (inconsistent channel counts between a unit's branches)."""


class _ReadsSrc:
    """An op whose only input is ``src``."""

    def inputs(self) -> tuple[Value, ...]:
        return (self.src,)


class _Window(_ReadsSrc):
    """A KxK window op (conv or pool): its output size follows ``kernel``, ``stride``, ``padding``."""

    def output_size(self, size: int) -> int:
        return output_size(size, self.kernel, self.stride, self.padding)


class _Reduction(_ReadsSrc):
    """An op whose output is one pixel (the global pool, the classifier)."""

    def output_size(self, size: int) -> int:
        return 1


@dataclass(frozen=True, eq=False)
class Value:
    """A tensor of one image, ``(channels, height, width)`` float32; its height and width depend
    on the input size (see :meth:`Program.shapes`). Ops refer to values by identity: the lowering
    makes each value once, and a value is equal only to itself (which also makes it a cheap dict
    key for the backends). Names are unique within a program: the layers' and units' names."""

    name: str
    channels: int


@dataclass(frozen=True)
class Conv(_Window):
    """Dense KxK conv of ``src`` into ``dst`` (the stem). weight ``(O, C/groups, K, K)``, bias ``(O,)``."""

    name: str
    src: Value
    dst: Value
    weight: np.ndarray
    bias: np.ndarray
    kernel: int
    stride: int
    padding: int
    groups: int
    relu: bool


@dataclass(frozen=True)
class MaxPool(_Window):
    """3x3, stride 2, padding 1 max-pool of ``src`` into ``dst`` (padding never wins)."""

    name: str
    src: Value
    dst: Value
    kernel: int = POOL_KERNEL
    stride: int = POOL_STRIDE
    padding: int = POOL_PADDING


@dataclass(frozen=True)
class Carry:
    """Part of a pointwise epilogue: copy channel ``source(j)`` of ``value`` to channel
    ``destination(j)`` of the op's ``dst``, one channel j per output channel of the op (a V2
    unit's passthrough half, or its projection, put in place beside the main branch: the lowering
    checks the two have the same width). ``value`` has ``dst``'s height and width."""

    value: Value
    source: ChannelMap
    destination: ChannelMap


@dataclass(frozen=True)
class Pointwise:
    """1x1 conv, ``groups`` groups: weight ``(O, K)`` with K = input channels per group, bias ``(O,)``.

    Group g's input channel k (of ``groups * K``) is ``src`` channel ``reads(g * K + k)``; output
    channel o goes to ``dst`` channel ``writes(o)``. Epilogue, per output channel o and pixel::

        v = sum_k weight[o, k] * input[g(o) * K + k] + bias[o]
        if residual: v += residual[writes(o)]
        if relu:     v = max(v, 0)
        pool:        dst[o] = mean over pixels of v        (dst is the (O, 1, 1) features)
        else:        dst[writes(o)] = v
        carry:       dst[carry.destination(o)] = carry.value[carry.source(o)]
    """

    name: str
    src: Value
    dst: Value
    weight: np.ndarray
    bias: np.ndarray
    groups: int
    relu: bool
    reads: ChannelMap = IDENTITY
    writes: ChannelMap = IDENTITY
    residual: Value | None = None
    carry: Carry | None = None
    pool: bool = False

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def output_size(self, size: int) -> int:
        return 1 if self.pool else size

    def inputs(self) -> tuple[Value, ...]:
        extra = (self.residual,) if self.residual is not None else ()
        return (self.src, *extra, *((self.carry.value,) if self.carry is not None else ()))


@dataclass(frozen=True)
class Depthwise(_Window):
    """KxK depthwise conv of ``src`` into ``dst``: weight ``(C, 1, K, K)``, bias ``(C,)``."""

    name: str
    src: Value
    dst: Value
    weight: np.ndarray
    bias: np.ndarray
    kernel: int
    stride: int
    padding: int
    relu: bool


@dataclass(frozen=True)
class AvgPool(_Window):
    """3x3 / 2 / 1 average pool (padding counted as zeros) of ``src``: channel c goes to ``dst``
    channel ``writes(c)`` (a V1 stride-2 unit's shortcut, the first channels of its concat)."""

    name: str
    src: Value
    dst: Value
    writes: ChannelMap = IDENTITY
    kernel: int = POOL_KERNEL
    stride: int = POOL_STRIDE
    padding: int = POOL_PADDING


@dataclass(frozen=True)
class GlobalPool(_Reduction):
    """Mean over the pixels of ``src`` into ``dst``, the ``(C, 1, 1)`` features."""

    name: str
    src: Value
    dst: Value


@dataclass(frozen=True)
class Linear(_Reduction):
    """The classifier: ``dst = weight @ src + bias``; weight ``(classes, features)``, bias ``(classes,)``;
    ``src`` and ``dst`` are ``(features, 1, 1)`` and ``(classes, 1, 1)``."""

    name: str
    src: Value
    dst: Value
    weight: np.ndarray
    bias: np.ndarray


Op = Conv | MaxPool | Pointwise | Depthwise | AvgPool | GlobalPool | Linear


@dataclass(frozen=True)
class Program:
    """A lowered network: ``ops`` in execution order, from ``image`` to ``logits``."""

    image: Value
    ops: tuple[Op, ...]
    features: Value
    logits: Value

    def shapes(self, height: int, width: int) -> dict[Value, tuple[int, int, int]]:
        """``(channels, height, width)`` of every value for an ``image`` of ``height`` x ``width``."""
        shapes = {self.image: (self.image.channels, height, width)}
        for op in self.ops:
            _, h, w = shapes[op.src]
            shape = (op.dst.channels, op.output_size(h), op.output_size(w))
            if shapes.setdefault(op.dst, shape) != shape:  # a second op writing part of the same value
                raise LoweringError(f"{op.name}: writes {op.dst.name} as {shape}, already {shapes[op.dst]}")
        return shapes

    def last_use(self) -> dict[Value, int]:
        """Index of the last op that reads each value (the logits: past the end)."""
        last = {self.logits: len(self.ops)}
        for i, op in enumerate(self.ops):
            for value in op.inputs():
                last[value] = i
        return last

    def dead_after(self) -> list[tuple[Value, ...]]:
        """Per op, the values it is the last to read: a backend may reuse their memory after it (not
        for the op's own output, which it writes while reading them)."""
        dead: list[tuple[Value, ...]] = [() for _ in self.ops]
        for value, index in self.last_use().items():
            if index < len(self.ops):
                dead[index] += (value,)
        return dead


def lower(plan: Plan, weights: dict[str, np.ndarray]) -> Program:
    """The :class:`Program` of ``plan`` with its folded ``weights`` (float32 copies, in the shapes
    the ops document; a V1 unit's depthwise filters permuted as the module docstring explains)."""
    return _Lowering(weights).program(plan)


class _Lowering:
    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.ops: list = []

    def parameters(self, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        weight = np.ascontiguousarray(self.weights[f"{name}.weight"], np.float32)
        bias = np.ascontiguousarray(self.weights[f"{name}.bias"], np.float32)
        if weight.shape != shape or bias.shape != shape[:1]:
            raise LoweringError(f"{name}: weight {weight.shape} and bias {bias.shape}, the plan needs {shape} "
                                f"and {shape[:1]}")
        return weight, bias

    # -- one op per plan layer -----------------------------------------------------------------

    def pointwise(self, layer: ConvLayer, src: Value, dst: Value, **epilogue) -> None:
        if (layer.kernel, layer.stride, layer.padding) != (1, 1, 0):
            raise LoweringError(f"{layer.name}: a 1x1 conv needs stride 1 and padding 0 (got {layer})")
        weight, bias = self.parameters(layer.name, layer.weight_shape)
        epilogue.setdefault("relu", layer.relu)
        self.ops.append(Pointwise(layer.name, src, dst, weight.reshape(layer.out_channels, -1), bias,
                                  layer.groups, **epilogue))

    def depthwise(self, layer: ConvLayer, src: Value, order: np.ndarray | None = None) -> Value:
        """The depthwise conv ``layer`` of ``src`` into a new value; ``order``: its filters' channel order."""
        if not layer.groups == layer.in_channels == layer.out_channels:
            raise LoweringError(f"{layer.name}: a unit's KxK conv must be depthwise (got {layer})")
        weight, bias = self.parameters(layer.name, layer.weight_shape)
        if order is not None:
            weight, bias = weight[order], bias[order]
        dst = Value(layer.name, layer.out_channels)
        self.ops.append(Depthwise(layer.name, src, dst, weight, bias, layer.kernel, layer.stride, layer.padding,
                                  layer.relu))
        return dst

    # -- the network ---------------------------------------------------------------------------

    def program(self, plan: Plan) -> Program:
        image = Value("image", plan.stem.in_channels)
        stem = plan.stem
        weight, bias = self.parameters(stem.name, stem.weight_shape)
        stem_out = Value(stem.name, stem.out_channels)
        self.ops.append(Conv(stem.name, image, stem_out, weight, bias, stem.kernel, stem.stride, stem.padding,
                             stem.groups, stem.relu))
        x = Value("max_pool", stem.out_channels)
        self.ops.append(MaxPool("max_pool", stem_out, x))
        for unit in plan.units:
            if isinstance(unit, V1Unit):
                x = self.v1_unit(unit, x)
            elif isinstance(unit, V2Unit):
                x = self.v2_unit(unit, x)
            else:
                raise LoweringError(f"unknown unit type {type(unit).__name__}")
        c = plan.classifier
        features = Value("features", c.in_features)
        if plan.head is not None:
            if plan.head.out_channels != c.in_features:
                raise LoweringError(f"{plan.head.name}: {plan.head.out_channels} channels, the classifier "
                                    f"takes {c.in_features}")
            self.pointwise(plan.head, x, features, pool=True)
        else:
            self.ops.append(GlobalPool("global_pool", x, features))
        weight, bias = self.parameters(c.name, (c.num_classes, c.in_features))
        logits = Value("logits", c.num_classes)
        self.ops.append(Linear(c.name, features, logits, weight, bias))
        return Program(image, tuple(self.ops), features, logits)

    def v1_unit(self, u: V1Unit, x: Value) -> Value:
        out = Value(u.name, u.out_channels)
        mid = Value(u.pw1.name, u.pw1.out_channels)
        self.pointwise(u.pw1, x, mid)
        reads, order = IDENTITY, None
        if u.groups > 1:  # the shuffle, moved past the depthwise conv into pw2's reads
            reads = shuffle_source(u.pw1.out_channels, u.groups, u.shuffle)
            order = np.argsort(reads.indices(u.pw1.out_channels))  # unshuffled channel c is shuffled order[c]
        z = self.depthwise(u.dw, mid, order)
        if u.stride == 1:  # relu(x + pw2(z))
            self.pointwise(u.pw2, z, out, reads=reads, relu=True, residual=x)
        else:  # concat(avg_pool(x), relu(pw2(z)))
            self.ops.append(AvgPool(f"{u.name}.avg_pool", x, out))
            self.pointwise(u.pw2, z, out, reads=reads, relu=True, writes=ChannelMap(offset=u.in_channels))
        return out

    def v2_unit(self, u: V2Unit, x: Value) -> Value:
        out = Value(u.name, u.out_channels)
        first = u.in_channels // 2 if u.stride == 1 else u.proj_pw.out_channels  # channels before main's
        if u.shuffle_after:  # concat then shuffle(2): first's channel j at 2j, main's at 2j + 1
            if first != u.pw2.out_channels:
                raise LoweringError(f"{u.name}: shuffle(2) after a concat of unequal branches "
                                    f"({first} and {u.pw2.out_channels} channels)")
            first_slots, main_slots = EVEN_CHANNELS, ODD_CHANNELS
        else:
            first_slots, main_slots = IDENTITY, ChannelMap(offset=first)
        if u.stride == 1:
            self.v2_split_unit(u, x, out, first, first_slots, main_slots)
        else:
            self.v2_downsampling_unit(u, x, out, first, first_slots, main_slots)
        return out

    def v2_split_unit(self, u: V2Unit, x: Value, out: Value, half: int, first_slots, main_slots) -> None:
        # (half = the kept half's width, the "first" operand of the concat)
        """concat(a, main(b)) with (a, b) = split(x): pw1 reads b out of x, pw2 carries a."""
        if u.split == "halves":  # (x[:C/2], x[C/2:])
            kept, branch = IDENTITY, ChannelMap(offset=half)
        elif u.split == "interleaved":  # (even channels, odd channels)
            kept, branch = EVEN_CHANNELS, ODD_CHANNELS
        else:
            raise LoweringError(f"{u.name}: unknown split {u.split!r}")
        if u.pw1.in_channels != u.in_channels - half or u.pw2.out_channels != half:
            raise LoweringError(f"{u.name}: a split unit's branch must take and give {half} channels (pw1 takes "
                                f"{u.pw1.in_channels}, pw2 gives {u.pw2.out_channels})")
        mid = Value(u.pw1.name, u.pw1.out_channels)
        self.pointwise(u.pw1, x, mid, reads=branch)
        z = self.depthwise(u.dw, mid)
        self.pointwise(u.pw2, z, out, writes=main_slots, carry=Carry(x, kept, first_slots))

    def v2_downsampling_unit(self, u: V2Unit, x: Value, out: Value, first: int, first_slots, main_slots) -> None:
        """concat(proj(x), main(x)), both branches at stride 2."""
        projected = self.depthwise(u.proj_dw, x)
        mid = Value(u.pw1.name, u.pw1.out_channels)
        self.pointwise(u.pw1, x, mid)
        z = self.depthwise(u.dw, mid)
        if u.shuffle_after:  # proj_pw into a tensor of its own, which pw2 carries into the interleaved slots
            proj = Value(u.proj_pw.name, u.proj_pw.out_channels)
            self.pointwise(u.proj_pw, projected, proj)
            self.pointwise(u.pw2, z, out, writes=main_slots, carry=Carry(proj, IDENTITY, first_slots))
        else:  # each branch writes its own channels of the output
            self.pointwise(u.proj_pw, projected, out)
            self.pointwise(u.pw2, z, out, writes=main_slots)
