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

Layout: NCHW, like the rest of npshuffle (see ``kernels.cuda`` for why it suits the GPU), so the
input needs no conversion. The network is the lowered program (``npshuffle.lowering``), one launch
per op; split, concat and shuffle are the ops' channel maps, which ``kernels.cuda`` applies where
a kernel loads its input or stores its output (no launch copies data). The one op the kernels do
not fuse is the head's global pool: the head writes its output and a global pool reads it.
Activations live in a few reused scratch buffers: a value gets a free buffer when an op first
writes it and gives it back after the last op that reads it; each buffer is allocated once, for
the largest value it ever holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .backends import BackendError
from .lowering import AvgPool, Conv, Depthwise, GlobalPool, Linear, MaxPool, Pointwise, Program, Value, lower
from .plan import Plan

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
    """Runs the lowered plan on the GPU; raises BackendError at construction when it cannot (no
    numba.cuda, no GPU). Under ``NUMBA_ENABLE_CUDASIM=1`` it runs on numba's CUDA simulator (slowly)."""

    name = "cuda"

    def __init__(self):
        self.cuda = _import_cuda()  # numba.cuda (raises the BackendError that says why not)

    def prepare(self, plan: Plan, weights: dict[str, np.ndarray]) -> CudaRunner:
        return CudaRunner(plan, weights)


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
            with quiet_occupancy_warnings():
                for launch in self.launches:
                    launch()


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
        self.program = _without_pooled_epilogue(lower(plan, weights))
        self.num_classes = self.program.logits.channels
        self.device_weights = {}  # op name -> (weight, bias) on the device, in the layout its kernel reads
        for op in self.program.ops:
            if hasattr(op, "weight"):
                # a 1x1 conv's weight transposed to (K, O); a linear layer is a 1x1 conv on 1x1 images
                weight = kc.pack_pointwise_weight(op.weight) if isinstance(op, Pointwise | Linear) else op.weight
                self.device_weights[op.name] = (self.cuda.to_device(weight), self.cuda.to_device(op.bias))
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
        with quiet_occupancy_warnings():
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
        """Device buffers and launches for an input of ``shape`` (N, 3, H, W): each value of the
        program gets a scratch buffer (:func:`_assign_buffers`), each buffer is allocated once for
        its largest value, and each op becomes one launch on views of those buffers."""
        n, _, h, w = shape
        shapes = self.program.shapes(h, w)
        buffer_of = _assign_buffers(self.program)
        sizes: dict[str, int] = {}
        for value, name in buffer_of.items():
            sizes[name] = max(sizes.get(name, 0), n * math.prod(shapes[value]))
        buffers = {name: self.cuda.device_array(size, np.float32) for name, size in sizes.items()}

        def tensor(value: Value) -> object:
            """``value`` as an (N, C, H, W) device view of its buffer."""
            buffer, size = buffers[buffer_of[value]], n * math.prod(shapes[value])
            return (buffer if buffer.size == size else buffer[:size]).reshape((n, *shapes[value]))

        stream = self.cuda.stream()
        with quiet_occupancy_warnings():
            launches = [self._launch(op, tensor, shapes).set_stream(stream) for op in self.program.ops]
        ws = Workspace(
            input=tensor(self.program.image),
            logits=tensor(self.program.logits).reshape(n, self.num_classes),
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

    def _launch(self, op, tensor, shapes):
        """The launch of one op (``tensor(value)``: its (N, C, H, W) device view), labelled with
        the op's kind and shape for profiles."""
        kc = self.kc
        weight, bias = self.device_weights.get(op.name, (None, None))
        c, h, w = shapes[op.src]
        x, out = tensor(op.src), tensor(op.dst)
        if isinstance(op, Pointwise):
            extra = {}
            if op.residual is not None:
                extra["residual"] = _flat(tensor(op.residual))
            if op.carry is not None:
                extra["carry"] = (_flat(tensor(op.carry.value)), op.carry.source, op.carry.destination)
            groups = f" g{op.groups}" if op.groups > 1 else ""
            label = f"pointwise {op.in_channels // op.groups}->{op.out_channels}{groups} @{h}x{w}"
            launch = kc.pointwise_launch(_flat(x), weight, bias, _flat(out), groups=op.groups, relu=op.relu,
                                         in_map=op.reads, out_map=op.writes, **extra)
        elif isinstance(op, Depthwise):
            label = f"depthwise {op.kernel}x{op.kernel} s{op.stride} {c}ch @{h}x{w}"
            launch = kc.depthwise_launch(x, weight, bias, out, stride=op.stride, padding=op.padding, relu=op.relu)
        elif isinstance(op, Conv):
            label = f"conv2d {op.kernel}x{op.kernel} s{op.stride} {c}->{op.dst.channels} @{h}x{w}"
            launch = kc.conv2d_launch(x, weight, bias, out, stride=op.stride, padding=op.padding, groups=op.groups,
                                      relu=op.relu)
        elif isinstance(op, MaxPool):
            label = f"max_pool {op.kernel}x{op.kernel} s{op.stride} {c}ch @{h}x{w}"
            launch = kc.max_pool_launch(x, out, kernel=op.kernel, stride=op.stride, padding=op.padding)
        elif isinstance(op, AvgPool):
            if not (op.writes.is_affine and op.writes.step == 1):
                raise BackendError(f"{op.name}: the CUDA average pool writes a contiguous channel range only")
            label = f"avg_pool {op.kernel}x{op.kernel} s{op.stride} {c}ch @{h}x{w}"
            launch = kc.avg_pool_launch(x, out, kernel=op.kernel, stride=op.stride, padding=op.padding,
                                        count_include_pad=True, out_offset=op.writes.offset)
        elif isinstance(op, GlobalPool):
            label = f"global_avg_pool {c}ch @{h}x{w}"
            launch = kc.global_avg_pool_launch(x.reshape(x.shape[0], c, h * w), out.reshape(out.shape[0], -1))
        elif isinstance(op, Linear):
            label = f"linear {op.src.channels}->{op.dst.channels}"
            launch = kc.pointwise_launch(x.reshape(x.shape[0], c, 1), weight, bias, out.reshape(out.shape[0], -1, 1))
        else:
            raise BackendError(f"{op.name}: the CUDA backend has no kernel for {type(op).__name__}")
        launch.label = label
        return launch


def _without_pooled_epilogue(program: Program) -> Program:
    """The program with the head's pooled epilogue split in two (the CUDA kernels do not fuse it):
    the head writes its own output value, which a :class:`GlobalPool` then averages."""
    ops = []
    for op in program.ops:
        if isinstance(op, Pointwise) and op.pool:
            head_out = Value(op.name, op.out_channels)
            ops += [dataclasses.replace(op, dst=head_out, pool=False), GlobalPool("global_pool", head_out, op.dst)]
        else:
            ops.append(op)
    return dataclasses.replace(program, ops=tuple(ops))


def _assign_buffers(program: Program) -> dict[Value, str]:
    """A scratch buffer name for every value: the image and the logits have their own; any other
    value takes a free buffer when an op first writes it (a new one if none is free), and frees it
    after the last op that reads it. (An op's output never shares a buffer with its inputs: those
    are freed only after the op.)"""
    buffer_of = {program.image: "input", program.logits: "logits"}
    free: list[str] = []
    scratch = 0
    for op, dead in zip(program.ops, program.dead_after(), strict=True):
        if op.dst not in buffer_of:
            if not free:
                free.append(f"T{scratch}")
                scratch += 1
            buffer_of[op.dst] = free.pop()
        free += [buffer_of[value] for value in dead if buffer_of[value] != "input"]
    return buffer_of


def _flat(tensor):
    """An (N, C, H, W) device array as the (N, C, H*W) view the 1x1 conv kernel reads."""
    return tensor.reshape(tensor.shape[0], tensor.shape[1], -1)


@contextlib.contextmanager
def quiet_occupancy_warnings():
    """numba-cuda warns "Grid size N will likely result in GPU under-utilization" when it launches
    the small late layers at batch 1: true, and nothing a user can act on. Silenced around this
    backend's own launches only, not with a process-wide filter. (Matched by message: numba-cuda
    raises its own warning class, not numba.core.errors.NumbaPerformanceWarning.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*Grid size \d+ will likely result in GPU under-utilization")
        yield
