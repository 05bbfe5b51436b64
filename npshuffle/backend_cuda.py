"""The CUDA backend: a whole ShuffleNet on an NVIDIA GPU through numba.cuda (``kernels.cuda``).

    runner = CudaBackend().prepare(plan, weights)     # weights -> GPU, once
    logits = runner(batch)                            # NCHW float32 (N, 3, H, W) -> (N, classes)

What happens where:

* ``prepare`` uploads every weight once, already in the layout its kernel reads (1x1 weights
  transposed to (in, out), the classifier too), and returns a :class:`CudaRunner`.
* The first call with a new input shape builds a :class:`Workspace` for it: device buffers for
  every activation and the network as a list of :class:`kernels.cuda.Launch` es, each with its
  grid and arguments bound. Later calls with that shape reuse it.
* A call copies the batch to the GPU (the only host->device copy), runs the network, and copies
  the logits back (the only device->host copy), all on the workspace's own stream, then waits.

Three things keep a call fast (each can be turned off, for comparisons: ``CudaRunner(...,
graphs=False, pinned=False, copy_threads=1)``):

* **CUDA graph.** The first call of a shape runs the launches one by one (which compiles the
  kernels), then captures them into a CUDA graph (``kernels.cuda.CudaGraph``), replays it and
  checks that the replay gives bit for bit the same logits; later calls replay the graph: one
  driver call instead of ~60 launches through numba's Python dispatch (tens of microseconds
  each). Where no graph can be built (the simulator, an old cuda.core) or the check fails, calls
  use the launches; ``Workspace.graph_error`` says why. ``NPSHUFFLE_CUDA_GRAPHS=0`` turns graphs off.
* **Pinned staging.** A copy from ordinary (pageable) host memory runs at a few GB/s: the driver
  bounces it through its own small pinned buffer. Each workspace owns a page-locked input buffer
  and output buffer (``cuda.pinned_array``), allocated once: the call copies the batch into it,
  from which the GPU's copy engine reads at full PCIe speed, asynchronously on the stream.
* **Chunked, threaded staging.** A large batch is staged in chunks of whole images
  (``copy_chunk_bytes``, default 8 MiB) by a few threads (``copy_threads``; NumPy's copy releases
  the GIL), and each chunk's host->device copy is enqueued as soon as that chunk is staged, so the
  host copy, the PCIe transfer and the other chunks' host copies overlap.

The call still starts from the caller's ordinary NumPy array and returns an ordinary NumPy array
(a copy of the pinned output buffer, which the next call overwrites).

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
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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
    """Everything one input shape needs: its buffers, its stream, its launches (and their graph)."""

    input: object  # device (N, 3, H, W)
    logits: object  # device (N, classes)
    launches: list
    buffer_bytes: int
    stream: object = None  # numba stream every copy and kernel of a call goes on
    graph: object = None  # kernels.cuda.CudaGraph of the launches, once captured and checked
    graph_error: str | None = None  # why there is no graph, if there is none
    pinned_input: object = None  # page-locked host (N, 3, H, W), or None: copy from pageable memory
    pinned_logits: object = None  # page-locked host (N, classes), or None
    chunks: list = field(default_factory=list)  # (first image, end image, device view) per staging chunk

    def run(self) -> None:
        """Enqueue the network on the stream (the graph if there is one) and return at once."""
        if self.graph is not None:
            self.graph.launch()
        else:
            for launch in self.launches:
                launch()


def _conv_size(layer: ConvLayer, h: int, w: int) -> tuple[int, int]:
    s, p, k = layer.stride, layer.padding, layer.kernel
    return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


class CudaRunner:
    """``runner(x)``: logits of an NCHW float32 batch, computed on the GPU."""

    def __init__(
        self,
        plan: Plan,
        weights: dict[str, np.ndarray],
        *,
        graphs: bool | None = None,
        pinned: bool = True,
        copy_threads: int | None = None,
        copy_chunk_bytes: int = 8 << 20,
    ):
        from kernels import cuda as kc  # imports numba.cuda: only once a CudaBackend exists

        if graphs is None:
            graphs = os.environ.get("NPSHUFFLE_CUDA_GRAPHS", "1") != "0"
        self.graphs, self.pinned = graphs, pinned
        self.copy_threads = max(1, min(8, (os.cpu_count() or 2) // 2)) if copy_threads is None else copy_threads
        self.copy_chunk_bytes = copy_chunk_bytes
        self._pool = None  # ThreadPoolExecutor for staging, made on first need

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
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a batch of shape (N, 3, H, W), got {x.shape}")
        shape = tuple(x.shape)
        ws = self.workspaces.get(shape)
        if ws is None:
            ws = self.workspaces[shape] = self.build_workspace(shape)
            self.copy_in(x, ws)
            self._first_run(ws)
        else:
            self.copy_in(x, ws)
            ws.run()
        return self.copy_out(ws)

    # ------------------------------------------------------------------------------------------
    # A call's three steps

    def copy_in(self, x: np.ndarray, ws: Workspace) -> None:
        """Enqueue the batch's host->device copy on ``ws.stream`` (through the pinned buffer, in
        chunks, when there is one). Returns once ``x`` may be overwritten by the caller."""
        if ws.pinned_input is None:
            ws.input.copy_to_device(np.ascontiguousarray(x, dtype=np.float32), stream=ws.stream)
            ws.stream.synchronize()  # a pageable copy may still read x after returning
            return
        pinned = ws.pinned_input
        if len(ws.chunks) == 1 or self.copy_threads == 1:
            for first, end, device in ws.chunks:
                np.copyto(pinned[first:end], x[first:end], casting="unsafe")
                device.copy_to_device(pinned[first:end], stream=ws.stream)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.copy_threads, thread_name_prefix="npshuffle-stage")
        staged = [
            self._pool.submit(np.copyto, pinned[first:end], x[first:end], casting="unsafe")
            for first, end, _ in ws.chunks
        ]
        for (first, end, device), done in zip(ws.chunks, staged, strict=True):
            done.result()  # this chunk is in pinned memory: let the copy engine take it
            device.copy_to_device(pinned[first:end], stream=ws.stream)

    def copy_out(self, ws: Workspace) -> np.ndarray:
        """Enqueue the logits' device->host copy, wait for the stream, return them (a new array)."""
        if ws.pinned_logits is None:
            logits = ws.logits.copy_to_host(stream=ws.stream)
            ws.stream.synchronize()
            return logits
        ws.logits.copy_to_host(ws.pinned_logits, stream=ws.stream)
        ws.stream.synchronize()
        return ws.pinned_logits.copy()

    def _first_run(self, ws: Workspace) -> None:
        """The first call of a shape: the launches one by one (compiling the kernels), then, if
        graphs are on, capture them, replay the graph and keep it only if it reproduces the
        launches' logits bit for bit (same kernels, same buffers: it must)."""
        for launch in ws.launches:
            launch()
        if not self.graphs:
            ws.graph_error = "graphs turned off"
            return
        expected = ws.logits.copy_to_host(stream=ws.stream)
        ws.stream.synchronize()
        try:
            graph = self.kc.CudaGraph(ws.launches, ws.stream)
        except self.kc.GraphUnavailable as exc:
            ws.graph_error = str(exc)
            return
        try:
            graph.launch()
            replayed = ws.logits.copy_to_host(stream=ws.stream)
            ws.stream.synchronize()
        except Exception as exc:  # a driver that captured but will not replay: keep the launches
            ws.graph_error = f"graph replay failed: {type(exc).__name__}: {exc}"
            return
        if np.array_equal(expected, replayed, equal_nan=True):
            ws.graph = graph
        else:
            ws.graph_error = "the graph's replay did not reproduce the launches' logits: not used"

    def close(self) -> None:
        """Stop the staging threads (they also stop with the process)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

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
        for _, args, _ in steps:
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

        stream = self.cuda.stream()
        launches = []
        for factory, args, label in steps:
            launch = factory(**{k: bind(v) for k, v in args.items()})
            launch.label = label
            launches.append(launch.set_stream(stream))
        ws = Workspace(
            input=bind(x),
            logits=buffers["logits"].reshape(n, self.num_classes),
            launches=launches,
            buffer_bytes=4 * sum(sizes.values()),
            stream=stream,
        )
        if self.pinned:
            ws.pinned_input = self.cuda.pinned_array(tuple(shape), np.float32)
            ws.pinned_logits = self.cuda.pinned_array((n, self.num_classes), np.float32)
            image_bytes = 4 * math.prod(shape[1:])
            per_chunk = max(1, self.copy_chunk_bytes // image_bytes)
            ws.chunks = [(first, min(n, first + per_chunk), ws.input[first:min(n, first + per_chunk)])
                         for first in range(0, n, per_chunk)]
        return ws

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

    def launch(self, factory, label: str = "", **args) -> None:
        """One step; ``label`` (kind and shape) names it in profiles (``Launch.label``)."""
        self.steps.append((factory, args, label or factory.__name__.removesuffix("_launch")))

    def conv(self, layer: ConvLayer, src: _Tensor, dst: _Tensor, **fused) -> None:
        """One step for ``layer``: a 1x1 conv (``fused``: its channel maps, residual, carry, and a
        ReLU that overrides the layer's), a depthwise conv or a dense one (the stem)."""
        kc = self.kc
        weight, bias = self.weights[f"{layer.name}.weight"], self.weights[f"{layer.name}.bias"]
        _, c_in, h, w = src.shape
        if layer.kernel == 1:
            fused.setdefault("relu", layer.relu)
            label = (f"pointwise {layer.in_channels // layer.groups}->{layer.out_channels}"
                     f"{f' g{layer.groups}' if layer.groups > 1 else ''} @{h}x{w}")
            self.launch(kc.pointwise_launch, label, x=src.flat(), wt=weight, bias=bias, out=dst.flat(),
                        groups=layer.groups, **fused)
        elif layer.groups == layer.in_channels == layer.out_channels and layer.groups > 1:
            label = f"depthwise {layer.kernel}x{layer.kernel} s{layer.stride} {c_in}ch @{h}x{w}"
            self.launch(kc.depthwise_launch, label, x=src, w=weight, bias=bias, out=dst,
                        stride=layer.stride, padding=layer.padding, relu=layer.relu)
        else:
            label = f"conv2d {layer.kernel}x{layer.kernel} s{layer.stride} {c_in}->{layer.out_channels} @{h}x{w}"
            self.launch(kc.conv2d_launch, label, x=src, w=weight, bias=bias, out=dst,
                        stride=layer.stride, padding=layer.padding, groups=layer.groups, relu=layer.relu)

    def network(self, plan: Plan, x: _Tensor, logits: _Tensor) -> None:
        n, _, h, w = x.shape
        h, w = _conv_size(plan.stem, h, w)
        stem = _Tensor("T1", (n, plan.stem.out_channels, h, w))
        self.conv(plan.stem, x, stem)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # max-pool 3x3 s2 p1
        cur = _Tensor("A", (n, plan.stem.out_channels, h, w))
        self.launch(self.kc.max_pool_launch, f"max_pool 3x3 s2 {stem.shape[1]}ch @{stem.shape[2]}x{stem.shape[3]}",
                    x=stem, out=cur, kernel=3, stride=2, padding=1)

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
        self.launch(self.kc.global_avg_pool_launch, f"global_avg_pool {cur.shape[1]}ch @{h}x{w}",
                    x=cur.flat(), out=_Tensor("T2", (n, c.in_features)))
        features = _Tensor("T2", (n, c.in_features, 1))  # the pooled features as N 1x1 images
        weight, bias = self.weights[f"{c.name}.weight"], self.weights[f"{c.name}.bias"]
        self.launch(self.kc.pointwise_launch, f"linear {c.in_features}->{c.num_classes}",
                    x=features, wt=weight, bias=bias, out=logits)

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
            self.launch(kc.avg_pool_launch, f"avg_pool 3x3 s2 {x.shape[1]}ch @{h}x{w}", x=x, out=out,
                        kernel=3, stride=2, padding=1,
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
