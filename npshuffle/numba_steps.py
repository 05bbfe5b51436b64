"""The lowered program (``npshuffle.lowering``) as the Numba kernels' step table.

Two stages, each done once:

1. :class:`PackedWeights` (once per model): every op's weights packed, one after the other, into
   one flat float32 array ``wts`` (and the GEMM tile tables into one int64 array): each 1x1 conv
   and the classifier as (1 + K, NR) panels with the bias in row 0, each depthwise conv as
   (10, C) rows, the stem conv in blocks of 8 output channels (``kernels.cpu.layout``).
2. :class:`StepTable` (once per input size): one step record per kernel launch
   (``kernels.cpu.steps``), each activation placed in the workspace as a padded NHWC buffer,
   and the records packed into the table Numba reads.

How the program's ops become steps:

=============================  ================================================================
op                             step
=============================  ================================================================
Conv (stem) + MaxPool          PhaseInput (the NCHW image into column-phase rows) + StemPool
                               (stem conv + ReLU + max-pool in one pass)
Pointwise                      Gemm. ``reads`` -> its input offset table (so a V2 split or a V1
                               shuffle read back costs no copy); the epilogue -> EPI_STORE
                               (``writes`` affine), EPI_RESIDUAL, EPI_INTERLEAVE (a carry into
                               the even slots, ``writes`` the odd ones: a V2 shuffle),
                               EPI_PASSTHROUGH (a carry into the first channels, ``writes``
                               after them) or EPI_POOL (the head: its outputs summed into the
                               pooled features, never stored)
Depthwise, AvgPool, GlobalPool one step each (3x3, padding 1)
Linear                         the classifier, run by ``kernels.cpu.forward`` after the table
=============================  ================================================================

Buffers: a value gets a workspace region when an op first writes it and gives it back after the
last op that reads it; a region is reused only for a buffer of the same padded shape (the zero
borders written when the workspace was allocated stay valid, as nothing writes a border). A
value's channel stride leaves room for the whole micro-kernel tiles of every 1x1 conv that
writes it, so those store straight from registers (``direct``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from kernels.channel_map import EVEN_CHANNELS, ODD_CHANNELS, ChannelMap

from . import kernel_cache
from .backends import BackendError

# Before kernels.cpu defines its kernels, as Numba picks each one's cache folder then. This is the one
# place npshuffle imports kernels.cpu (backend_numba takes it from here).
kernel_cache.install_locator()
from kernels import cpu  # noqa: E402

from .lowering import AvgPool, Conv, Depthwise, GlobalPool, Linear, MaxPool, Pointwise, Program, Value  # noqa: E402
from .plan import POOL_KERNEL, POOL_PADDING, POOL_STRIDE  # noqa: E402

LANES = cpu.LANES


class _Packer:
    """Appends float32 / int64 blocks to one flat array each, 64-byte aligned."""

    def __init__(self, dtype):
        self.dtype, self.blocks, self.size = dtype, [], 0

    def add(self, block: np.ndarray) -> int:
        block = np.asarray(block, dtype=self.dtype).ravel()
        pad = -self.size % LANES
        if pad:
            self.blocks.append(np.zeros(pad, self.dtype))
            self.size += pad
        offset = self.size
        self.blocks.append(block)
        self.size += block.size
        return offset

    def array(self) -> np.ndarray:
        """The blocks in one array whose start is 64-byte aligned (so is every block, then)."""
        return cpu.aligned_copy(np.concatenate(self.blocks) if self.blocks else np.zeros(0, self.dtype))

    def copy(self) -> _Packer:
        twin = _Packer(self.dtype)
        twin.blocks, twin.size = list(self.blocks), self.size
        return twin


def _add_gemm(wts: _Packer, itab: _Packer, packed, groups: int, k: int, group_out: int) -> cpu.PackedGemm:
    """Append a GEMM layer packed by ``kernels.cpu.pack_gemm`` / ``pack_pointwise`` to the weights
    and the int table; returns where it went."""
    panels, table, group_floats = packed
    return cpu.PackedGemm(weights_at=wts.add(panels), group_floats=group_floats, tiles_at=itab.add(table),
                          ntiles=len(table), groups=groups, group_in=k, group_out=group_out)


class PackedWeights:
    """A program's weights packed once per model (independent of the input size): ``wts``, the
    GEMM layers by op name (``gemms``), the depthwise convs' offsets (``depthwise``), the stem's
    (``stem``), the classifier (``fc``, and ``fc_step``, its one-row table)."""

    def __init__(self, program: Program):
        _check_supported(program)
        self.program = program
        wts, self.itab = _Packer(np.float32), _Packer(np.int64)
        self.gemms: dict[str, cpu.PackedGemm] = {}
        self.depthwise: dict[str, int] = {}
        for op in program.ops:
            if isinstance(op, Conv):
                self.stem = wts.add(cpu.pack_stem(op.weight, op.bias))
            elif isinstance(op, Pointwise):
                g = op.groups
                self.gemms[op.name] = _add_gemm(wts, self.itab, cpu.pack_pointwise(op.weight, op.bias, g), g,
                                                op.in_channels // g, op.out_channels // g)
            elif isinstance(op, Depthwise):
                self.depthwise[op.name] = wts.add(cpu.pack_depthwise(op.weight, op.bias))
            elif isinstance(op, Linear):
                features, classes = op.src.channels, op.dst.channels
                fc = _add_gemm(wts, self.itab, cpu.pack_gemm(op.weight.T[None], op.bias), 1, features, classes)
                self.fc = cpu.Classifier(fc, channel_offsets_at=self.itab.add(np.arange(features)))
                self.fc_step = cpu.pack_steps([self.fc])
        self.wts = wts.array()


@dataclass(frozen=True)
class _Buf:
    """A padded NHWC activation in the workspace: ``channels`` real ones, ``stride`` floats per pixel."""

    offset: int
    h: int
    w: int
    stride: int
    channels: int

    @property
    def nhwc(self) -> cpu.Buffer:
        """The buffer as a step record gives it (``kernels.cpu.Buffer``)."""
        return cpu.Buffer(self.offset, self.h, self.w, self.stride)


class _Workspace:
    """Hands out workspace regions; a released region is reused for the next buffer of the same
    padded shape (so the zero borders written at allocation stay valid)."""

    def __init__(self):
        self.size = 0
        self.free: dict[tuple[int, int, int], list[int]] = {}

    def raw(self, floats: int) -> int:
        offset = self.size
        self.size += -(-floats // LANES) * LANES
        return offset

    def alloc(self, h: int, w: int, channels: int, min_stride: int = 0) -> _Buf:
        stride = cpu.padded(max(channels, min_stride))
        pool = self.free.get((h, w, stride))
        offset = pool.pop() if pool else self.raw((h + 2) * (w + 2) * stride)  # (with its zero border)
        return _Buf(offset, h, w, stride, channels)

    def release(self, b: _Buf) -> None:
        self.free.setdefault((b.h, b.w, b.stride), []).append(b.offset)


def _reach(g: cpu.PackedGemm, first: int) -> int:
    """One past the last channel the whole tiles of a GEMM write, its outputs starting at ``first``."""
    return first + (g.groups - 1) * g.group_out + sum(cpu.tile_widths(g.group_out))


# Splitting a step across the threads pays when each thread gets ~10 us of work or more; below
# that, the fork-join and moving data between the cores' caches cost more than they save. The
# rates (ns per unit of work) are rough single-thread measurements on a 2-core AVX-512 machine.
SPLIT_ABOVE_NS = 10_000
NS_PER_MAC = {cpu.Gemm: 1 / 30, cpu.Depthwise: 1 / 8, cpu.AvgPool: 1 / 16}


def split_policy(step: cpu.Step) -> int:
    """How the threads split one step of a batch-1 pass (see ``kernels.cpu.SPLIT_*``)."""
    if isinstance(step, (cpu.PhaseInput, cpu.StemPool)):
        return cpu.SPLIT_PIXELS
    if isinstance(step, cpu.Gemm):
        g = step.packed
        pixels, columns = step.dst.height * step.dst.width, g.groups * g.ntiles
        work = pixels * g.group_in * g.groups * g.group_out * NS_PER_MAC[cpu.Gemm]
        if step.epilogue == cpu.EPI_POOL:  # threads must own their pooled values: split the columns
            return cpu.SPLIT_COLUMNS if columns > 1 and work >= SPLIT_ABOVE_NS else cpu.SPLIT_NONE
        if pixels >= 64:  # at least 16 pixel tiles
            return cpu.SPLIT_PIXELS if work >= SPLIT_ABOVE_NS else cpu.SPLIT_NONE
        # the last stage's 7x7 pixels: too few tiles to share unless there is plenty of work; with
        # enough output-channel tiles, sharing those is better (each thread reads half the weights).
        # (Not for groups: a grouped layer's tile may spill into the next group, done after it.)
        if g.groups == 1 and columns >= 4 and work >= 2 * SPLIT_ABOVE_NS:
            return cpu.SPLIT_COLUMNS
        return cpu.SPLIT_PIXELS if work >= 2.5 * SPLIT_ABOVE_NS else cpu.SPLIT_NONE
    if isinstance(step, (cpu.Depthwise, cpu.AvgPool)):
        work = step.dst.height * step.dst.width * 9 * step.channels * NS_PER_MAC[type(step)]
        return cpu.SPLIT_PIXELS if work >= SPLIT_ABOVE_NS and step.dst.height >= 8 else cpu.SPLIT_NONE
    return cpu.SPLIT_NONE


def _rounds(splits: list[int]) -> np.ndarray:
    """(first, last) step of each fork-join of a batch-1 pass: one split step, or a run of
    unsplit steps that one thread runs."""
    rounds, first = [], 0
    while first < len(splits):
        last = first + 1
        if splits[first] == cpu.SPLIT_NONE:
            while last < len(splits) and splits[last] == cpu.SPLIT_NONE:
                last += 1
        rounds.append((first, last))
        first = last
    return np.array(rounds, np.int64).reshape(-1, 2)


def _epilogue(op: Pointwise) -> dict:
    """A 1x1 conv's epilogue as ``kernels.cpu.Gemm`` fields (mode, out_first, out_step, pass_*)."""
    if op.pool:
        if op.groups != 1:
            raise BackendError(f"{op.name}: the numba backend pools the output of an ungrouped 1x1 conv only")
        return dict(epilogue=cpu.EPI_POOL)
    if not op.writes.is_affine:
        raise BackendError(f"{op.name}: the numba backend writes through affine channel maps only")
    if op.residual is not None:
        if not op.writes.is_identity or op.carry is not None:
            raise BackendError(f"{op.name}: a residual add needs the output in place")
        return dict(epilogue=cpu.EPI_RESIDUAL)
    if op.carry is None:
        return dict(epilogue=cpu.EPI_STORE, out_first=op.writes.offset, out_step=op.writes.step)
    source, destination = op.carry.source, op.carry.destination
    if not source.is_affine:
        raise BackendError(f"{op.name}: the numba backend carries channels through affine maps only")
    passthrough = dict(pass_from=source.offset, pass_step=source.step)
    if destination == EVEN_CHANNELS and op.writes == ODD_CHANNELS:  # concat then shuffle(2)
        return dict(epilogue=cpu.EPI_INTERLEAVE, **passthrough)
    if destination.is_identity and op.writes == ChannelMap(offset=op.out_channels):  # concat
        return dict(epilogue=cpu.EPI_PASSTHROUGH, out_first=op.writes.offset, **passthrough)
    raise BackendError(f"{op.name}: the numba backend has no epilogue for carry {destination} beside {op.writes}")


