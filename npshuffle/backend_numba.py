"""The Numba backend: a plan compiled into a table of kernel launches over one flat workspace.

``NumbaBackend().prepare(plan, weights)`` does all the one-time work:

1. **packs the weights** (once) into ``wts``, one flat float32 array: every GEMM layer (1x1
   convs, classifier) as (1 + K, NR) panels with the bias in row 0 (see ``kernels.cpu``), every
   depthwise conv as (10, C) rows, channel counts padded to multiples of 16, and the stem conv
   in blocks of 8 output channels for the fused stem + max-pool kernel;
2. **compiles the plan into steps** (once per input size): one record per kernel launch
   (``kernels.cpu.Gemm``, ``Depthwise``, ...; packed by ``kernels.cpu.pack_steps`` into the
   table Numba reads), saying where each activation lives in the workspace and how each layer
   reads and writes channels. Channel split, concat and shuffle become *index maps* inside those
   records:

   ==============================  ============================================================
   plan says                       the steps do
   ==============================  ============================================================
   V2 split (halves/interleaved)   pw1 reads its half through its offset table (``C/2 + k`` or
                                   ``2k + 1``); nothing is copied out
   V2 concat + shuffle(2)          pw2 writes main-branch channel j to output slot 2j + 1 and, in
                                   the same pass, copies passthrough channel j to slot 2j
   V2 concat (Megvii)              pw2 writes to slots C/2 + j and copies passthrough 2j -> j
   V2 stride 2 concat + shuffle    proj_pw writes a buffer of its own, which pw2 interleaves with
                                   its outputs as above (Megvii: proj_pw slots j, pw2 cin + j)
   V1 shuffle after pw1            the depthwise filters are permuted and pw2 reads its groups'
                                   channels through the permutation: no data moves
   V1 stride-1 add + ReLU          pw2's epilogue adds the unit input and applies the ReLU
   V1 stride-2 concat              the average pool writes channels [0, cin), pw2 [cin, cout)
   head conv + global pool         the head's epilogue sums into the pooled features; the head's
                                   output is never stored
   ==============================  ============================================================

3. **allocates the workspaces** (once per input size and thread count): buffers of the same
   shape are reused between units, so a stage ping-pongs between two output buffers and one
   scratch buffer per intermediate, and stays in cache. Output buffers get a channel stride with
   room for the micro-kernel's whole tiles, so it can store straight from its registers.

A call is then one compiled call from Python (``kernels.cpu.forward``): a batch runs image by
image on each thread; a single image has each step with enough work split across the threads
(see ``_split_policy``), or runs on one thread, as the runner's ``schedule`` says (see
:class:`NumbaRunner`; by default it times both and uses the faster, :class:`_AdaptiveSchedule`).
Nothing large is allocated per call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import children, kernel_cache
from .backends import BackendError
from .plan import ConvLayer, Plan, V1Unit, V2Unit

try:
    import numba

    kernel_cache.install_locator()  # before the kernels are defined: Numba picks their cache folder then
    from kernels import cpu
except ImportError as exc:  # pragma: no cover - exercised only without numba
    raise BackendError(f"the numba backend needs the numba package ({exc}); use backend='numpy'") from None

LANES = cpu.LANES
COMPILE_NOTICE_AFTER_S = 1.0


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
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0, self.dtype)


def _add_gemm(wts: _Packer, itab: _Packer, packed, groups: int, k: int, group_out: int) -> cpu.PackedGemm:
    """Append a GEMM layer packed by ``kernels.cpu.pack_gemm`` / ``pack_pointwise`` to the weights
    and the int table; returns where it went."""
    panels, table, group_floats = packed
    return cpu.PackedGemm(weights_at=wts.add(panels), group_floats=group_floats, tiles_at=itab.add(table),
                          ntiles=len(table), groups=groups, group_in=k, group_out=group_out)


@dataclass(frozen=True)
class _Buf:
    """A padded NHWC activation in the workspace: ``channels`` real ones, stride ``c``."""

    offset: int
    h: int
    w: int
    c: int
    channels: int

    @property
    def nhwc(self) -> cpu.Buffer:
        """The buffer as a step record gives it (``kernels.cpu.Buffer``)."""
        return cpu.Buffer(self.offset, self.h, self.w, self.c)


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
        c = cpu.padded(max(channels, min_stride))
        pool = self.free.get((h, w, c))
        offset = pool.pop() if pool else self.raw((h + 2) * (w + 2) * c)
        return _Buf(offset, h, w, c, channels)

    def release(self, *bufs: _Buf) -> None:
        for b in bufs:
            self.free.setdefault((b.h, b.w, b.c), []).append(b.offset)


def _reach(g: cpu.PackedGemm, first: int) -> int:
    """One past the last channel the whole tiles of a GEMM write, its outputs starting at ``first``."""
    return first + (g.groups - 1) * g.group_out + sum(cpu.tile_widths(g.group_out))


# Splitting a step across the threads pays when each thread gets ~10 us of work or more; below
# that, the fork-join and moving data between the cores' caches cost more than they save. The
# rates (ns per unit of work) are rough single-thread measurements on a 2-core AVX-512 machine.
SPLIT_ABOVE_NS = 10_000
NS_PER_MAC = {cpu.Gemm: 1 / 30, cpu.Depthwise: 1 / 8, cpu.AvgPool: 1 / 16}


def _split_policy(step: cpu.Step) -> int:
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


def _conv_out(size: int, layer: ConvLayer) -> int:
    return (size + 2 * layer.padding - layer.kernel) // layer.stride + 1


class _Compiler:
    """Plan + packed weights + input size -> step table, offset tables, workspace size."""

    def __init__(self, packed: _PackedPlan, height: int, width: int):
        self.p = packed
        self.itab = _Packer(np.int64)
        self.itab.blocks, self.itab.size = list(packed.itab_blocks), packed.itab_size
        self.ws = _Workspace()
        self.records: list[cpu.Step] = []
        self.labels: list[str] = []
        self._build(height, width)

    def step(self, label: str, record: cpu.Step) -> None:
        self.records.append(record)
        self.labels.append(label)

    # -- step builders ---------------------------------------------------------------------------

    def gemm(self, label, g: cpu.PackedGemm, src: _Buf, dst: _Buf, koff: np.ndarray, relu: bool,
             mode: int = cpu.EPI_STORE, aux: _Buf | None = None, out_first: int = 0, pass_from: int = 0,
             pass_step: int = 1) -> None:
        direct = self._direct(g, dst, mode, aux, out_first, pass_step)
        self.step(label, cpu.Gemm(g, src.nhwc, dst.nhwc, self.itab.add(koff), relu, mode, out_first=out_first,
                                  aux=None if aux is None else aux.nhwc, pass_from=pass_from, pass_step=pass_step,
                                  direct=direct))

    @staticmethod
    def _direct(g: cpu.PackedGemm, dst: _Buf, mode: int, aux: _Buf | None, out_first: int, pass_step: int) -> bool:
        """May the micro-kernel store whole tiles straight into ``dst`` (and read whole tiles of the
        residual / passthrough)? Only if every channel a tile touches lies inside the pixel's
        channel stride, for the output and for the auxiliary input. (A grouped layer's tile may
        spill into the next group's channels: the next group, computed after it by the same
        thread, overwrites them.)"""
        if mode == cpu.EPI_STORE or mode == cpu.EPI_RESIDUAL:
            reach = _reach(g, out_first)
            return reach <= dst.c and (mode == cpu.EPI_STORE or reach <= aux.c)
        if mode == cpu.EPI_INTERLEAVE:
            return g.groups == 1 and dst.c >= 2 * _reach(g, 0) and pass_step == 1
        return False

    def depthwise(self, layer: ConvLayer, src: _Buf, dst: _Buf) -> None:
        self.step(layer.name, cpu.Depthwise(src.nhwc, dst.nhwc, channels=cpu.padded(layer.in_channels),
                                            stride=layer.stride, relu=layer.relu,
                                            weights_at=self.p.depthwise[layer.name]))

    def avg_pool(self, label: str, src: _Buf, dst: _Buf, stride: int) -> None:
        self.step(label, cpu.AvgPool(src.nhwc, dst.nhwc, channels=cpu.padded(src.channels), stride=stride))

    # -- the network -----------------------------------------------------------------------------

    def _build(self, height: int, width: int) -> None:
        plan = self.p.plan
        stem = plan.stem
        _, _, hp, wp, _, q = cpu.stem_geometry(height, width)
        image = self.ws.raw(stem.in_channels * (height + 2) * 4 * q)
        self.step("input", cpu.PhaseInput(rows_at=image, phase_row=q))
        x = self.ws.alloc(hp, wp, stem.out_channels)
        self.step("stem+max_pool", cpu.StemPool(
            rows_at=image, phase_row=q, image_height=height, image_width=width, image_channels=stem.in_channels,
            dst=x.nhwc, weights_at=self.p.stem, out_channels=stem.out_channels))
        for unit in plan.units:
            out = self.v1_unit(unit, x) if isinstance(unit, V1Unit) else self.v2_unit(unit, x)
            self.ws.release(x)
            x = out
        if plan.head is not None:
            g = self.p.gemms[plan.head.name]
            self.gemm(plan.head.name + "+pool", g, x, x, np.arange(g.group_in), plan.head.relu, mode=cpu.EPI_POOL)
        else:
            self.step("global_pool", cpu.GlobalPool(x.nhwc, channels=cpu.padded(x.channels)))
        self.features = cpu.padded(plan.classifier.in_features)

    def v2_unit(self, u: V2Unit, x: _Buf) -> _Buf:
        p, ws = self.p, self.ws
        ho, wo = _conv_out(x.h, u.dw), _conv_out(x.w, u.dw)
        # a shuffled output gets room for pw2's whole tiles, interleaved (see _direct)
        out = ws.alloc(ho, wo, u.out_channels, 2 * cpu.padded(u.out_channels // 2) if u.shuffle_after else 0)
        mid = u.pw1.out_channels
        if u.stride == 1:
            half = x.channels // 2
            if u.split == "halves":
                main, pass_from, pass_step = half + np.arange(half), 0, 1
            else:  # interleaved: passthrough = even channels, main branch = odd channels
                main, pass_from, pass_step = 2 * np.arange(half) + 1, 0, 2
            m1 = ws.alloc(x.h, x.w, mid)
            self.gemm(u.pw1.name, p.gemms[u.pw1.name], x, m1, main, u.pw1.relu)
            m2 = ws.alloc(ho, wo, mid)
            self.depthwise(u.dw, m1, m2)
            epi = dict(aux=x, pass_from=pass_from, pass_step=pass_step)
            if u.shuffle_after:  # shuffle(concat(pass, main), 2): pass j -> 2j, main j -> 2j + 1
                self.gemm(u.pw2.name, p.gemms[u.pw2.name], m2, out, np.arange(mid), u.pw2.relu,
                          mode=cpu.EPI_INTERLEAVE, **epi)
            else:  # concat(pass, main)
                self.gemm(u.pw2.name, p.gemms[u.pw2.name], m2, out, np.arange(mid), u.pw2.relu,
                          mode=cpu.EPI_PASSTHROUGH, out_first=half, **epi)
            ws.release(m1, m2)
            return out
        # stride 2: concat(proj(x), main(x)), then maybe shuffle(2)
        n_proj = u.proj_pw.out_channels
        t1 = ws.alloc(ho, wo, x.channels)
        self.depthwise(u.proj_dw, x, t1)
        m1 = ws.alloc(x.h, x.w, mid)
        self.gemm(u.pw1.name, p.gemms[u.pw1.name], x, m1, np.arange(x.channels), u.pw1.relu)
        m2 = ws.alloc(ho, wo, mid)
        self.depthwise(u.dw, m1, m2)
        if u.shuffle_after:
            if n_proj != u.pw2.out_channels:
                raise BackendError(f"{u.name}: shuffle(2) after a concat of unequal branches is not supported")
            # shuffle(concat(proj, main), 2): proj j -> 2j, main j -> 2j + 1. The projection goes to a
            # buffer of its own, which pw2 then interleaves with its outputs exactly as a stride-1
            # unit's pw2 does with the passthrough half (two whole-tile stores instead of two
            # stride-2 scatters)
            t2 = ws.alloc(ho, wo, n_proj)
            self.gemm(u.proj_pw.name, p.gemms[u.proj_pw.name], t1, t2, np.arange(x.channels), u.proj_pw.relu)
            self.gemm(u.pw2.name, p.gemms[u.pw2.name], m2, out, np.arange(mid), u.pw2.relu, mode=cpu.EPI_INTERLEAVE,
                      aux=t2, pass_from=0, pass_step=1)
            ws.release(t2)
        else:  # concat(proj, main)
            self.gemm(u.proj_pw.name, p.gemms[u.proj_pw.name], t1, out, np.arange(x.channels), u.proj_pw.relu)
            self.gemm(u.pw2.name, p.gemms[u.pw2.name], m2, out, np.arange(mid), u.pw2.relu, out_first=n_proj)
        ws.release(t1, m1, m2)
        return out

    def v1_unit(self, u: V1Unit, x: _Buf) -> _Buf:
        p, ws = self.p, self.ws
        ho, wo = _conv_out(x.h, u.dw), _conv_out(x.w, u.dw)
        g1, g2 = p.gemms[u.pw1.name], p.gemms[u.pw2.name]
        first = 0 if u.stride == 1 else u.in_channels  # stride 2: pw2 writes after the pooled shortcut
        # channel strides with room for whole tiles (see _direct); a stride-1 unit's input, read as
        # the residual, is the previous unit's output, allocated the same way
        out = ws.alloc(ho, wo, u.out_channels, _reach(g2, first))
        mid = u.pw1.out_channels
        m1 = ws.alloc(x.h, x.w, mid, _reach(g1, 0))
        self.gemm(u.pw1.name, g1, x, m1, np.arange(g1.groups * g1.group_in), u.pw1.relu)  # group g: channels g*k ..
        m2 = ws.alloc(ho, wo, mid)
        self.depthwise(u.dw, m1, m2)  # filters stored permuted: m2 holds the *unshuffled* channels
        read = p.shuffles.get(u.name, np.arange(mid))  # pw2's input channel c' is m2's channel read[c']
        if u.stride == 1:
            self.gemm(u.pw2.name + "+add", g2, m2, out, read, True, mode=cpu.EPI_RESIDUAL, aux=x)
        else:
            # the pool writes channels [0, cin) (and may spill past cin: so it goes first)
            self.avg_pool(u.name + ".avg_pool", x, out, u.stride)
            self.gemm(u.pw2.name, g2, m2, out, read, True, out_first=first)
        ws.release(m1, m2)
        return out

    def arrays(self):
        """(step table, split of each step, rounds of a batch-1 pass, int table, workspace floats)."""
        splits = [_split_policy(step) for step in self.records]
        return cpu.pack_steps(self.records, splits), splits, _rounds(splits), self.itab.array(), self.ws.size


class _PackedPlan:
    """Weights packed once per model (independent of the input size)."""

    def __init__(self, plan: Plan, weights: dict[str, np.ndarray]):
        from kernels.reference import shuffle_permutation

        self.plan = plan
        wts, itab = _Packer(np.float32), _Packer(np.int64)
        self.gemms: dict[str, cpu.PackedGemm] = {}
        self.depthwise: dict[str, int] = {}
        self.shuffles: dict[str, np.ndarray] = {}

        def w(layer):
            return (np.asarray(weights[f"{layer.name}.weight"], np.float32),
                    np.asarray(weights[f"{layer.name}.bias"], np.float32))

        def pointwise(layer):  # a 1x1 conv, grouped or not, as a GEMM per group
            g = layer.groups
            self.gemms[layer.name] = _add_gemm(wts, itab, cpu.pack_pointwise(*w(layer), g), g,
                                               layer.in_channels // g, layer.out_channels // g)

        stem = plan.stem
        if not (stem.kernel == 3 and stem.stride == 2 and stem.padding == 1 and stem.groups == 1 and stem.relu):
            raise BackendError(f"{stem.name}: the numba backend's stem kernel needs a 3x3 conv, stride 2, "
                               f"padding 1, ungrouped, with ReLU (got {stem})")
        self.stem = wts.add(cpu.pack_stem(*w(stem)))
        if plan.head is not None:
            if plan.head.kernel != 1 or plan.head.groups != 1:
                raise BackendError(f"{plan.head.name}: the head conv must be 1x1 and ungrouped")
            pointwise(plan.head)
        for unit in plan.units:
            for layer in unit.convs():
                if layer.kernel == 1:
                    pointwise(layer)
                    continue
                weight, bias = w(layer)
                if not (layer.kernel == 3 and layer.padding == 1 and layer.groups == layer.in_channels):
                    raise BackendError(f"{layer.name}: only 3x3 depthwise convs with padding 1 are supported")
                if isinstance(unit, V1Unit) and layer is unit.dw and unit.groups > 1:
                    # V1's shuffle sits between pw1 and dw: keep pw1's output unshuffled, give its
                    # channel c the filter of the shuffled channel it becomes, and let pw2 read
                    # shuffled channel c' from channel perm[c'] (see _Compiler.v1_unit)
                    perm = shuffle_permutation(unit.dw.in_channels, unit.groups, unit.shuffle)
                    self.shuffles[unit.name] = perm
                    order = np.argsort(perm)  # unshuffled channel c is shuffled channel order[c]
                    weight, bias = weight[order], bias[order]
                self.depthwise[layer.name] = wts.add(cpu.pack_depthwise(weight, bias))
        c = plan.classifier
        weight = np.asarray(weights[f"{c.name}.weight"], np.float32)
        bias = np.asarray(weights[f"{c.name}.bias"], np.float32)
        fc = _add_gemm(wts, itab, cpu.pack_gemm(weight.T[None], bias), 1, c.in_features, c.num_classes)
        self.fc = cpu.Classifier(fc, channel_offsets_at=itab.add(np.arange(c.in_features)))
        self.fc_step = cpu.pack_steps([self.fc])
        self.wts = wts.array()
        self.itab_blocks, self.itab_size = list(itab.blocks), itab.size


class _Compiled:
    """Per input size: steps, offset tables, workspaces (per thread count), output buffers (per batch)."""

    def __init__(self, packed: _PackedPlan, height: int, width: int):
        compiler = _Compiler(packed, height, width)
        self.steps, self.splits, self.rounds, self.itab, self.ws_size = compiler.arrays()
        self.records, self.labels = compiler.records, compiler.labels
        self.features = compiler.features
        self.workspaces: np.ndarray | None = None
        self.outputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def workspace(self, nthreads: int) -> np.ndarray:
        if self.workspaces is None or self.workspaces.shape[0] < nthreads:
            self.workspaces = np.zeros((nthreads, self.ws_size), np.float32)
        return self.workspaces

    def output(self, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
        if n not in self.outputs:
            self.outputs[n] = (np.zeros((n, self.features), np.float32), np.zeros((n, classes), np.float32))
        return self.outputs[n]


# On a cold cache the kernels take ~20 s of compiling on one core (kernels.cpu compiles each on its
# own). With two cores, a helper process compiles the five GEMM micro-kernels, the classifier and
# the average pool at the same time (about half the work, counting the helper's ~0.6 s start);
# both processes fill the cache, and this one then loads the helper's kernels from it. Only with a
# core to spare: on a machine kept busy by other work, two compiles sharing one core took longer
# than one (33 s against 20 s here, load average 3.5 on 2 cores). NPSHUFFLE_COMPILE_HELPER=0
# compiles everything in this process, =1 always uses the helper.
HELPER_ENV = "NPSHUFFLE_COMPILE_HELPER"
HELPER_SLOTS = cpu.MICRO_KERNELS + (cpu.FN_CLASSIFIER, cpu.AVG_POOL)
HELPER_TIMEOUT_S = 600.0

_kernels_ready = False  # compiled, or loaded from the cache, in this process (ensure_kernels)
_compile_lock = threading.Lock()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _busy() -> bool:
    """Is the machine busy: a load average over the last minute within half a process of its
    cores? (Unknown, as on Windows: no.)"""
    try:
        return os.getloadavg()[0] >= _cores() - 0.5
    except (AttributeError, OSError):
        return False


def _spare_core() -> bool:
    """Is a second core free for a helper?"""
    setting = os.environ.get(HELPER_ENV)
    if setting in ("0", "1"):
        return setting == "1"
    return _cores() >= 2 and not _busy()


def _start_helper(slots) -> subprocess.Popen | None:
    """A process that compiles the kernels of these address-table slots into the cache (None if it
    cannot be started: then this process compiles them itself). It ends with this process."""
    code = ("from npshuffle import backend_numba  # (installs the cache locator, as here)\n"
            f"backend_numba.cpu.compile_kernels({list(slots)!r}, driver=False)\n")
    try:
        return children.start_python(code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def _compile_kernels() -> None:
    """Compile the kernels, or load them from Numba's cache (``kernels.cpu.compile_kernels``); on a
    cold cache, with two cores or more, in two processes (see HELPER_ENV above).

    Numba unpickles its cache files without checking them, so a damaged file (a full disk, a copy
    cut short) raises from deep inside it: then the cache is emptied and everything compiled anew.
    """
    try:
        _compile_or_load()
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes Numba raise
        if kernel_cache.cache_dir()[0] is None:
            raise
        print(f"npshuffle: the compiled-kernel cache is damaged ({type(exc).__name__}); compiling anew",
              file=sys.stderr, flush=True)
        kernel_cache.clear()
        _compile_or_load()
    if not kernel_cache.is_warm():
        kernel_cache.write_stamp()  # later processes know, without importing numba, that they are cached


def _compile_or_load() -> None:
    cold = cpu.compile_kernels([cpu.GLOBAL_POOL], driver=False)  # the smallest kernel: is the cache cold?
    helper = None
    if cold and _spare_core() and kernel_cache.cache_dir()[0]:
        helper = _start_helper(HELPER_SLOTS)
    try:
        cpu.compile_kernels([s for s in cpu.KERNEL_SLOTS if helper is None or s not in HELPER_SLOTS])
        if helper is not None:
            helper.wait(HELPER_TIMEOUT_S)
    finally:
        if helper is not None:
            children.stop(helper)
    cpu.kernel_table()  # (compiles whatever the helper did not leave in the cache)


def ensure_kernels() -> bool:
    """Compile the kernels, or load them from the cache, once per process (:func:`_compile_kernels`).
    If that takes more than a second, say so on stderr while it happens and report the time when
    done. Returns whether they were ready before this call."""
    global _kernels_ready
    if _kernels_ready:
        return True
    with _compile_lock:
        if _kernels_ready:
            return True
        start = time.perf_counter()
        announced = threading.Event()

        def announce():
            announced.set()
            print("npshuffle: compiling the Numba kernels (first run only, cached afterwards)...",
                  file=sys.stderr, flush=True)

        timer = threading.Timer(COMPILE_NOTICE_AFTER_S, announce)
        timer.daemon = True
        timer.start()
        try:
            _compile_kernels()
        finally:
            timer.cancel()
        if announced.is_set():
            print(f"npshuffle: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        _kernels_ready = True
        return False


SCHEDULES = ("adaptive", "split", "single")  # see NumbaRunner


def _checked_threads(threads: int | None) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be None (all of Numba's) or a positive int, not {threads!r}")
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads={threads}: Numba has {numba.config.NUMBA_NUM_THREADS} threads in this process "
                         "(set NUMBA_NUM_THREADS before starting it for more)")
    return int(threads)


def _checked_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    return schedule


class _AdaptiveSchedule:
    """``schedule="adaptive"``: whether the next batch-1 call runs split across the threads or on one.

    Split, a pass is ~50 fork-joins. That is fastest on an idle machine, but when other processes
    keep the cores busy each fork-join can wait milliseconds for a preempted thread, and one
    thread (an OpenMP team of one: nothing to wait for) is then many times faster. So batch-1
    calls are timed, and each uses the schedule with the lower best time over the last second
    (the best, not the median: a burst of interference, say another runtime's threads still
    spinning for 50 ms, only makes some calls slower, while lasting contention slows them all);
    the other one is timed again once the time spent since its last timing reaches 20x its cost
    (so probing costs at most ~5 %). Until both are timed, the first guess is the load average's:
    one thread when it says the machine is busy (:func:`_busy`), split otherwise.
    """

    WINDOW_S, PROBE_EVERY = 1.0, 20.0

    def __init__(self):
        self.recent: dict[bool, list[tuple[float, float]]] = {False: [], True: []}  # single? -> (when, seconds)
        self.since_probe = 0.0
        self.busy = _busy()

    def single_thread(self) -> bool:
        if not self.recent[self.busy]:
            return self.busy
        best = {mode: min(t for _, t in times) if times else 0.0 for mode, times in self.recent.items()}
        slower = best[True] >= best[False]  # (an untimed schedule counts as 0: it goes first)
        if self.since_probe >= self.PROBE_EVERY * best[slower]:
            self.since_probe = 0.0
            return slower
        return not slower

    def record(self, single: bool, seconds: float) -> None:
        now = time.perf_counter()
        times = self.recent[single]
        times.append((now, seconds))
        while len(times) > 1 and times[0][0] < now - self.WINDOW_S:  # keep the last second (at least one)
            times.pop(0)
        self.since_probe += seconds


class NumbaRunner:
    """The runner ``NumbaBackend.prepare`` returns: ``runner(x)`` maps (N, 3, H, W) float32 to logits.

    Two settings, attributes that may also be changed between calls:

    ``threads``
        how many threads a call uses. None (the default): Numba's thread count at the time of the
        call, ``numba.get_num_threads()`` (NUMBA_NUM_THREADS, all cores unless set, or what
        ``numba.set_num_threads`` last set in the calling thread). An int: that many, at most
        NUMBA_NUM_THREADS (the size of Numba's thread pool, fixed when the process starts).
    ``schedule``
        how a batch of *one* image uses them (a batch of several always gives each thread whole
        images, each in a workspace of its own, and one thread runs everything on one):

        * ``"split"``: every step with enough work is split across the threads (~50 fork-joins
          per image): the fastest on an idle machine;
        * ``"single"``: the whole pass on one thread (no fork-join waiting for a thread that
          another process preempted): faster when other work keeps the cores busy;
        * ``"adaptive"`` (the default): times both and uses the faster, probing the other now and
          then (:class:`_AdaptiveSchedule`); its first guess is ``"single"`` when the load
          average says the machine is busy, ``"split"`` otherwise.

    Everything that depends on the input size (steps, workspaces) is built on the first call with
    that size and kept, so later calls allocate nothing but the returned logits. Calls from several
    Python threads are serialised (they share the workspaces).
    """

    def __init__(self, plan: Plan, weights: dict[str, np.ndarray], threads: int | None = None,
                 schedule: str = "adaptive"):
        self.plan = plan
        self.threads = threads
        self.schedule = schedule
        self.packed = _PackedPlan(plan, weights)
        self._programs: dict[tuple[int, int], _Compiled] = {}
        self._adaptive: dict[tuple[int, int], _AdaptiveSchedule] = {}  # (schedule="adaptive") per input size
        self._lock = threading.Lock()

    @property
    def threads(self) -> int | None:
        return self._threads

    @threads.setter
    def threads(self, value: int | None) -> None:
        self._threads = _checked_threads(value)

    @property
    def schedule(self) -> str:
        return self._schedule

    @schedule.setter
    def schedule(self, value: str) -> None:
        self._schedule = _checked_schedule(value)

    def program(self, height: int, width: int) -> _Compiled:
        """The compiled steps for one input size (built on first use)."""
        prog = self._programs.get((height, width))
        if prog is None:
            prog = self._programs[(height, width)] = _Compiled(self.packed, height, width)
            self._adaptive[(height, width)] = _AdaptiveSchedule()
        return prog

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.plan.stem.in_channels:
            raise ValueError(f"expected a batch of shape (N, {self.plan.stem.in_channels}, H, W), got {x.shape}")
        n, _, h, w = x.shape
        with self._lock:
            ready = ensure_kernels()
            prog = self.program(h, w)
            team = numba.get_num_threads()
            nthreads = self.threads or team
            adaptive = None
            single = False  # (a batch of one on one thread: the whole pass in one fork-join)
            if n == 1 and nthreads > 1:
                if self.schedule == "adaptive":
                    adaptive = self._adaptive[(h, w)]
                    single = adaptive.single_thread()
                else:
                    single = self.schedule == "single"
            threads = 1 if single else nthreads
            # a batch: each thread takes whole images; one thread: the whole pass in one fork-join
            by_image = n > 1 or threads == 1
            features, logits = prog.output(n, self.plan.classifier.num_classes)
            ws = prog.workspace(threads if by_image else 1)
            start = time.perf_counter()
            if threads != team:
                numba.set_num_threads(threads)  # (one thread: a team of one, no fork-join waits on anybody)
            try:
                cpu.forward(ws, self.packed.wts, prog.itab, prog.steps, prog.rounds, x, features,
                            self.packed.fc_step, logits, threads, by_image)
            finally:
                if threads != team:
                    numba.set_num_threads(team)
            if adaptive is not None and ready:  # (not the call that compiled)
                adaptive.record(single, time.perf_counter() - start)
            return logits.copy()


class NumbaBackend:
    """Numba kernels (``kernels.cpu``) over a packed, compiled plan; see the module docstring.

    ``threads`` and ``schedule``: how the runners it prepares use the CPU's threads (see
    :class:`NumbaRunner`; each runner keeps them as attributes of its own).
    """

    name = "numba"

    def __init__(self, threads: int | None = None, schedule: str = "adaptive"):
        self.threads = _checked_threads(threads)
        self.schedule = _checked_schedule(schedule)

    def prepare(self, plan: Plan, weights: dict[str, np.ndarray]) -> NumbaRunner:
        return NumbaRunner(plan, weights, threads=self.threads, schedule=self.schedule)
