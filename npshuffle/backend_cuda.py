"""The CUDA backend: a whole ShuffleNet on an NVIDIA GPU through numba.cuda (``kernels.cuda``).

    runner = CudaBackend().prepare(plan, weights)     # weights -> GPU, once
    logits = runner(batch)                            # NCHW float32 (N, 3, H, W) -> (N, classes)

What happens where:

* ``prepare`` uploads every weight once, already in the layout its kernel reads (1x1 weights
  transposed to (in, out), the classifier too), and returns a :class:`CudaRunner`.
* The first call with a new input shape builds a :class:`Workspace` for it: device buffers for
  every activation and the network as a list of :class:`kernels.cuda.Launch` es, each with its
  grid and arguments bound. Later calls with that shape reuse it.
* A call copies the batch to the GPU (the only host->device copy), enqueues the launches, and
  copies the logits back (the only device->host copy, which also waits for the GPU to finish).

Layout: NCHW, like the rest of npshuffle (see ``kernels/cuda.py`` for why it suits the GPU), so the
input needs no conversion. Activations live in four reused scratch buffers: the unit input and
output (A and B, swapped after every unit) and two temporaries for the branch (T1, T2), each
allocated for the largest tensor it ever holds.

A unit is 3 to 5 launches and no copies: split, concat and shuffle happen in the stores and loads
of the kernels that produce and consume the tensors (``kernels.cuda.ChannelMap``):

* V1, stride 1:  pw1 (+ReLU, stores into shuffled channels) -> dw -> pw2 (+x, ReLU) -> B
* V1, stride 2:  avg-pool(x) -> B[:, :Cin];  pw1 (shuffled) -> dw -> pw2 (+ReLU) -> B[:, Cin:]
* V2, stride 1:  pw1 (reads the branch half of x) -> dw -> pw2 (+ReLU), which stores the branch
  into its final (concatenated, shuffled) channels and carries the other half of x to its own
* V2, stride 2:  proj_dw -> proj_pw (+ReLU) -> B;  pw1 -> dw -> pw2 (+ReLU) -> B, each branch
  stored straight into its final channels
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backends import BackendError
from .plan import ConvLayer, Plan, V1Unit, V2Unit

INSTALL_HINT = "numba-cuda is not installed: pip install npshuffle[gpu]"


def _import_cuda():
    """numba.cuda, or a BackendError saying why the GPU cannot be used here."""
    try:
        from numba import cuda
    except ImportError as exc:
        raise BackendError(f"{INSTALL_HINT} ({exc})") from None
    try:
        available = cuda.is_available()
    except Exception as exc:  # a broken driver or toolkit install raises rather than saying False
        raise BackendError(f"no CUDA GPU found: numba.cuda could not initialise the driver ({exc})") from None
    if not available:
        raise BackendError(
            "no CUDA GPU found: numba.cuda.is_available() is False (no NVIDIA GPU or driver visible here); "
            "use backend='numpy' / 'numba', or 'auto' to pick the best available"
        )
    return cuda


class CudaBackend:
    """Runs a plan on the GPU; raises BackendError at construction when it cannot (no numba.cuda,
    no GPU). Under ``NUMBA_ENABLE_CUDASIM=1`` it runs on numba's CUDA simulator (slowly)."""

    name = "cuda"

    def __init__(self):
        self.cuda = _import_cuda()

    def prepare(self, plan: Plan, weights: dict[str, np.ndarray]) -> CudaRunner:
        return CudaRunner(plan, weights)


@dataclass(frozen=True)
class _Tensor:
    """An activation while the network is being laid out: which scratch buffer holds it, and the
    shape a kernel sees it with (NCHW, or (N, C, H*W) for the 1x1 convs)."""

    buffer: str
    shape: tuple[int, ...]

    def flat(self) -> _Tensor:
        """The (N, C, H*W) view the 1x1 conv kernel reads."""
        n, c, h, w = self.shape
        return _Tensor(self.buffer, (n, c, h * w))


@dataclass
class Workspace:
    """Everything one input shape needs: its buffers and its launches."""

    input: object  # device (N, 3, H, W)
    logits: object  # device (N, classes)
    launches: list
    buffer_bytes: int


def _conv_size(layer: ConvLayer, h: int, w: int) -> tuple[int, int]:
    s, p, k = layer.stride, layer.padding, layer.kernel
    return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


