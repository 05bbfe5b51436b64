"""Numba CPU kernels: the fast path behind ``npshuffle.backend_numba``.

``kernels.reference`` says *what* each op computes; this module computes the same numbers in a
layout and loop order chosen for a CPU. Everything is compiled by Numba with ``cache=True``, so a
new process loads machine code from the cache instead of compiling again. Each kernel is compiled
on its own and called by address (see "Compiling" below), which keeps the first run's compile
down to ~18 s of one core's time (it was ~45 s when every caller compiled its callees again).

Layout: padded channels-last images in one flat workspace
----------------------------------------------------------
Every activation of one image is a *padded NHWC* block inside one flat float32 array ``ws`` (the
workspace), described by (offset, H, W, channel stride C)::

    value of channel c at pixel (y, x)  =  ws[offset + ((y + 1) * (W + 2) + (x + 1)) * C + c]

* **channels last**: a 1x1 conv is then one matrix product over all pixels (rows = pixels,
  columns = channels), and the depthwise conv and the average / global pools vectorise over the
  contiguous channels;
* **C is a multiple of 16** (one AVX-512 register of float32) and at least the channel count, so
  channel loops run in whole 16-lane vectors; padding channels hold zeros or harmless finite
  values and are never read as real channels;
* **a one-pixel zero border** around every image, so the 3x3 depthwise conv and the 3x3 average
  pool (all of ShuffleNet's 3x3 ops have padding 1) read their neighbours without bounds checks.
  Nothing ever writes a border, so it stays zero.

Only the network input arrives as NCHW; :func:`phase_input` copies it into rows split by column
phase, from which :func:`stem_pool` computes the stem conv and its max-pool in one pass (see the
section on the stem below).

The register-blocked GEMM micro-kernel
--------------------------------------
Every 1x1 convolution (grouped or not) and the classifier is a matrix product
``out[pixel, j] = bias[j] + sum_k A[pixel, k] * Wt[k, j]``. The inner kernel,
:func:`_tile`, computes a tile of 4 pixels x NR output channels (NR = 16, 24, 32, 48 or 64) with
the 4 x NR partial sums held in CPU registers for the whole k loop: per k it loads one row of NR
weights, broadcasts 4 input values and issues 4 * NR/16 fused multiply-adds. On this 2-core
AVX-512 machine that runs at 80-100 GFLOP/s per core on ShuffleNet's larger 1x1 convs, level with
OpenBLAS (whose per-call overhead would dominate these small matrices anyway).

Four details make LLVM generate that code, and each is load-bearing:

1. the accumulators are stack arrays (:func:`_stack_floats`) indexed only by loop counters of
   compile-time trip count (:func:`_tile_kernel` compiles one micro-kernel per NR), so LLVM
   unrolls the j loops and promotes the 4 x NR floats to vector registers;
2. the 4 pixel rows are written out by hand (``x0 .. x3``, ``acc0 .. acc3``), so no loop over
   rows survives for LLVM to vectorise the wrong way;
3. ``fastmath={"contract"}``: fused multiply-add is allowed, reassociation is not. With full
   ``fastmath=True`` LLVM may instead vectorise the k loop as a reduction and gather the weights,
   which is 20x slower;
4. the epilogue reads each accumulator exactly once; and :func:`_tile` is a function of its own:
   with an enclosing loop, or inlined into a caller's loop, LLVM leaves the accumulators in memory
   (3x slower).

Being a function of its own, :func:`_tile` is *called* once per tile, and a call costs in
proportion to its arguments: Numba passes an array as a struct of 7-9 machine words. So the
micro-kernel takes raw pointers instead (:func:`_at`, one word each: 18 arguments instead of ~46),
which made the narrow layers' GEMM steps, where a tile is only 100-200 FMAs, up to 1.5x faster
(V1 g3 0.5x, stage 2).

Every array in a vectorised loop is indexed by the loop counter alone (``row[c]`` of a slice
``row = ws[a:b]``, never ``ws[a + c]``), by an *unsigned* index, or is a raw pointer: Numba checks
a computed signed index for negative values, and that check stops LLVM from vectorising (see the
per-channel ops).
The kernels slice :func:`_borrowed` views, which skip Numba's reference counting (an atomic add per
slice, on a cache line both threads share).

Weights are *packed* once by the backend: per output-channel tile, a panel of shape (1 + K, NR)
whose row 0 is the bias and rows 1..K the transposed weights (zero-padded columns past the layer's
width). The input side is read through an **offset table** ``koff``: ``A[pixel, k] =
ws[row_base(pixel) + koff[k]]``. That one indirection lets a single kernel serve a 1x1 conv
reading any subset of its input's channels: a V2 unit's half (``koff = C/2 + k``),
Megvii's odd channels (``koff = 2k + 1``), or a V1 channel shuffle folded into the read
(``koff = permutation``) -- so split and shuffle cost no copy at all.

The other end, the *epilogue*, writes each output channel straight to its final slot, adding
bias and ReLU on the way: interleaved with the passthrough channels, so a V2 unit's concat +
channel shuffle costs nothing beyond copying the passthrough half in the same pass; after the
pooled shortcut (V1's stride-2 concat); adding the residual (V1's stride-1 add); or summed into
the global average pool (the V2 head conv's output is never stored). When the backend has given
the output buffer room for whole tiles (``direct``), the micro-kernel stores straight from its
registers; otherwise (no room for whole tiles, and always for the pooled and the Megvii
passthrough epilogues) :func:`_finish_tile` stores the tile from a scratch copy.

Steps and threads
-----------------
The backend compiles a plan into a table of *steps* (a NumPy structured array, :data:`STEP_DTYPE`),
one row per kernel launch, holding nothing but integers: buffer offsets and geometry, the weight
offset, the offset tables and tile tables (in the int64 array ``itab``), the epilogue mode.
A step kernel (:data:`STEP_ARGS`; ``fns[kind]``) executes one step, or one thread's share of it;
:func:`forward` runs the whole table and the classifier, in one call from Python:

* one image: every step with enough work split across the threads (by pixel tiles, output rows
  or output-channel tiles); runs of small steps go to thread 0 in one round. A parallel region
  costs ~1.3 us with Numba's OpenMP layer, so ~50 fork-joins per image are cheap;
* a batch: each thread runs whole images in its own workspace, whose activations then stay in its
  own core's L2 cache.

Compiling
---------
Numba compiles a caller together with the LLVM code of everything it calls, and optimises it all
again; so kernels nested four deep were optimised four times over. Here each kernel -- the six
step kernels, the classifier and the five micro-kernels -- is compiled on its own for fixed
argument types and called through a table of addresses (``fns``, :func:`kernel_table`), and the
driver :func:`forward` holds no kernel code at all. That also lets two processes compile
different kernels at the same time (:func:`compile_kernels`; ``npshuffle.backend_numba`` does so
on a cold cache). The calls cost what they did before: the micro-kernel was never inlined (see
above), and a step kernel is called once per step and thread.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.extending import intrinsic

# LLVM's SLP vectoriser, which Numba leaves off by default, is what turns the micro-kernels'
# epilogues (fully unrolled loops over a tile's accumulators: bias, ReLU, residual, interleaved
# stores) into vector instructions; without it they run one float at a time (5-15 % of a GEMM
# here). Numba re-reads its NUMBA_* environment variables before each compilation, so the setting
# goes there (for the rest of this process; set NUMBA_SLP_VECTORIZE=0 beforehand to opt out --
# Numba's cache does not key on it, so clear kernels/__pycache__ for that to take effect).
os.environ.setdefault("NUMBA_SLP_VECTORIZE", "1")
config.reload_config()

FASTMATH = {"contract"}  # fused multiply-add yes, reassociation no (see the module docstring)
LANES = 16  # float32 lanes of one AVX-512 register; every channel count is padded to a multiple
ROWS = 4  # pixels per GEMM micro-tile
TILE_WIDTHS = (64, 48, 32, 24, 16)  # the NR values the micro-kernel is compiled for

# step kinds
PHASE_INPUT = 0  # NCHW image -> zero-bordered rows split into 4 column phases (the stem's input)
GEMM = 1  # 1x1 conv (grouped or not) as a matrix product, with a fused epilogue
DEPTHWISE = 2  # 3x3 depthwise conv, padding 1, any stride
STEM_POOL = 3  # the stem: 3x3 conv stride 2 + ReLU + 3x3 max-pool stride 2 (all padding 1), fused
AVG_POOL = 4  # 3x3 average pool, padding 1 (zeros counted), any stride
GLOBAL_POOL = 5  # mean over all pixels -> the pooled feature row

STEP_FIELDS = (
    "kind",
    # input buffer: offset, interior height and width, padded width, channel stride
    "src", "src_h", "src_w", "src_wp", "src_c",
    # output buffer (padded NHWC but for PHASE_INPUT's): offset, interior height and width, channel stride
    # (PHASE_INPUT and STEM_POOL use src_wp for Q, k for the image's channels, group_out for the stem's
    # output channels and w for its pack_stem blocks: see stem_pool)
    "dst", "dst_h", "dst_w", "dst_c",
    "stride", "relu",
    # GEMM: reduction length per group, groups, offset table (groups * k entries in itab),
    # row addressing (pixel (y, x) reads from src + ((y*stride + a_org) * src_wp + x*stride + a_org) * a_pix),
    "k", "groups", "koff", "a_org", "a_pix",
    # packed weights: first panel, floats per group; tile table (ntiles rows of 4 in itab), outputs per group
    "w", "group_w", "tiles", "ntiles", "group_out",
    # epilogue. mode: see EPI_*. Output channel jg (= g * group_out + j) goes to channel out_ch + out_step * jg
    "mode", "out_ch", "out_step",
    # auxiliary input (residual or passthrough source): a padded NHWC buffer with dst's height and width
    "aux", "aux_c", "pass_from", "pass_step",
    # 1: the micro-kernel may store whole tiles (and read whole tiles of the residual or
    # passthrough) straight into / from the buffers: the backend checked that their channel strides
    # have room for them (and that any spill into a later group's channels is overwritten later)
    "direct",
    # how a batch-1 pass splits this step across threads: SPLIT_NONE (thread 0 runs it, along with
    # its unsplit neighbours), SPLIT_PIXELS (rows / pixel tiles) or SPLIT_COLUMNS (output-channel tiles)
    "split",
)
STEP_DTYPE = np.dtype([(name, np.int64) for name in STEP_FIELDS])

SPLIT_NONE, SPLIT_PIXELS, SPLIT_COLUMNS = 0, 1, 2

# GEMM epilogues
EPI_STORE = 0  # out[out_ch + out_step*jg] = relu?(acc)
EPI_RESIDUAL = 1  # out[jg] = relu?(acc + aux[jg])                                     (V1, stride 1)
EPI_INTERLEAVE = 2  # out[2jg + 1] = relu?(acc); out[2jg] = aux[pass_from + pass_step*jg] (torchvision V2)
# (these two ignore out_ch and out_step: the backend leaves them 0 and 1)
EPI_PASSTHROUGH = 3  # out[out_ch + out_step*jg] = relu?(acc); out[jg] = aux[pass_from + pass_step*jg]  (Megvii V2)
EPI_POOL = 4  # pooled[jg] += relu?(acc) / (H*W): the global average pool fused into the head conv


def new_steps(count: int) -> np.ndarray:
    """An all-zero step table of ``count`` rows."""
    return np.zeros(count, dtype=STEP_DTYPE)


# --------------------------------------------------------------------------------------------------
# layouts (plain NumPy, used once per model by the backend, and by the tests)


def padded(channels: int) -> int:
    """``channels`` rounded up to a whole number of 16-lane vectors."""
    return -(-channels // LANES) * LANES


def tile_widths(n: int) -> list[int]:
    """Split ``n`` output channels into micro-kernel tiles: 64 wide, then the narrowest of
    16/24/32/48 that holds the rest (so the tiles never cover more than ``padded(n)`` channels;
    24 = one 16-lane and one 8-lane register, for the many 24-channel layers)."""
    widths = []
    while n > 0:
        nr = next(w for w in sorted(TILE_WIDTHS) if w >= min(n, 64))
        widths.append(nr)
        n -= nr
    return widths


def pack_gemm(wt: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Pack a (grouped) GEMM for :func:`gemm`: ``wt`` (groups, K, N) transposed weights, ``bias``
    (groups * N,). Returns (panels, tile table, floats per group): group g's tile t is the (1 + K, nr)
    panel at ``g * group_floats + table[t, 3]``, row 0 its bias; table rows are (first output
    channel j0, width nr, valid columns n, panel offset)."""
    groups, k, n_out = wt.shape
    bias = np.asarray(bias, np.float32).reshape(groups, n_out)
    table, panels, offset, j0 = [], [[] for _ in range(groups)], 0, 0
    for nr in tile_widths(n_out):
        n = min(nr, n_out - j0)
        for g in range(groups):
            panel = np.zeros((1 + k, nr), np.float32)
            panel[0, :n] = bias[g, j0: j0 + n]
            panel[1:, :n] = wt[g, :, j0: j0 + n]
            panels[g].append(panel.ravel())
        table.append((j0, nr, n, offset))
        offset += (1 + k) * nr
        j0 += n
    return np.concatenate([np.concatenate(p) for p in panels]), np.array(table, np.int64), offset


