"""The layer plan: a ShuffleNet written down as the papers draw it, in small typed pieces.

A plan says *what* to compute: a stem, units (:class:`V1Unit`, :class:`V2Unit`, each with its
split, convs, concat and shuffle), a head and a classifier. ``npshuffle.lowering`` turns it into
the program of ops the backends run (``npshuffle.backends``). Every plan has the same outline,
whatever the version or dialect:

    stem conv 3x3 s2 (+ReLU) -> max-pool 3x3 s2 -> units ... -> [head conv 1x1 (+ReLU)]
    -> global average pool -> classifier (linear)

Every convolution in a plan is a :class:`ConvLayer`: a conv whose batch norm has already been folded
into its weight and bias (see ``weights_convert.fold``), with the ReLU, if any, fused after it.
Its weights live in the model file under ``f"{layer.name}.weight"`` (shape
``(out_channels, in_channels // groups, kernel, kernel)``) and ``f"{layer.name}.bias"``
(shape ``(out_channels,)``).

Layout: activations are NCHW ``(batch, channels, height, width)`` float32 in the plain walk of the
plan (``NumpyBackend.prepare_reference``, the definition every backend is tested against); a
backend may keep its own layout inside, but takes and returns NCHW.
"""

from __future__ import annotations

from dataclasses import dataclass

from kernels.sizes import output_size

# The 3x3, stride 2, padding 1 pool every ShuffleNet uses: the max-pool after the stem and the
# average-pool shortcut of a V1 stride-2 unit.
POOL_KERNEL, POOL_STRIDE, POOL_PADDING = 3, 2, 1


def pooled_size(size: int) -> int:
    """:func:`output_size` of the 3x3 / 2 / 1 pool."""
    return output_size(size, POOL_KERNEL, POOL_STRIDE, POOL_PADDING)



@dataclass(frozen=True)
class ConvLayer:
    """A convolution with folded BN and an optional fused ReLU.

    ``groups == 1`` is a dense conv, ``groups == in_channels == out_channels`` a depthwise one,
    ``kernel == 1`` a pointwise one. Parameters: ``out * in / groups * k * k`` weights + ``out`` biases.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    relu: bool = False

    def output_size(self, size: int) -> int:
        """Output height (width) for an input of height (width) ``size``."""
        return output_size(size, self.kernel, self.stride, self.padding)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)

    @property
    def bias_shape(self) -> tuple[int]:
        return (self.out_channels,)


@dataclass(frozen=True)
class V1Unit:
    """A ShuffleNet V1 unit.

        y = pw1(x)                      1x1 conv, ``groups`` groups (1 in the very first unit), +ReLU
        y = shuffle(y, groups)          ``shuffle`` convention; skipped when groups == 1
        y = dw(y)                       3x3 depthwise, stride 1 or 2, no ReLU
        y = pw2(y)                      1x1 conv, ``groups`` groups, no ReLU
        stride 1: out = relu(x + y)
        stride 2: out = concat(avg_pool3x3s2(x), relu(y))   (pad 1, count_include_pad=True)

    Megvii's code shuffles *after* the depthwise conv; the converter moves the shuffle before it
    by permuting the depthwise filters (a per-channel op commutes with a channel permutation),
    so every V1 plan has this one form.
    """

    name: str
    in_channels: int
    out_channels: int
    stride: int
    groups: int
    shuffle: str
    pw1: ConvLayer
    dw: ConvLayer
    pw2: ConvLayer

    def convs(self) -> tuple[ConvLayer, ...]:
        return (self.pw1, self.dw, self.pw2)


@dataclass(frozen=True)
class V2Unit:
    """A ShuffleNet V2 unit.

        stride 1: (a, b) = split(x, ``split``);  out = concat(a, main(b))
        stride 2: out = concat(proj(x), main(x))
        then, if ``shuffle_after`` (torchvision dialect): out = channel_shuffle(out, 2)

    ``main`` = pw1 (1x1 +ReLU) -> dw (3x3 depthwise, stride s) -> pw2 (1x1 +ReLU);
    ``proj`` = proj_dw (3x3 depthwise, stride 2) -> proj_pw (1x1 +ReLU); stride-2 units only.
    """

    name: str
    in_channels: int
    out_channels: int
    stride: int
    split: str | None
    shuffle_after: bool
    pw1: ConvLayer
    dw: ConvLayer
    pw2: ConvLayer
    proj_dw: ConvLayer | None = None
    proj_pw: ConvLayer | None = None

    def convs(self) -> tuple[ConvLayer, ...]:
        branch = (self.proj_dw, self.proj_pw) if self.stride == 2 else ()
        return (*branch, self.pw1, self.dw, self.pw2)


@dataclass(frozen=True)
class Classifier:
    """Linear layer on the pooled features: weight ``(num_classes, in_features)``, bias ``(num_classes,)``.
    A bias-free classifier (Megvii) is stored with a zero bias."""

    name: str
    in_features: int
    num_classes: int


@dataclass(frozen=True)
class Plan:
    """A whole network. ``units`` are :class:`V1Unit` or :class:`V2Unit`."""

    stem: ConvLayer
    units: tuple
    head: ConvLayer | None
    classifier: Classifier

    def convs(self) -> list[ConvLayer]:
        layers = [self.stem]
        for unit in self.units:
            layers.extend(unit.convs())
        if self.head is not None:
            layers.append(self.head)
        return layers

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the plan needs, by name, with its shape (the model file's contract)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in self.convs():
            shapes[f"{layer.name}.weight"] = layer.weight_shape
            shapes[f"{layer.name}.bias"] = layer.bias_shape
        c = self.classifier
        shapes[f"{c.name}.weight"] = (c.num_classes, c.in_features)
        shapes[f"{c.name}.bias"] = (c.num_classes,)
        return shapes

    def macs(self, image_size: int = 224) -> int:
        """Multiply-accumulates of one forward pass on a square ``image_size`` input (convs + fc)."""
        size = self.stem.output_size(image_size)
        total = _conv_macs(self.stem, size)
        size = pooled_size(size)
        for unit in self.units:
            if isinstance(unit, V2Unit) and unit.stride == 2:
                out = unit.proj_dw.output_size(size)
                total += _conv_macs(unit.proj_dw, out) + _conv_macs(unit.proj_pw, out)
            total += _conv_macs(unit.pw1, size)
            out = unit.dw.output_size(size)
            total += _conv_macs(unit.dw, out) + _conv_macs(unit.pw2, out)
            size = out
        if self.head is not None:
            total += _conv_macs(self.head, size)
        return total + self.classifier.in_features * self.classifier.num_classes


def _conv_macs(layer: ConvLayer, out_size: int) -> int:
    per_pixel = layer.out_channels * (layer.in_channels // layer.groups) * layer.kernel**2
    return per_pixel * out_size * out_size