class CudaRunner:
    """``runner(x)``: logits of an NCHW float32 batch, computed on the GPU."""

    def __init__(self, plan: Plan, weights: dict[str, np.ndarray]):
        from kernels import cuda as kc  # imports numba.cuda: only once a CudaBackend exists

        self.kc = kc
        self.cuda = kc.cuda
        self.plan = plan
        self.num_classes = plan.classifier.num_classes
        self.weights = {}  # name -> device array, uploaded once
        for layer in plan.convs():
            w = np.asarray(weights[f"{layer.name}.weight"], np.float32)
            if tuple(w.shape) != layer.weight_shape:
                raise ValueError(f"{layer.name}.weight has shape {w.shape}, the plan needs {layer.weight_shape}")
            packed = kc.pack_pointwise_weight(w) if layer.kernel == 1 else np.ascontiguousarray(w)
            self.weights[f"{layer.name}.weight"] = self.cuda.to_device(packed)
            self.weights[f"{layer.name}.bias"] = self.cuda.to_device(
                np.ascontiguousarray(weights[f"{layer.name}.bias"], np.float32)
            )
        c = plan.classifier  # a linear layer is a 1x1 conv on 1x1 images: same packing
        w, b = weights[f"{c.name}.weight"], weights[f"{c.name}.bias"]
        self.weights[f"{c.name}.weight"] = self.cuda.to_device(kc.pack_pointwise_weight(w))
        self.weights[f"{c.name}.bias"] = self.cuda.to_device(np.ascontiguousarray(b, np.float32))
        self.workspaces: dict[tuple[int, ...], Workspace] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a batch of shape (N, 3, H, W), got {x.shape}")
        ws = self.workspaces.get(x.shape)
        if ws is None:
            ws = self.workspaces[x.shape] = self.build_workspace(x.shape)
        ws.input.copy_to_device(x)
        for launch in ws.launches:
            launch()
        return ws.logits.copy_to_host()

    # ------------------------------------------------------------------------------------------
    # Laying out the network for one input shape

    def build_workspace(self, shape: tuple[int, ...]) -> Workspace:
        """Trace the plan for ``shape`` into (factory, arguments) steps whose activations are
        :class:`_Tensor` placeholders, size each scratch buffer for its largest tensor, allocate,
        then bind every step to views of the real buffers."""
        n, _, h, w = shape
        x = _Tensor("input", tuple(shape))
        logits = _Tensor("logits", (n, self.num_classes, 1))
        steps = self._trace(x, logits)

        sizes: dict[str, int] = {}
        for _, args in steps:
            for value in args.values():
                for t in _tensors_in(value):
                    sizes[t.buffer] = max(sizes.get(t.buffer, 0), math.prod(t.shape))
        buffers = {name: self.cuda.device_array(size, np.float32) for name, size in sizes.items()}

        def bind(value):
            if isinstance(value, _Tensor):
                buffer, size = buffers[value.buffer], math.prod(value.shape)
                return (buffer if buffer.size == size else buffer[:size]).reshape(value.shape)
            if type(value) is tuple:  # a carry (side, maps); not a ChannelMap, itself a NamedTuple
                return tuple(bind(v) for v in value)
            return value

        launches = [factory(**{k: bind(v) for k, v in args.items()}) for factory, args in steps]
        return Workspace(
            input=bind(x),
            logits=buffers["logits"].reshape(n, self.num_classes),
            launches=launches,
            buffer_bytes=4 * sum(sizes.values()),
        )

    def _trace(self, x: _Tensor, logits: _Tensor) -> list:
        trace = _Trace(self.kc, self.weights)
        trace.network(self.plan, x, logits)
        return trace.steps


