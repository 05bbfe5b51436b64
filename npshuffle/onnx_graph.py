"""A model file's network as a standard ONNX graph (opset 17), for ONNX Runtime and other engines.

:func:`build_onnx_model` walks the *plan* exactly as ``NumpyBackend.prepare_reference`` does (the
plain walk that defines the network, see ``npshuffle/plan.py``), one ONNX node or a few per step,
with the model file's folded weights as initializers under their model-file names
(``units.3.pw1.weight``, ...)::

    input  float32 (N, 3, S, S)   NCHW, S = the recipe's crop; N is dynamic ("batch")
    stem   Conv 3x3/2 + Relu -> MaxPool 3x3/2 pad 1
    V1 unit   pw1 Conv(group) + Relu -> shuffle -> dw Conv(group=C) -> pw2 Conv(group)
              stride 1: Relu(Add(x, y));  stride 2: Concat(AveragePool 3x3/2 pad 1 (x), Relu(y))
    V2 unit   stride 1: (a, b) = split(x); Concat(a, main(b));  stride 2: Concat(proj(x), main(x))
              [then shuffle(2) in the torchvision dialect]
    head   [Conv 1x1 + Relu (V2)] -> GlobalAveragePool -> Flatten -> Gemm (weight (classes, C), transB)
    logits float32 (N, classes)

Every conv is one ``Conv`` with its batch norm folded in (weight ``(O, C/group, K, K)``, bias
``(O,)``); grouped and depthwise convs set ``group``. The two dialects differ only in what the plan
records (see ``npshuffle.archs``), and each is written as the plan says:

* a channel shuffle is ``Reshape (N, G, C/G, H, W) -> Transpose (0, 2, 1, 3, 4) -> Reshape (N, C, H, W)``
  (torchvision's convention; Megvii's reshapes to ``(N, C/G, G, H, W)`` instead). Megvii's V1 unit
  shuffles after its depthwise conv; the converter moved that shuffle before it (permuting the
  depthwise filters), so the plan, and this graph, has one V1 form;
* a V2 split is ``Split`` into halves (torchvision) or two ``Slice`` with step 2, the even and the
  odd channels (Megvii, whose shuffle is folded into the split);
* V1's stride-2 shortcut is ``AveragePool`` with ``count_include_pad=1``: the padded zeros count,
  every window sum is divided by 9, as torch's ``avg_pool2d(3, 2, 1)`` and ``kernels.reference`` do;
* Megvii's bias-free classifier has the zero bias the model file stores.

Spatial sizes are fixed by the recipe's crop (the Reshapes spell them out); the batch is not.
The preprocessing recipe and the class names travel in the model's ``metadata_props`` as JSON
strings (``preprocess``, ``class_names``, and the whole model-file metadata under ``npshuffle``).

Needs the ``onnx`` package (``pip install "npshuffle[onnx]"``); only ``npshuffle export`` imports
this module.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from .archs import variant_name
from .model_file import ModelFile
from .plan import POOL_KERNEL, POOL_PADDING, POOL_STRIDE, ConvLayer, V1Unit, V2Unit, pooled_size

OPSET = 17
INPUT, OUTPUT = "input", "logits"


class _Graph:
    """Nodes and initializers being collected; every method adds a step and returns its output's name.

    Activations are NCHW float32 ``(N, C, H, W)`` with N dynamic and H, W known (the walk tracks them).
    """

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constants: dict[tuple[int, ...], str] = {}

    def node(self, op: str, inputs: list[str], name: str, outputs: list[str] | None = None, **attributes) -> str:
        """One node named ``name``; its (first) output is named ``name`` too unless ``outputs`` says."""
        outputs = outputs or [name]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attributes))
        return outputs[0]

    def weight(self, name: str) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(self.weights[name], np.float32), name))
        return name

    def int64s(self, values: tuple[int, ...]) -> str:
        """A 1-D int64 constant (shapes, split sizes, slice bounds), shared by every node that needs it."""
        if values not in self._constants:
            name = "int64." + "_".join(str(v) for v in values)
            self.initializers.append(numpy_helper.from_array(np.array(values, np.int64), name))
            self._constants[values] = name
        return self._constants[values]

    def conv(self, layer: ConvLayer, x: str) -> str:
        """A plan conv with its folded BN (as weight and bias) and, if the plan says so, its ReLU."""
        p = layer.padding
        y = self.node("Conv", [x, self.weight(f"{layer.name}.weight"), self.weight(f"{layer.name}.bias")],
                      layer.name, kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2, pads=[p] * 4,
                      group=layer.groups)
        return self.relu(y) if layer.relu else y

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], f"{x}.relu")

    def pool(self, op: str, x: str, name: str, **attributes) -> str:
        """The 3x3, stride 2, pad 1 pool of every ShuffleNet (``MaxPool`` or ``AveragePool``)."""
        return self.node(op, [x], name, kernel_shape=[POOL_KERNEL] * 2, strides=[POOL_STRIDE] * 2,
                         pads=[POOL_PADDING] * 4, **attributes)

    def concat(self, a: str, b: str, name: str) -> str:
        return self.node("Concat", [a, b], name, axis=1)

    def shuffle(self, x: str, channels: int, groups: int, convention: str, size: int, name: str) -> str:
        """``kernels.reference.channel_shuffle``: (N, C, H, W) viewed as (N, G, C/G, H, W) for
        "torchvision" ((N, C/G, G, H, W) for "megvii"), axes 1 and 2 swapped, flattened back."""
        rows = groups if convention == "torchvision" else channels // groups
        grid = self.node("Reshape", [x, self.int64s((-1, rows, channels // rows, size, size))], f"{name}.grid")
        swapped = self.node("Transpose", [grid], f"{name}.transpose", perm=[0, 2, 1, 3, 4])
        return self.node("Reshape", [swapped, self.int64s((-1, channels, size, size))], name)

    def split(self, x: str, channels: int, convention: str, name: str) -> tuple[str, str]:
        """``kernels.reference.split_channels``: "halves" (channels [0, C/2), [C/2, C)) or
        "interleaved" (the even channels, the odd ones), each (N, C/2, H, W)."""
        half = channels // 2
        if convention == "halves":
            a, b = f"{name}.a", f"{name}.b"
            self.node("Split", [x, self.int64s((half, half))], name, outputs=[a, b], axis=1)
            return a, b
        axis, step = self.int64s((1,)), self.int64s((2,))
        return tuple(self.node("Slice", [x, self.int64s((start,)), self.int64s((channels,)), axis, step],
                               f"{name}.{part}") for start, part in ((0, "a"), (1, "b")))


def _v1_unit(g: _Graph, u: V1Unit, x: str, size: int) -> tuple[str, int]:
    """A V1 unit (see :class:`~npshuffle.plan.V1Unit`): x (N, in, size, size) -> (output, its size)."""
    y = g.conv(u.pw1, x)
    if u.groups > 1:
        y = g.shuffle(y, u.pw1.out_channels, u.groups, u.shuffle, size, f"{u.name}.shuffle")
    y = g.conv(u.pw2, g.conv(u.dw, y))
    if u.stride == 1:
        return g.relu(g.node("Add", [x, y], f"{u.name}.add")), size
    shortcut = g.pool("AveragePool", x, f"{u.name}.shortcut", count_include_pad=1)
    return g.concat(shortcut, g.relu(y), u.name), u.dw.output_size(size)


def _v2_unit(g: _Graph, u: V2Unit, x: str, size: int) -> tuple[str, int]:
    """A V2 unit (see :class:`~npshuffle.plan.V2Unit`): x (N, in, size, size) -> (output, its size)."""
    if u.stride == 1:
        passthrough, x = g.split(x, u.in_channels, u.split, f"{u.name}.split")
    else:
        passthrough = g.conv(u.proj_pw, g.conv(u.proj_dw, x))
    main = g.conv(u.pw2, g.conv(u.dw, g.conv(u.pw1, x)))
    size = u.dw.output_size(size)
    if not u.shuffle_after:
        return g.concat(passthrough, main, u.name), size
    out = g.concat(passthrough, main, f"{u.name}.concat")
    return g.shuffle(out, u.out_channels, 2, "torchvision", size, u.name), size


def build_onnx_model(model: ModelFile) -> onnx.ModelProto:
    """The network of ``model`` as an ONNX model: input ``"input"`` float32 ``(batch, 3, crop, crop)``,
    preprocessed as ``model.recipe`` says; output ``"logits"`` float32 ``(batch, classes)``."""
    plan, crop = model.plan, model.recipe["crop"]
    g = _Graph(model.weights)
    x = g.pool("MaxPool", g.conv(plan.stem, INPUT), "maxpool")
    size = pooled_size(plan.stem.output_size(crop))
    for unit in plan.units:
        x, size = (_v1_unit if isinstance(unit, V1Unit) else _v2_unit)(g, unit, x, size)
    if plan.head is not None:
        x = g.conv(plan.head, x)
    c = plan.classifier
    features = g.node("Flatten", [g.node("GlobalAveragePool", [x], "global_pool")], "features", axis=1)
    g.node("Gemm", [features, g.weight(f"{c.name}.weight"), g.weight(f"{c.name}.bias")], c.name,
           outputs=[OUTPUT], transB=1)

    recipe = model.recipe
    image = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, crop, crop])
    image.doc_string = (f"{recipe['channel_order']} image, shorter side resized to {recipe['resize']} "
                        f"({recipe['interpolation']}), centre crop {crop}, (pixel * scale - mean) / std: see "
                        "metadata_props['preprocess']")
    logits = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", c.num_classes])
    logits.doc_string = "class scores before softmax, in the order of metadata_props['class_names']"
    variant = variant_name(model.spec)
    graph = helper.make_graph(g.nodes, variant, [image], [logits], initializer=g.initializers)
    opsets = [helper.make_opsetid("", OPSET)]
    # the IR version that came with opset 17 (ONNX 1.12), not this onnx package's newest: older runtimes load it
    onnx_model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                                   producer_name="npshuffle", producer_version=__version__,
                                   doc_string=f"{variant} ({model.dialect} dialect), exported by npshuffle")
    helper.set_model_props(onnx_model, {
        "preprocess": json.dumps(recipe),
        "class_names": json.dumps(model.class_names),
        "npshuffle": json.dumps(model.metadata),
    })
    return onnx_model