def pack_pointwise(weight: np.ndarray, bias: np.ndarray, groups: int):
    """:func:`pack_gemm` for a 1x1 conv weight (O, C/groups, 1, 1)."""
    out_channels, cg = weight.shape[:2]
    return pack_gemm(weight.reshape(groups, out_channels // groups, cg).transpose(0, 2, 1), bias)


def pack_depthwise(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(10, padded(C)) for :func:`depthwise3x3`: the bias, then the taps (dy, dx) in row 1 + 3*dy + dx."""
    c = weight.shape[0]
    block = np.zeros((10, padded(c)), np.float32)
    block[0, :c] = bias
    block[1:, :c] = np.asarray(weight, np.float32).reshape(c, 9).T
    return block


def to_padded_nhwc(x: np.ndarray, stride: int | None = None) -> np.ndarray:
    """(C, H, W) -> the flat padded NHWC block (zero border, channel stride ``stride`` >= C)."""
    c, h, w = x.shape
    stride = padded(c) if stride is None else stride
    out = np.zeros((h + 2, w + 2, stride), np.float32)
    out[1:-1, 1:-1, :c] = x.transpose(1, 2, 0)
    return out.ravel()


def from_padded_nhwc(block: np.ndarray, h: int, w: int, stride: int, channels: int, first: int = 0) -> np.ndarray:
    """Inverse of :func:`to_padded_nhwc`: channels ``first .. first + channels - 1`` as (C, H, W)."""
    img = block[: (h + 2) * (w + 2) * stride].reshape(h + 2, w + 2, stride)
    return np.ascontiguousarray(img[1:-1, 1:-1, first: first + channels].transpose(2, 0, 1))


@intrinsic
def _stack_floats(typingctx, count):
    """A pointer to ``count`` float32 on the stack (``count`` must be a literal integer).

    Wrapped with ``numba.carray`` it is a small array that LLVM can keep entirely in registers,
    which a heap array (``np.empty``) never is.
    """
    if not isinstance(count, types.IntegerLiteral):
        return None
    n = count.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=n)

    return types.CPointer(types.float32)(count), codegen


@intrinsic
def _borrowed(typingctx, array):
    """``array`` without reference counting (its meminfo set to NULL), for use inside one call.

    Numba increments and decrements an array's reference count for every slice taken of it: an
    atomic add on one cache line, which two threads slicing the same workspace pass back and
    forth. The kernels slice borrowed views of arrays their caller keeps alive instead. (Never of
    an array the kernel allocates itself: Numba frees it as soon as its last counted reference
    dies, which may be right after this call.)
    """
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return array(array), codegen


@intrinsic
def _at(typingctx, array, index):
    """A raw pointer to ``array[index]`` of a contiguous 1-D array (no bounds check, no reference
    count): one machine word to pass to the micro-kernel instead of the array's 7-field struct."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, value=args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        return builder.gep(view.data, [index])

    return types.CPointer(array.dtype)(array, index), codegen


@njit(inline="always")
def _split(total, part, nparts):
    """The ``part``-th of ``nparts`` nearly equal ranges of ``range(total)``."""
    return total * part // nparts, total * (part + 1) // nparts


# --------------------------------------------------------------------------------------------------
# kernels called by address
#
# (see "Compiling" in the module docstring) Numba links a callee's LLVM code into its caller's and
# optimises and compiles the whole again, once per caller. So each kernel is compiled on its own,
# for fixed argument types (:data:`STEP_ARGS`, :data:`CLASSIFIER_ARGS`, :data:`TILE_ARGS`), and
# called through its address: the caller's machine code holds an indirect call, not a copy of the
# kernel. The addresses change from process to process, so they travel as data, in the int64 array
# ``fns`` (:func:`kernel_table`); Numba's cache (``cache=True``) keeps each kernel's code on its own.

FN_CLASSIFIER = 6  # fns[kind] is the kernel of a step of that kind (0 .. 5), then the classifier
FN_TILE = 7  # and the micro-kernel of width NR at fns[FN_TILE + NR // 8] (every width is a multiple of 8)
N_FNS = FN_TILE + 64 // 8 + 1

_F32, _I64, _PTR = types.float32[::1], types.int64[::1], types.CPointer(types.float32)
STEP_TYPE = numba.from_dtype(STEP_DTYPE)  # one row of the step table
# every step kernel: (fns, ws, wts, itab, st, image (C, H, W), pooled, part, nparts)
STEP_ARGS = (_I64, _F32, _F32, _I64, STEP_TYPE, types.float32[:, :, ::1], _F32, types.int64, types.int64)
# the classifier: (fns, features (N, K), wts, itab, fc, logits (N, classes), part, nparts)
CLASSIFIER_ARGS = (_I64, types.float32[:, ::1], _F32, _I64, STEP_TYPE, types.float32[:, ::1], types.int64,
                   types.int64)
# the micro-kernel: (a0, a1, a2, a3, koff, K, panel, d0, d1, d2, d3, relu, epilogue, s0, s1, s2, s3)
TILE_ARGS = (_PTR,) * 4 + (types.CPointer(types.int64), types.int64, _PTR) + (_PTR,) * 4 + (
    types.boolean, types.int64) + (_PTR,) * 4


def _caller(argtypes: tuple):
    """An intrinsic ``call(address, *args)``: call the kernel at ``address`` (an int64 from
    :func:`kernel_table`), which Numba compiled for the argument types ``argtypes``.

    Arguments that do not convert to exactly those types are a typing error at compile time (a
    call with any other layout would read garbage). The call uses Numba's own calling convention,
    so an exception raised in the kernel propagates to the caller as from a direct call.
    """

    @intrinsic
    def call(typingctx, address, *args):
        if len(args) == 1 and isinstance(args[0], types.StarArgTuple):
            args = tuple(args[0].types)
        if not (isinstance(address, types.Integer) and len(args) == len(argtypes)
                and all(typingctx.can_convert(a, b) for a, b in zip(args, argtypes, strict=True))):
            return None

        def codegen(context, builder, signature, llargs):
            fnty = context.call_conv.get_function_type(types.none, argtypes)
            fn = builder.inttoptr(llargs[0], fnty.as_pointer())
            given = cgutils.unpack_tuple(builder, llargs[1], len(args))
            values = [context.cast(builder, v, a, b) for v, a, b in zip(given, args, argtypes, strict=True)]
            status, _ = context.call_conv.call_function(builder, fn, types.none, argtypes, values)
            with cgutils.if_unlikely(builder, status.is_error):
                context.call_conv.return_status_propagate(builder, status)
            return context.get_dummy_value()

        return types.none(address, types.StarArgTuple(args)), codegen

    return call


_call_step = _caller(STEP_ARGS)
_call_classifier = _caller(CLASSIFIER_ARGS)
_call_tile = _caller(TILE_ARGS)


# --------------------------------------------------------------------------------------------------
# the GEMM micro-kernel


def _tile_kernel(NR: int):
    """The micro-kernel for tiles of width ``NR``, compiled on its own (one per width of
    :data:`TILE_WIDTHS`, see :func:`kernel_table`) and called by address (:data:`TILE_ARGS`)."""

    @njit(fastmath=FASTMATH, cache=True)
    def _tile(a0, a1, a2, a3, koff, K, panel, d0, d1, d2, d3, relu, epilogue, s0, s1, s2, s3):
        """A 4 x NR tile of a GEMM. Every argument but K, relu and epilogue is a raw pointer
        (:func:`_at`): a0 .. a3 to the first input of the tile's 4 pixels, koff to the offset table,
        panel to the tile's packed weights ((1 + K) x NR, row 0 the bias), d0 .. d3 to the outputs
        and s0 .. s3 to the residual / passthrough inputs of the 4 pixels.

            acc_i[j] = panel[j] + sum_k a_i[koff[k]] * panel[(1 + k) * NR + j]     (j < NR)

        then stores relu?(acc_i[j]) at d_i[j] (``epilogue`` EPI_STORE); or relu?(acc_i[j] + s_i[j])
        there (EPI_RESIDUAL: V1's residual add); or (EPI_INTERLEAVE) relu?(acc_i[j]) at d_i[2j + 1]
        and the passthrough channel s_i[j] at d_i[2j]: a V2 unit's concat + shuffle(2). The d_i
        point either into the workspace (a "direct" store of whole tiles: the columns past the
        layer's width hold zero weights and store zeros, or values a later tile overwrites), or
        into a scratch tile that :func:`_finish_tile` then distributes.

        NR is a constant of the enclosing :func:`_tile_kernel` call, so the j loops have a
        constant trip count: they unroll, and acc0..acc3 (4 x NR floats) live in registers.
        """
        acc0 = numba.carray(_stack_floats(NR), NR)
        acc1 = numba.carray(_stack_floats(NR), NR)
        acc2 = numba.carray(_stack_floats(NR), NR)
        acc3 = numba.carray(_stack_floats(NR), NR)
        for j in range(NR):
            acc0[j] = panel[j]
            acc1[j] = panel[j]
            acc2[j] = panel[j]
            acc3[j] = panel[j]
        for k in range(K):
            o = koff[k]
            x0 = a0[o]
            x1 = a1[o]
            x2 = a2[o]
            x3 = a3[o]
            row = (k + 1) * NR
            for j in range(NR):
                w = panel[row + j]
                acc0[j] += x0 * w
                acc1[j] += x1 * w
                acc2[j] += x2 * w
                acc3[j] += x3 * w
        # the epilogue reads each accumulator once, straight from its register (modifying the stack
        # arrays in place first would make LLVM spill them)
        if epilogue == EPI_INTERLEAVE:
            _store_interleaved(NR, acc0, d0, s0, relu)
            _store_interleaved(NR, acc1, d1, s1, relu)
            _store_interleaved(NR, acc2, d2, s2, relu)
            _store_interleaved(NR, acc3, d3, s3, relu)
        elif epilogue == EPI_RESIDUAL:
            _store_sum(NR, acc0, d0, s0, relu)
            _store_sum(NR, acc1, d1, s1, relu)
            _store_sum(NR, acc2, d2, s2, relu)
            _store_sum(NR, acc3, d3, s3, relu)
        else:
            _store(NR, acc0, d0, relu)
            _store(NR, acc1, d1, relu)
            _store(NR, acc2, d2, relu)
            _store(NR, acc3, d3, relu)

    return _tile


@njit(fastmath=FASTMATH, inline="always")
def _store(NR, acc, out, relu):
    """out[j] = relu?(acc[j]), j < NR."""
    if relu:
        for j in range(NR):
            out[j] = max(acc[j], 0.0)
    else:
        for j in range(NR):
            out[j] = acc[j]


@njit(fastmath=FASTMATH, inline="always")
def _store_sum(NR, acc, out, residual, relu):
    """out[j] = relu?(acc[j] + residual[j]): V1's residual add."""
    if relu:
        for j in range(NR):
            out[j] = max(acc[j] + residual[j], 0.0)
    else:
        for j in range(NR):
            out[j] = acc[j] + residual[j]


@njit(fastmath=FASTMATH, inline="always")
def _store_interleaved(NR, acc, out, passthrough, relu):
    """out[2j] = passthrough[j], out[2j + 1] = relu?(acc[j]): a V2 unit's concat + shuffle(2)."""
    if relu:
        for j in range(NR):
            out[2 * j] = passthrough[j]
            out[2 * j + 1] = max(acc[j], 0.0)
    else:
        for j in range(NR):
            out[2 * j] = passthrough[j]
            out[2 * j + 1] = acc[j]


@njit(fastmath=FASTMATH, cache=True)
def _finish_tile(tile, nrows, n, jg, ws, rows, st, pooled, inv):
    """Epilogue of one tile: row i's ``n`` valid outputs ``tile[64 * i: 64 * i + n]`` are output channels
    ``jg .. jg+n-1`` of the pixel whose offsets in the output / auxiliary buffer are
    ``rows[1, i]`` / ``rows[2, i]``. (The micro-kernel's own stores, with a runtime width and any
    channel step, plus the pooled sum and the Megvii passthrough copy.)"""
    mode, relu = st.mode, st.relu
    for i in range(nrows):
        acc = tile[64 * i: 64 * i + n]
        d, x = rows[1, i], rows[2, i]
        if mode == EPI_POOL:
            out = pooled[jg: jg + n]
            if relu:
                for j in range(n):
                    out[j] += max(acc[j], 0.0) * inv
            else:
                for j in range(n):
                    out[j] += acc[j] * inv
        elif mode == EPI_RESIDUAL:
            _store_sum(n, acc, ws[d + jg: d + jg + n], ws[x + jg: x + jg + n], relu)
        elif mode == EPI_INTERLEAVE:
            p0 = x + st.pass_from + st.pass_step * jg
            passthrough = ws[p0: p0 + st.pass_step * n: st.pass_step]
            _store_interleaved(n, acc, ws[d + 2 * jg: d + 2 * (jg + n)], passthrough, relu)
        else:
            step = st.out_step
            o0 = d + st.out_ch + step * jg
            if step == 1:  # (a contiguous slice: vectorised stores)
                _store(n, acc, ws[o0: o0 + n], relu)
            else:
                _store(n, acc, ws[o0: o0 + step * n: step], relu)
            if mode == EPI_PASSTHROUGH:  # concat(passthrough, main): passthrough j -> j
                p0 = x + st.pass_from + st.pass_step * jg
                passthrough = ws[p0: p0 + st.pass_step * n: st.pass_step]
                out = ws[d + jg: d + jg + n]
                for j in range(n):
                    out[j] = passthrough[j]


@njit(inline="always")
def _pixel_offsets(st, y, x):
    """Workspace offsets for output pixel (y, x) of GEMM step ``st``: its A row (first input
    channel), its output pixel and its auxiliary (residual / passthrough) pixel."""
    a = st.src + ((y * st.stride + st.a_org) * st.src_wp + x * st.stride + st.a_org) * st.a_pix
    pix = (y + 1) * (st.dst_w + 2) + x + 1  # the pixel in the padded output / aux buffer
    return a, st.dst + pix * st.dst_c, st.aux + pix * st.aux_c


@njit(fastmath=FASTMATH, cache=True)
def gemm(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """One GEMM step (1x1 conv, grouped or not), or this thread's share of it (a step kernel:
    :data:`STEP_ARGS`; the micro-kernels are ``fns[FN_TILE + NR // 8]``).

    Rows are the output pixels (in tiles of 4), columns the output channels (in tiles of NR, per
    group). Threads split the pixel tiles, or the column tiles (``st.split``): a layer with few
    pixels and many channels, and the pooling epilogue, where each thread must own its pooled
    values.
    """
    ws, wts, itab, pooled = _borrowed(ws), _borrowed(wts), _borrowed(itab), _borrowed(pooled)
    tile = np.empty(ROWS * 64, np.float32)  # scratch (not _borrowed: see there)
    rows = np.empty((3, ROWS), np.int64)  # per tile row: offset of its A row, its output pixel, its aux pixel
    K = st.k
    Wo = st.dst_w
    npix = st.dst_h * Wo
    ncols = st.groups * st.ntiles
    ntiles_pix = (npix + ROWS - 1) // ROWS
    inv = np.float32(1.0) / np.float32(npix)
    s, apix = st.stride, st.a_pix
    relu = st.relu != 0
    # store straight from the micro-kernel when the backend says whole tiles fit the output
    direct = st.direct != 0 and (st.mode == EPI_STORE or st.mode == EPI_RESIDUAL or st.mode == EPI_INTERLEAVE)
    interleave = direct and st.mode == EPI_INTERLEAVE
    tiles = itab[st.tiles: st.tiles + 4 * st.ntiles].reshape((st.ntiles, 4))
    if st.mode == EPI_POOL or st.split == SPLIT_COLUMNS:
        t_lo, t_hi = 0, ntiles_pix
        c_lo, c_hi = _split(ncols, part, nparts)
        if st.mode == EPI_POOL:
            for c in range(c_lo, c_hi):
                g, t = c // st.ntiles, c % st.ntiles
                jg = g * st.group_out + tiles[t, 0]
                for j in range(jg, jg + tiles[t, 2]):
                    pooled[j] = 0.0
    else:
        t_lo, t_hi = _split(ntiles_pix, part, nparts)
        c_lo, c_hi = 0, ncols
    for c in range(c_lo, c_hi):
        g, t = c // st.ntiles, c % st.ntiles
        j0, nr, n, poff = tiles[t, 0], tiles[t, 1], tiles[t, 2], tiles[t, 3]
        w0 = st.w + g * st.group_w + poff
        panel = wts[w0: w0 + (K + 1) * nr]
        koff = itab[st.koff + g * K: st.koff + (g + 1) * K]
        jg = g * st.group_out + j0
        tile_fn = fns[FN_TILE + nr // 8]  # the micro-kernel for this width
        o = st.out_ch + (2 * jg if interleave else jg)  # (direct) the tile's first output channel
        p = st.pass_from + jg if interleave else jg  # (direct) its passthrough or residual channel
        y, x = divmod(t_lo * ROWS, Wo)  # output pixel of the next row, walked without divisions
        for tp in range(t_lo, t_hi):
            nrows = min(ROWS, npix - tp * ROWS)
            if direct and nrows == ROWS and x + ROWS <= Wo:
                # the common case: 4 pixels of one output row, at equal steps in every buffer
                a0, d0, s0 = _pixel_offsets(st, y, x)
                d0, s0 = d0 + o, s0 + p
                da, dd, ds = s * apix, st.dst_c, st.aux_c
                _call_tile(tile_fn, _at(ws, a0), _at(ws, a0 + da), _at(ws, a0 + 2 * da), _at(ws, a0 + 3 * da),
                           _at(koff, 0), K, _at(panel, 0),
                           _at(ws, d0), _at(ws, d0 + dd), _at(ws, d0 + 2 * dd), _at(ws, d0 + 3 * dd), relu, st.mode,
                           _at(ws, s0), _at(ws, s0 + ds), _at(ws, s0 + 2 * ds), _at(ws, s0 + 3 * ds))
                x += ROWS
                if x == Wo:
                    x, y = 0, y + 1
                continue
            # otherwise (a tile across a row end or past the last pixel, or any tile of a step that is
            # not "direct"): walk the tile's pixels one by one
            for i in range(ROWS):
                if i < nrows:
                    rows[0, i], rows[1, i], rows[2, i] = _pixel_offsets(st, y, x)
                    x += 1
                    if x == Wo:
                        x, y = 0, y + 1
                else:  # past the last pixel: repeat the last A row (its result is dropped or stored twice)
                    rows[0, i] = rows[0, nrows - 1]
            a0, a1, a2, a3 = rows[0, 0], rows[0, 1], rows[0, 2], rows[0, 3]
            if direct:  # store from registers; rows past the end store to the last pixel again
                r1, r2, r3 = min(1, nrows - 1), min(2, nrows - 1), min(3, nrows - 1)
                d0, d1, d2, d3 = rows[1, 0] + o, rows[1, r1] + o, rows[1, r2] + o, rows[1, r3] + o
                s0, s1, s2, s3 = rows[2, 0] + p, rows[2, r1] + p, rows[2, r2] + p, rows[2, r3] + p
                out, rl, epi = ws, relu, st.mode
            else:  # into the scratch tile, for _finish_tile
                d0, d1, d2, d3, out, rl, epi = 0, 64, 128, 192, tile, False, EPI_STORE
                s0 = s1 = s2 = s3 = 0
            _call_tile(tile_fn, _at(ws, a0), _at(ws, a1), _at(ws, a2), _at(ws, a3), _at(koff, 0), K, _at(panel, 0),
                       _at(out, d0), _at(out, d1), _at(out, d2), _at(out, d3), rl, epi,
                       _at(ws, s0), _at(ws, s1), _at(ws, s2), _at(ws, s3))
            if not direct:
                _finish_tile(tile, nrows, n, jg, ws, rows, st, pooled, inv)


# --------------------------------------------------------------------------------------------------
# per-channel ops: depthwise conv, pools
#
# These loop over the channels innermost, which LLVM vectorises 16 channels per instruction -- if
# it can see that the loop reads consecutive floats. A signed index ``row[offset + c]`` hides that:
# Numba wraps negative indices around (``i + len`` if ``i < 0``), a select per element. Two ways
# out: slices indexed by the loop counter alone (9 slices per output pixel, which cost as much as
# the arithmetic for ShuffleNet's narrow layers), or *unsigned* indices, which Numba never wraps
# (the depthwise conv and the average pool: no slicing in their pixel loops at all).


@njit(fastmath=FASTMATH, cache=True)
def depthwise3x3(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """3x3 depthwise conv, padding 1, stride ``st.stride``, on the first ``st.k`` channels (a
    multiple of 16) of padded NHWC buffers.

    Weights: ``wts[st.w:]`` holds (10, k): row 0 the bias, row 1 + 3*dy + dx the tap (dy, dx).
    Threads split the output rows; each row runs in blocks of 16 channels (:func:`_depthwise_block`).
    """
    ws, wts = _borrowed(ws), _borrowed(wts)
    n, C, s = st.k, st.src_c, st.stride
    Wo, dC = st.dst_w, st.dst_c
    row_floats = (st.src_w + 2) * C  # one padded input row
    w = wts[st.w: st.w + 10 * n].reshape((10, n))
    lo, hi = _split(st.dst_h, part, nparts)
    for oy in range(lo, hi):
        top = st.src + oy * s * row_floats  # padded coordinates: the windows start at row oy * s
        rows = ws[top: top + 3 * row_floats]
        o = st.dst + ((oy + 1) * (Wo + 2) + 1) * dC
        out = ws[o: o + Wo * dC]
        for cb in range(0, n, LANES):
            _depthwise_block(rows, w, cb, out, Wo, row_floats, C, s, dC, st.relu != 0)


@njit(fastmath=FASTMATH, cache=True)
def _depthwise_block(rows, w, cb, out, Wo, R, C, s, dC, relu):
    """Channels cb .. cb+15 of one output row: out[ox * dC + cb + c] from the three input rows
    ``rows`` (R floats each, channel stride C), stride s. The 10 weight vectors are copied to the
    stack first, where LLVM keeps them in registers for the whole row; every index is unsigned."""
    k = numba.carray(_stack_floats(160), 160)  # k[16 * i + c] = w[i, cb + c]
    for i in range(10):
        wi = w[i, cb: cb + LANES]
        for c in range(LANES):
            k[16 * i + c] = wi[c]
    U = np.uint64
    c1, c2, r1, r2 = U(C), U(2 * C), U(R), U(2 * R)
    for ox in range(Wo):
        p = U(ox * s * C + cb)  # the window's top-left pixel, channel cb
        q = U(ox * dC + cb)
        for c in range(U(LANES)):
            v = (k[c] + rows[p + c] * k[16 + c] + rows[p + c1 + c] * k[32 + c] + rows[p + c2 + c] * k[48 + c]
                 + rows[p + r1 + c] * k[64 + c] + rows[p + r1 + c1 + c] * k[80 + c]
                 + rows[p + r1 + c2 + c] * k[96 + c] + rows[p + r2 + c] * k[112 + c]
                 + rows[p + r2 + c1 + c] * k[128 + c] + rows[p + r2 + c2 + c] * k[144 + c])
            out[q + c] = max(v, 0.0) if relu else v


@njit(fastmath=FASTMATH, cache=True)
def avg_pool3x3(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """3x3 average pool counting the zero padding (padding 1, any stride): V1's stride-2 shortcut.

    Reads src's first ``st.k`` channels (a multiple of 16), writes them to dst channels
    ``out_ch ..`` (the first channels of the unit's output, before pw2's).
    """
    ws = _borrowed(ws)
    n, C, s = st.k, st.src_c, st.stride
    Wo, dC = st.dst_w, st.dst_c
    R = (st.src_w + 2) * C  # one padded input row
    ninth = np.float32(1.0 / 9.0)
    U = np.uint64
    c1, c2, r1, r2 = U(C), U(2 * C), U(R), U(2 * R)
    lo, hi = _split(st.dst_h, part, nparts)
    for oy in range(lo, hi):
        top = st.src + oy * s * R  # padded coordinates: the windows start at row oy * s
        rows = ws[top: top + 3 * R]
        o = st.dst + ((oy + 1) * (Wo + 2) + 1) * dC + st.out_ch
        out = ws[o: o + (Wo - 1) * dC + n]
        for ox in range(Wo):
            for cb in range(0, n, LANES):  # 16 channels at a time, every index unsigned
                p = U(ox * s * C + cb)  # the window's top-left pixel, channel cb
                q = U(ox * dC + cb)
                for c in range(U(LANES)):
                    out[q + c] = (rows[p + c] + rows[p + c1 + c] + rows[p + c2 + c]
                                  + rows[p + r1 + c] + rows[p + r1 + c1 + c] + rows[p + r1 + c2 + c]
                                  + rows[p + r2 + c] + rows[p + r2 + c1 + c] + rows[p + r2 + c2 + c]) * ninth


@njit(fastmath=FASTMATH, cache=True)
def global_pool(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """Mean over the interior pixels of src's first ``st.k`` channels (a multiple of 16), in
    chunks of 16 channels split across threads."""
    ws, pooled = _borrowed(ws), _borrowed(pooled)
    C = st.src_c
    H, W = st.src_h, st.src_w
    inv = np.float32(1.0) / np.float32(H * W)
    lo, hi = _split(st.k // LANES, part, nparts)
    c0, c1 = lo * LANES, hi * LANES
    out = pooled[c0: c1]
    for j in range(c1 - c0):
        out[j] = 0.0
    for y in range(H):
        for x in range(W):
            p = st.src + ((y + 1) * (W + 2) + x + 1) * C + c0
            pix = ws[p: p + c1 - c0]
            for j in range(c1 - c0):
                out[j] += pix[j]
    for j in range(c1 - c0):
        out[j] *= inv


# --------------------------------------------------------------------------------------------------
# the stem: 3x3 conv, stride 2 (+ bias + ReLU), then 3x3 max-pool, stride 2, in one pass
#
# The stem has 3 input channels, so the channels-last GEMM above has only 27 multiply-adds per
# output to amortise its loads and its epilogue, and the max-pool would read back a 112x112 map
# that has fallen out of the L2 cache. Here the conv is vectorised over *pixels* instead: a
# micro-tile is 8 output channels x 32 output columns of one row, 16 registers of accumulators,
# and every tap costs two vector loads and eight broadcast weights for 16 vector FMAs.
#
# Both stride-2 ops want every other column. So the input is stored split into its four column
# phases (padded column 4q + p at phase p, position q), and the stem computes its even output
# columns 2q (taps at 4q + dx) and odd ones 2q + 1 (taps at 4q + 2 + dx) as separate rows E and O:
# each tap (dy, dx) of each is a *contiguous* run of q. The max-pool's window at pooled column q covers stem
# columns 2q - 1, 2q, 2q + 1, that is O[q - 1], E[q], O[q]: contiguous again. Three stem rows are
# kept in a small per-thread ring; each pooled row computes two new ones. The ReLU comes free: the
# pooled maximum starts at 0 (max(0, a, b, ...) = max(relu(a), relu(b), ...)), which also makes
# the zero padding of the max-pool right.

STEM_CB = 8  # output channels per stem micro-tile
STEM_QB = 32  # output columns per stem micro-tile (two 16-lane vectors)


def stem_geometry(height: int, width: int) -> tuple[int, int, int, int, int, int]:
    """(stem H, stem W, pooled H, pooled W, NX, Q) for an input of ``height`` x ``width``: NX = the
    pooled width rounded up to whole micro-tiles, Q = floats per input phase row (NX + 16: the last
    tile reads position NX, one past the computed ones; 16 keeps the rows 64-byte aligned)."""
    hs, ws = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    hp, wp = (hs - 1) // 2 + 1, (ws - 1) // 2 + 1
    nx = -(-wp // STEM_QB) * STEM_QB
    return hs, ws, hp, wp, nx, nx + 16


def pack_stem(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(nblocks, 1 + C*9, 8) for :func:`stem_pool`: per block of 8 output channels, row 0 the bias
    and row 1 + 9c + 3dy + dx the tap (c, dy, dx); channels past the last are zero."""
    o, c = weight.shape[:2]
    nblocks = -(-o // STEM_CB)
    packed = np.zeros((nblocks * STEM_CB, 1 + 9 * c), np.float32)
    packed[:o, 0] = bias
    packed[:o, 1:] = np.asarray(weight, np.float32).reshape(o, 9 * c)
    return np.ascontiguousarray(packed.reshape(nblocks, STEM_CB, 1 + 9 * c).transpose(0, 2, 1))


@njit(cache=True)
def phase_input(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """Copy an NCHW image (C, H, W) into zero-padded rows split by column phase: row r (0..H+1,
    padded) of channel c starts at ``st.dst + (c * (H + 2) + r) * 4 * Q`` (Q = ``st.src_wp``), and
    holds phase p (padded columns 4q + p) at [p * Q, (p + 1) * Q). Threads split the rows."""
    ws, image = _borrowed(ws), _borrowed(image)
    C, H, W = image.shape
    Q = st.src_wp
    lo, hi = _split(C * (H + 2), part, nparts)
    for rr in range(lo, hi):
        r = rr % (H + 2)
        row = ws[st.dst + rr * 4 * Q: st.dst + (rr + 1) * 4 * Q]
        for i in range(4 * Q):
            row[i] = 0.0
        if 1 <= r <= H:
            src = image[rr // (H + 2), r - 1]
            # image column x is padded column x + 1 = 4q + p. The bulk: q = 1 .. last, whose four
            # phases all lie inside the row, in one loop (LLVM loads 4 vectors and deinterleaves them)
            last = (W - 3) // 4
            p0, p1, p2, p3 = row[:Q], row[Q: 2 * Q], row[2 * Q: 3 * Q], row[3 * Q:]
            for q in range(1, last + 1):
                p0[q] = src[4 * q - 1]
                p1[q] = src[4 * q]
                p2[q] = src[4 * q + 1]
                p3[q] = src[4 * q + 2]
            for x in range(min(3, W)):  # the first columns: q = 0
                row[((x + 1) % 4) * Q + (x + 1) // 4] = src[x]
            for x in range(max(4 * last + 3, 3), W):  # and the last ones, past the bulk
                row[((x + 1) % 4) * Q + (x + 1) // 4] = src[x]


@njit(fastmath=FASTMATH, cache=True)
def _stem_tile(inp, a, toff, K, wp, out, o0, o_stride):
    """The stem micro-kernel: 8 output channels x 32 columns.

        acc_co[i] = wp[0, co] + sum_t inp[a + toff[t] + i] * wp[1 + t, co]     (co < 8, i < 32)

    stored (no ReLU) at out[o0 + co * o_stride + i]. As in :func:`_tile`, the accumulator rows are
    written out by hand so that LLVM keeps them in 16 registers."""
    acc0 = numba.carray(_stack_floats(32), 32)
    acc1 = numba.carray(_stack_floats(32), 32)
    acc2 = numba.carray(_stack_floats(32), 32)
    acc3 = numba.carray(_stack_floats(32), 32)
    acc4 = numba.carray(_stack_floats(32), 32)
    acc5 = numba.carray(_stack_floats(32), 32)
    acc6 = numba.carray(_stack_floats(32), 32)
    acc7 = numba.carray(_stack_floats(32), 32)
    b = wp[0]
    for i in range(32):
        acc0[i] = b[0]
        acc1[i] = b[1]
        acc2[i] = b[2]
        acc3[i] = b[3]
        acc4[i] = b[4]
        acc5[i] = b[5]
        acc6[i] = b[6]
        acc7[i] = b[7]
    for t in range(K):
        s = a + toff[t]
        x = inp[s: s + 32]
        w = wp[1 + t]
        w0, w1, w2, w3, w4, w5, w6, w7 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
        for i in range(32):
            v = x[i]
            acc0[i] += w0 * v
            acc1[i] += w1 * v
            acc2[i] += w2 * v
            acc3[i] += w3 * v
            acc4[i] += w4 * v
            acc5[i] += w5 * v
            acc6[i] += w6 * v
            acc7[i] += w7 * v
    # plain copies: they store straight from the registers (a max() here would be scalarised)
    _copy32(acc0, out[o0: o0 + 32])
    _copy32(acc1, out[o0 + o_stride: o0 + o_stride + 32])
    _copy32(acc2, out[o0 + 2 * o_stride: o0 + 2 * o_stride + 32])
    _copy32(acc3, out[o0 + 3 * o_stride: o0 + 3 * o_stride + 32])
    _copy32(acc4, out[o0 + 4 * o_stride: o0 + 4 * o_stride + 32])
    _copy32(acc5, out[o0 + 5 * o_stride: o0 + 5 * o_stride + 32])
    _copy32(acc6, out[o0 + 6 * o_stride: o0 + 6 * o_stride + 32])
    _copy32(acc7, out[o0 + 7 * o_stride: o0 + 7 * o_stride + 32])


@njit(inline="always")
def _copy32(acc, out):
    for i in range(32):
        out[i] = acc[i]


@njit(fastmath=FASTMATH, cache=True)
def stem_pool(fns, ws, wts, itab, st, image, pooled, part, nparts):
    """The stem conv (3x3, stride 2, padding 1, + bias + ReLU) and the 3x3 / 2 max-pool after it,
    from :func:`phase_input`'s rows at ``st.src`` (image ``st.src_h`` x ``st.src_w``, ``st.k``
    channels, Q = ``st.src_wp``) to the padded NHWC buffer at ``st.dst``.

    Weights: :func:`pack_stem`'s blocks at ``wts[st.w:]``, ``st.group_out`` output channels. Threads
    split the pooled rows (each recomputes the one stem row it shares with its neighbour).
    """
    ws, wts = _borrowed(ws), _borrowed(wts)
    H, W, Q = st.src_h, st.src_w, st.src_wp
    K = 9 * st.k
    nblocks = (st.group_out + STEM_CB - 1) // STEM_CB
    cop = nblocks * STEM_CB
    wpk = wts[st.w: st.w + nblocks * (1 + K) * STEM_CB].reshape((nblocks, 1 + K, STEM_CB))
    Hs, Ws = (H - 1) // 2 + 1, (W - 1) // 2 + 1
    Hp, Wp = st.dst_h, st.dst_w
    NX = Q - 16
    L = NX + 16  # one ring row (channel, phase): position 1 + q holds column q, position 0 stays 0
    ring = np.zeros(3 * cop * 2 * L, np.float32)  # (stem row % 3, channel, phase, position)
    pooled = np.empty(cop * NX, np.float32)  # (channel, pooled column)
    # tap (c, dy, dx) of output column 2q + phase reads padded column 4q + 2 * phase + dx
    toff = np.empty((2, K), np.int64)
    for ph in range(2):
        for t in range(K):
            c, dy, dx = t // 9, t % 9 // 3, t % 3
            col = 2 * ph + dx
            toff[ph, t] = ((c * (H + 2) + dy) * 4 + col % 4) * Q + col // 4
    valid = ((Ws + 1) // 2, Ws // 2)  # stem columns 2q (E) and 2q + 1 (O) that exist
    lo, hi = _split(Hp, part, nparts)
    have = -1  # the last stem row in the ring
    for py in range(lo, hi):
        first, last = max(2 * py - 1, 0), min(2 * py + 1, Hs - 1)
        for sy in range(max(first, have + 1), last + 1):
            slot = sy % 3
            for ph in range(2):
                for cb in range(nblocks):
                    o0 = ((slot * cop + cb * STEM_CB) * 2 + ph) * L + 1
                    for qb in range(0, NX, STEM_QB):
                        _stem_tile(ws, st.src + 2 * sy * 4 * Q + qb, toff[ph], K, wpk[cb], ring, o0 + qb, 2 * L)
                for co in range(cop):  # columns past the stem's last: zero, as the pool's padding
                    r0 = ((slot * cop + co) * 2 + ph) * L + 1
                    tail = ring[r0 + valid[ph]: r0 + NX]
                    for i in range(NX - valid[ph]):
                        tail[i] = 0.0
        have = last
        for co in range(cop):
            m = pooled[co * NX: co * NX + Wp]
            for q in range(Wp):
                m[q] = 0.0  # the ReLU, and the zero padding
            for sy in range(first, last + 1):
                e0 = (sy % 3 * cop + co) * 2 * L
                even = ring[e0 + 1: e0 + 1 + Wp]  # E[q]
                left = ring[e0 + L: e0 + L + Wp]  # O[q - 1]
                right = ring[e0 + L + 1: e0 + L + 1 + Wp]  # O[q]
                for q in range(Wp):
                    m[q] = max(max(m[q], even[q]), max(left[q], right[q]))
        row = st.dst + ((py + 1) * (Wp + 2) + 1) * st.dst_c
        for q in range(Wp):  # (channel, column) -> channels-last
            out = ws[row + q * st.dst_c: row + q * st.dst_c + cop]
            for co in range(cop):
                out[co] = pooled[co * NX + q]


# --------------------------------------------------------------------------------------------------
# drivers


@njit(fastmath=FASTMATH, cache=True)
def classifier_part(fns, features, wts, itab, fc, logits, part, nparts):
    """logits = features @ W + b for this thread's range of column tiles (the classifier as a GEMM
    whose rows are images). ``fc`` is a GEMM step: k = features, w/tiles/ntiles its packed weights.
    Argument types: :data:`CLASSIFIER_ARGS`."""
    features, wts, itab, logits = _borrowed(features), _borrowed(wts), _borrowed(itab), _borrowed(logits)
    tile = np.empty(ROWS * 64, np.float32)  # scratch (not _borrowed: see there)
    K = fc.k
    n_images = logits.shape[0]
    lda = features.shape[1]
    src = features.ravel()
    koff = itab[fc.koff: fc.koff + K]
    tiles = itab[fc.tiles: fc.tiles + 4 * fc.ntiles].reshape((fc.ntiles, 4))
    c_lo, c_hi = _split(fc.ntiles, part, nparts)
    store, relu = EPI_STORE, fc.relu != 0
    for r0 in range(0, n_images, ROWS):
        nrows = min(ROWS, n_images - r0)
        a0 = r0 * lda
        a1 = (r0 + min(1, nrows - 1)) * lda
        a2 = (r0 + min(2, nrows - 1)) * lda
        a3 = (r0 + min(3, nrows - 1)) * lda
        for t in range(c_lo, c_hi):
            j0, nr, n, poff = tiles[t, 0], tiles[t, 1], tiles[t, 2], tiles[t, 3]
            panel = wts[fc.w + poff: fc.w + poff + (K + 1) * nr]
            _call_tile(fns[FN_TILE + nr // 8], _at(src, a0), _at(src, a1), _at(src, a2), _at(src, a3), _at(koff, 0),
                       K, _at(panel, 0), _at(tile, 0), _at(tile, 64), _at(tile, 128), _at(tile, 192), relu, store,
                       _at(tile, 0), _at(tile, 0), _at(tile, 0), _at(tile, 0))
            for i in range(nrows):
                for j in range(n):
                    logits[r0 + i, j0 + j] = tile[64 * i + j]


# the kernels of the address table, with the argument types each is compiled for
_KERNELS = {
    PHASE_INPUT: (phase_input, STEP_ARGS),
    GEMM: (gemm, STEP_ARGS),
    DEPTHWISE: (depthwise3x3, STEP_ARGS),
    STEM_POOL: (stem_pool, STEP_ARGS),
    AVG_POOL: (avg_pool3x3, STEP_ARGS),
    GLOBAL_POOL: (global_pool, STEP_ARGS),
    FN_CLASSIFIER: (classifier_part, CLASSIFIER_ARGS),
    **{FN_TILE + nr // 8: (_tile_kernel(nr), TILE_ARGS) for nr in TILE_WIDTHS},
}
KERNEL_SLOTS = tuple(_KERNELS)
MICRO_KERNELS = tuple(FN_TILE + nr // 8 for nr in TILE_WIDTHS)  # the GEMM micro-kernels' slots
_table: list[np.ndarray] = []  # kernel_table()'s result, once built


def compile_kernels(slots=None, driver: bool = True) -> bool:
    """Compile the kernels of these slots of the address table (default: all), and with ``driver``
    the driver of :func:`forward`, or load them from Numba's cache. Returns True when any of them
    had to be compiled (the cache did not have it).

    Each kernel compiles on its own, so two processes may compile different ones at the same time,
    each filling the cache, and either then loads the other's (see ``npshuffle.backend_numba``)."""
    compiled = False
    todo = [_KERNELS[slot] for slot in (_KERNELS if slots is None else slots)]
    if driver:
        todo.append((_forward, FORWARD_ARGS))
    for kernel, argtypes in todo:
        kernel.compile(argtypes)
        compiled |= kernel.stats.cache_misses[argtypes] > 0
    return compiled


def kernel_table() -> np.ndarray:
    """The address table ``fns`` (int64, :data:`N_FNS` slots; see "kernels called by address"):
    on the first call in a process, every kernel is compiled, or loaded from Numba's cache."""
    if not _table:
        fns = np.zeros(N_FNS, np.int64)
        for slot, (kernel, argtypes) in _KERNELS.items():
            kernel.compile(argtypes)
            compiled = kernel.overloads[argtypes]
            fns[slot] = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
        _table.append(fns)
    return _table[0]


def run_step(ws, wts, itab, st, image, pooled, part, nparts) -> None:
    """Run this thread's share (``part`` of ``nparts``) of one step from Python (for tests and
    per-layer profiles; :func:`forward` calls the kernels directly)."""
    kernel = _KERNELS[int(st["kind"])][0]
    kernel(kernel_table(), ws, wts, itab, st, image, pooled, part, nparts)


@njit(parallel=True, cache=True)
def _forward(fns, workspaces, wts, itab, steps, rounds, images, features, fc_step, logits, nthreads, by_image):
    """:func:`forward`, given the address table ``fns``.

    There is a single ``prange`` (one fork-join per round): Numba compiles each ``prange`` body
    into a function of its own, and one loop keeps the first run's compile time down.
    """
    n_images = images.shape[0]
    nsteps = steps.shape[0]
    nrounds = rounds.shape[0]  # >= 1 (Numba may evaluate rounds[r % nrounds] before the branch that uses it)
    total = 2 if by_image else n_images * nrounds + 1
    whole, one = np.int64(0), np.int64(1)
    for r in range(total):
        for t in prange(nthreads):
            part = np.int64(t)
            if r == total - 1:
                _call_classifier(fns[FN_CLASSIFIER], fns, features, wts, itab, fc_step[0], logits, part, nthreads)
            elif by_image:
                for n in range(part, n_images, nthreads):
                    for s in range(nsteps):
                        st = steps[s]
                        _call_step(fns[st.kind], fns, workspaces[part], wts, itab, st, images[n], features[n],
                                   whole, one)
            else:
                n, first, last = r // nrounds, rounds[r % nrounds, 0], rounds[r % nrounds, 1]
                if last - first == 1 and steps[first].split != SPLIT_NONE:
                    st = steps[first]
                    _call_step(fns[st.kind], fns, workspaces[0], wts, itab, st, images[n], features[n], part, nthreads)
                elif part == 0:
                    for s in range(first, last):
                        st = steps[s]
                        _call_step(fns[st.kind], fns, workspaces[0], wts, itab, st, images[n], features[n], whole, one)


# the driver's argument types as the backend passes them (others compile another version on first use)
_RECORDS = types.Array(STEP_TYPE, 1, "C")
FORWARD_ARGS = (_I64, types.float32[:, ::1], _F32, _I64, _RECORDS, types.int64[:, ::1], types.float32[:, :, :, ::1],
                types.float32[:, ::1], _RECORDS, types.float32[:, ::1], types.int64, types.boolean)


def forward(workspaces, wts, itab, steps, rounds, images, features, fc_step, logits, nthreads, by_image) -> None:
    """The whole network on ``images`` (N, C, H, W) -> ``logits`` (N, classes), on ``nthreads`` threads.

    ``by_image``: thread t runs every step on images t, t + nthreads, ... in ``workspaces[t]``.
    Otherwise the images go one after the other, in ``workspaces[0]``, through the *rounds* of
    the step table: ``rounds[r] = (first, last)`` is either one step that the threads split as
    its ``split`` field says, or a run of steps too small to split, which thread 0 runs. Then the
    classifier, its column tiles split across the threads.

    The first call in a process compiles the kernels (or loads them from Numba's cache).
    """
    _forward(kernel_table(), workspaces, wts, itab, steps, rounds, images, features, fc_step, logits, nthreads,
             by_image)