class StepTable:
    """A program's steps for one input size: ``records`` (and ``labels``, the op each came from),
    the packed table ``steps`` with each step's thread ``splits`` and the ``rounds`` of a batch-1
    pass, the int table ``itab``, the workspace size ``ws_size`` (floats per thread), and the
    width of the pooled ``features`` row; and the workspaces, lent to one call at a time
    (:meth:`take_workspace`), so that calls from several Python threads may run at once."""

    def __init__(self, packed: PackedWeights, height: int, width: int):
        self.packed = packed
        self.program = program = packed.program
        self._itab = packed.itab.copy()
        self._ws = _Workspace()
        self.records: list[cpu.Step] = []
        self.labels: list[str] = []
        self.op_names: list[tuple[str, ...]] = []  # per step, the program ops it computes (fused steps: several)
        self.shapes = program.shapes(height, width)
        self._strides = self._min_strides()
        self._dead_after = program.dead_after()
        self._bufs: dict[Value, _Buf] = {}
        self._build(height, width)
        self.splits = [split_policy(step) for step in self.records]
        self.steps, self.rounds = cpu.pack_steps(self.records, self.splits), _rounds(self.splits)
        self.itab, self.ws_size = self._itab.array(), self._ws.size
        self.features = cpu.padded(program.features.channels)
        self._spare: list[np.ndarray] = []  # workspaces no call is using (take_workspace / give_back)
        self._spare_lock = threading.Lock()

    def take_workspace(self, nthreads: int) -> np.ndarray:
        """A workspace of ``nthreads`` rows (float32 (nthreads, ws_size), 64-byte aligned, its buffers'
        zero borders intact) that no other call is using: a spare one given back by an earlier call,
        else a new one. Hand it back with :meth:`give_back` once the call is over."""
        with self._spare_lock:
            for i, ws in enumerate(self._spare):
                if ws.shape[0] >= nthreads:
                    return self._spare.pop(i)
        return cpu.aligned_zeros((nthreads, self.ws_size), np.float32)  # (ws_size: whole vectors)

    def give_back(self, ws: np.ndarray) -> None:
        with self._spare_lock:
            self._spare.append(ws)

    def outputs(self, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
        """New pooled features (n, padded features) and logits (n, classes) for one call, float32,
        64-byte aligned (the kernels zero the features before summing into them)."""
        return cpu.aligned_zeros((n, self.features), np.float32), cpu.aligned_zeros((n, classes), np.float32)

    # -- buffers ---------------------------------------------------------------------------------

    def _min_strides(self) -> dict[Value, int]:
        """Per value, a channel stride with room for the whole tiles of every 1x1 conv that writes
        it: past its first output channel, or twice its width when it interleaves (a V2 shuffle)."""
        strides: dict[Value, int] = {}
        for op in self.program.ops:
            if isinstance(op, Pointwise) and not op.pool:
                g = self.packed.gemms[op.name]
                room = 2 * cpu.padded(op.out_channels) if op.writes == ODD_CHANNELS else _reach(g, op.writes.offset)
                strides[op.dst] = max(strides.get(op.dst, 0), room)
        return strides

    def _buffer(self, value: Value) -> _Buf:
        """``value``'s buffer, allocated when an op first writes it."""
        if value not in self._bufs:
            _, h, w = self.shapes[value]
            self._bufs[value] = self._ws.alloc(h, w, value.channels, self._strides.get(value, 0))
        return self._bufs[value]

    def _release_after(self, index: int) -> None:
        """Give back the buffers of the values op ``index`` was the last to read."""
        for value in self._dead_after[index]:
            if value in self._bufs:  # (the image and the stem's output live outside the workspace)
                self._ws.release(self._bufs[value])

    # -- steps -----------------------------------------------------------------------------------

    def _step(self, label: str, record: cpu.Step, ops: tuple[str, ...] | None = None) -> None:
        """Append a step; ``ops``: the names of the program's ops it computes (None: ``label``)."""
        self.records.append(record)
        self.labels.append(label)
        self.op_names.append((label,) if ops is None else ops)

    def _build(self, height: int, width: int) -> None:
        ops = self.program.ops
        self._stem(ops[0], ops[1], height, width)
        for index, op in enumerate(ops[2:], start=2):
            if isinstance(op, Pointwise):
                self._gemm(op)
            elif isinstance(op, Depthwise):
                self._step(op.name, cpu.Depthwise(self._buffer(op.src).nhwc, self._buffer(op.dst).nhwc,
                                                  channels=cpu.padded(op.src.channels), stride=op.stride,
                                                  relu=op.relu, weights_at=self.packed.depthwise[op.name]))
            elif isinstance(op, AvgPool):
                self._step(op.name, cpu.AvgPool(self._buffer(op.src).nhwc, self._buffer(op.dst).nhwc,
                                                channels=cpu.padded(op.src.channels), stride=op.stride,
                                                out_first=op.writes.offset))
            elif isinstance(op, GlobalPool):  # (and Linear: the classifier runs after the table)
                self._step(op.name, cpu.GlobalPool(self._buffer(op.src).nhwc, channels=cpu.padded(op.src.channels)))
            self._release_after(index)

    def _stem(self, conv: Conv, pool: MaxPool, height: int, width: int) -> None:
        """The first two ops, the stem conv and its max-pool, as one fused step (after the input's)."""
        q = cpu.stem_geometry(height, width).q
        rows = self._ws.raw(conv.src.channels * (height + 2) * 4 * q)
        self._step("input", cpu.PhaseInput(rows_at=rows, phase_row=q), ())  # (a copy: no op of the program)
        self._step("stem+max_pool", cpu.StemPool(
            rows_at=rows, phase_row=q, image_height=height, image_width=width, image_channels=conv.src.channels,
            dst=self._buffer(pool.dst).nhwc, weights_at=self.packed.stem, out_channels=conv.dst.channels),
            (conv.name, pool.name))

    def _gemm(self, op: Pointwise) -> None:
        g = self.packed.gemms[op.name]
        epilogue = _epilogue(op)
        src = self._buffer(op.src)
        dst = src if op.pool else self._buffer(op.dst)  # (pooled: dst only gives the pixel count)
        side = op.residual if op.residual is not None else (op.carry.value if op.carry is not None else None)
        aux = None if side is None else self._bufs[side]
        label = op.name + ("+add" if op.residual is not None else "+pool" if op.pool else "")
        self._step(label, cpu.Gemm(g, src.nhwc, dst.nhwc, self._itab.add(op.reads.indices(op.in_channels)), op.relu,
                                   aux=None if aux is None else aux.nhwc, direct=_direct(g, dst, aux, epilogue),
                                   **epilogue), (op.name,))


def _check_supported(program: Program) -> None:
    """Raise BackendError, naming the layer, for an op the kernels cannot run (checked when a model
    is prepared, not on its first call)."""
    conv, pool = program.ops[0], program.ops[1]
    if not (isinstance(conv, Conv) and isinstance(pool, MaxPool) and pool.src == conv.dst
            and (conv.kernel, conv.stride, conv.padding, conv.groups, conv.relu) == (3, 2, 1, 1, True)
            and (pool.kernel, pool.stride, pool.padding) == (POOL_KERNEL, POOL_STRIDE, POOL_PADDING)):
        raise BackendError(f"{conv.name}: the numba backend's stem kernel needs a 3x3 conv, stride 2, padding "
                           "1, ungrouped, with ReLU, then a 3x3 max-pool, stride 2, padding 1")
    for op in program.ops[2:]:
        if isinstance(op, Pointwise):
            _epilogue(op)
        elif isinstance(op, (Depthwise, AvgPool)):
            if (op.kernel, op.padding) != (3, 1):
                raise BackendError(f"{op.name}: the numba backend's window ops are 3x3 with padding 1")
            if isinstance(op, AvgPool) and not (op.writes.is_affine and op.writes.step == 1):
                raise BackendError(f"{op.name}: the numba backend pools into a contiguous channel range only")
        elif not isinstance(op, (GlobalPool, Linear)):
            raise BackendError(f"{op.name}: the numba backend has no kernel for {type(op).__name__}")


def _direct(g: cpu.PackedGemm, dst: _Buf, aux: _Buf | None, epilogue: dict) -> bool:
    """May the micro-kernel store whole tiles straight into ``dst`` (and read whole tiles of the
    residual / passthrough)? Only if every channel a tile touches lies inside the pixel's channel
    stride, for the output and for the auxiliary input. (A grouped layer's tile may spill into the
    next group's channels: the next group, computed after it by the same thread, overwrites them.)"""
    mode = epilogue["epilogue"]
    if mode in (cpu.EPI_STORE, cpu.EPI_RESIDUAL) and epilogue.get("out_step", 1) == 1:
        reach = _reach(g, epilogue.get("out_first", 0))
        return reach <= dst.stride and (mode == cpu.EPI_STORE or reach <= aux.stride)
    if mode == cpu.EPI_INTERLEAVE:
        return g.groups == 1 and dst.stride >= 2 * _reach(g, 0) and epilogue["pass_step"] == 1
    return False