class _Trace:
    """Turns a plan into launch steps ``(launch factory, keyword arguments)`` for one input shape,
    with :class:`_Tensor` placeholders for the activations (scratch buffers A, B, T1, T2)."""

    def __init__(self, kc, weights: dict):
        self.kc = kc
        self.weights = weights
        self.steps: list[tuple] = []

    def launch(self, factory, **args) -> None:
        self.steps.append((factory, args))

    def conv(self, layer: ConvLayer, src: _Tensor, dst: _Tensor, **fused) -> None:
        """One step for ``layer``: a 1x1 conv (``fused``: its channel maps, residual, carry, and a
        ReLU that overrides the layer's), a depthwise conv or a dense one (the stem)."""
        kc = self.kc
        weight, bias = self.weights[f"{layer.name}.weight"], self.weights[f"{layer.name}.bias"]
        if layer.kernel == 1:
            fused.setdefault("relu", layer.relu)
            self.launch(kc.pointwise_launch, x=src.flat(), wt=weight, bias=bias, out=dst.flat(),
                        groups=layer.groups, **fused)
        elif layer.groups == layer.in_channels == layer.out_channels and layer.groups > 1:
            self.launch(kc.depthwise_launch, x=src, w=weight, bias=bias, out=dst,
                        stride=layer.stride, padding=layer.padding, relu=layer.relu)
        else:
            self.launch(kc.conv2d_launch, x=src, w=weight, bias=bias, out=dst,
                        stride=layer.stride, padding=layer.padding, groups=layer.groups, relu=layer.relu)

    def network(self, plan: Plan, x: _Tensor, logits: _Tensor) -> None:
        n, _, h, w = x.shape
        h, w = _conv_size(plan.stem, h, w)
        stem = _Tensor("T1", (n, plan.stem.out_channels, h, w))
        self.conv(plan.stem, x, stem)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # max-pool 3x3 s2 p1
        cur = _Tensor("A", (n, plan.stem.out_channels, h, w))
        self.launch(self.kc.max_pool_launch, x=stem, out=cur, kernel=3, stride=2, padding=1)

        for unit in plan.units:
            ho, wo = _conv_size(unit.dw, h, w)
            out = _Tensor("B" if cur.buffer == "A" else "A", (n, unit.out_channels, ho, wo))
            if isinstance(unit, V1Unit):
                self.v1_unit(unit, cur, out)
            elif isinstance(unit, V2Unit):
                self.v2_unit(unit, cur, out)
            else:
                raise TypeError(f"unknown unit type {type(unit).__name__}")
            cur, h, w = out, ho, wo

        if plan.head is not None:
            head = _Tensor("T1", (n, plan.head.out_channels, h, w))
            self.conv(plan.head, cur, head)
            cur = head
        c = plan.classifier
        self.launch(self.kc.global_avg_pool_launch, x=cur.flat(), out=_Tensor("T2", (n, c.in_features)))
        features = _Tensor("T2", (n, c.in_features, 1))  # the pooled features as N 1x1 images
        weight, bias = self.weights[f"{c.name}.weight"], self.weights[f"{c.name}.bias"]
        self.launch(self.kc.pointwise_launch, x=features, wt=weight, bias=bias, out=logits)

    def v1_unit(self, u: V1Unit, x: _Tensor, out: _Tensor) -> None:
        kc = self.kc
        n, _, h, w = x.shape
        _, _, ho, wo = out.shape
        mid = u.pw1.out_channels
        t1, t2 = _Tensor("T1", (n, mid, h, w)), _Tensor("T2", (n, mid, ho, wo))
        # pw1 stores channel k where channel_shuffle(., groups) would put it
        self.conv(u.pw1, x, t1, out_map=kc.shuffle_map(mid, u.groups, u.shuffle) if u.groups > 1 else kc.IDENTITY)
        self.conv(u.dw, t1, t2)
        if u.stride == 1:  # relu(x + pw2(.))
            self.conv(u.pw2, t2, out, relu=True, residual=x.flat())
        else:  # concat(avg_pool(x), relu(pw2(.))): each stored into its channel slice
            self.launch(kc.avg_pool_launch, x=x, out=out, kernel=3, stride=2, padding=1,
                        count_include_pad=True, out_offset=0)
            self.conv(u.pw2, t2, out, relu=True, out_map=kc.ChannelMap(offset=u.in_channels))

    def v2_unit(self, u: V2Unit, x: _Tensor, out: _Tensor) -> None:
        kc = self.kc
        n, _, h, w = x.shape
        _, _, ho, wo = out.shape
        mid = u.pw1.out_channels
        # out = concat(first, branch) [then shuffle(2)]: first = the kept half of x (stride 1) or
        # the projection (stride 2). Where their channel i lands:
        first = u.in_channels - u.pw1.in_channels if u.stride == 1 else u.proj_pw.out_channels
        if u.shuffle_after:
            if first != u.pw2.out_channels:
                raise ValueError(f"{u.name}: shuffle(2) after the concat needs two equal halves")
            first_dst, branch_dst = kc.ChannelMap(step=2), kc.ChannelMap(offset=1, step=2)
        else:
            first_dst, branch_dst = kc.IDENTITY, kc.ChannelMap(offset=first)

        t1, t2 = _Tensor("T1", (n, mid, h, w)), _Tensor("T2", (n, mid, ho, wo))
        if u.stride == 2:
            projected = _Tensor("T1", (n, u.in_channels, ho, wo))
            self.conv(u.proj_dw, x, projected)
            self.conv(u.proj_pw, projected, out, out_map=first_dst)
            self.conv(u.pw1, x, t1)
            self.conv(u.dw, t1, t2)
            self.conv(u.pw2, t2, out, out_map=branch_dst)
            return
        if u.split == "halves":  # kept = x[:, :C/2], branch input = x[:, C/2:]
            kept, branch_in = kc.IDENTITY, kc.ChannelMap(offset=u.in_channels // 2)
        elif u.split == "interleaved":  # kept = x[:, 0::2], branch input = x[:, 1::2]
            kept, branch_in = kc.ChannelMap(step=2), kc.ChannelMap(offset=1, step=2)
        else:
            raise ValueError(f"{u.name}: unknown split {u.split!r}")
        if first != u.pw2.out_channels:
            raise ValueError(f"{u.name}: the kept half ({first}) must match pw2's {u.pw2.out_channels} channels")
        self.conv(u.pw1, x, t1, in_map=branch_in)
        self.conv(u.dw, t1, t2)
        self.conv(u.pw2, t2, out, out_map=branch_dst, carry=(x.flat(), kept, first_dst))


def _tensors_in(value):
    if isinstance(value, _Tensor):
        yield value
    elif type(value) is tuple:
        for v in value:
            yield from _tensors_in(v)
