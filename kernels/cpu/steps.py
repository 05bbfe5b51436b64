"""Steps: what the backend asks the kernels to do, one record per kernel launch.

The backend (``npshuffle.numba_steps``) turns the lowered program into a list of *step records*, one frozen
dataclass per kind of step, each holding only what that kind needs:

=======================  ==================================================  ===========================
record                   computes                                            kernel
=======================  ==================================================  ===========================
:class:`PhaseInput`      the NCHW image -> rows split by column phase        ``stem.phase_input``
:class:`StemPool`        stem conv 3x3 / 2 + ReLU + max-pool 3x3 / 2, fused  ``stem.stem_pool``
:class:`Gemm`            a 1x1 conv (grouped or not), fused epilogue         ``gemm.gemm``
:class:`Depthwise`       3x3 depthwise conv, padding 1, any stride           ``per_channel.depthwise3x3``
:class:`AvgPool`         3x3 average pool, padding 1 (zeros counted)         ``per_channel.avg_pool3x3``
:class:`GlobalPool`      mean over all pixels -> the pooled feature row      ``per_channel.global_pool``
:class:`Classifier`      features @ W + b, the images as the GEMM's rows     ``gemm.classifier_part``
=======================  ==================================================  ===========================

Every number in a record is an integer: an offset into one of the three flat arrays a kernel
gets (``ws``, the float32 workspace holding every activation; ``wts``, the packed weights;
``itab``, the int64 tables: GEMM tile tables and channel offset tables), or a size.

Numba cannot take a list of dataclasses, so :func:`pack_steps` writes them into a NumPy
structured array (:data:`STEP_DTYPE`, one int64 field per name, the same fields for every kind:
a kind leaves the ones it does not use at 0). :func:`pack_steps` is the only Python code that
knows that layout; the kernels read their fields (``st.src``, ``st.weights``, ...) by name.

This module also holds the other contracts between the backend, the driver and the kernels:
the step kinds (which are their kernels' slots in the address table ``fns``, see
``driver.py``), how a step is split across threads (``SPLIT_*``), the GEMM epilogues
(``EPI_*``) and the argument types every step kernel is compiled for (:data:`STEP_ARGS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numba
import numpy as np
from numba import njit, types

# -- step kinds: also the slot of each kind's kernel in the address table fns (see driver.py) ---------
PHASE_INPUT = 0
GEMM = 1
DEPTHWISE = 2
STEM_POOL = 3
AVG_POOL = 4
GLOBAL_POOL = 5
CLASSIFIER = 6  # (not a step of the table: the classifier runs after it, see driver.forward)
FN_CLASSIFIER = CLASSIFIER
FN_TILE = 7  # the GEMM micro-kernel of width NR sits at fns[FN_TILE + NR // 8] (every NR is a multiple of 8)
N_FNS = FN_TILE + 64 // 8 + 1

# -- how a batch-1 pass splits a step across the threads (the backend decides, per step) ---------------
SPLIT_NONE = 0  # thread 0 runs it, together with its unsplit neighbours
SPLIT_PIXELS = 1  # each thread takes a range of output rows / pixel tiles
SPLIT_COLUMNS = 2  # (GEMM) each thread takes a range of output-channel tiles

# -- GEMM epilogues: where output channel jg (= g * group_out + j, over all groups) goes -----------
EPI_STORE = 0  # out[out_first + out_step*jg] = relu?(acc)
EPI_RESIDUAL = 1  # out[jg] = relu?(acc + aux[jg])                                     (V1, stride 1)
EPI_INTERLEAVE = 2  # out[2jg + 1] = relu?(acc); out[2jg] = aux[pass_from + pass_step*jg] (torchvision V2)
# (EPI_RESIDUAL and EPI_INTERLEAVE ignore out_first and out_step: leave them 0 and 1)
EPI_PASSTHROUGH = 3  # out[out_first + out_step*jg] = relu?(acc); out[jg] = aux[pass_from + pass_step*jg]  (Megvii)
EPI_POOL = 4  # pooled[jg] += relu?(acc) / (H*W): the global average pool fused into the head conv


@njit(inline="always")
def _split(total, part, nparts):
    """The ``part``-th of ``nparts`` nearly equal ranges of ``range(total)`` (a thread's share)."""
    return total * part // nparts, total * (part + 1) // nparts


# --------------------------------------------------------------------------------------------------
# the records


@dataclass(frozen=True)
class Buffer:
    """A padded NHWC activation in the workspace (see ``layout.py``): channel c of pixel (y, x) is
    ``ws[offset + ((y + 1) * (width + 2) + x + 1) * channel_stride + c]``, a zero border around."""

    offset: int
    height: int
    width: int
    channel_stride: int  # floats per pixel: a multiple of 16, at least the channels stored


@dataclass(frozen=True)
class PackedGemm:
    """Where :func:`layout.pack_gemm`'s output for one (grouped) GEMM went: its panels in ``wts``
    (group g's at ``weights_at + g * group_floats``) and its tile table in ``itab``."""

    weights_at: int  # offset of group 0's first panel in wts
    group_floats: int  # floats of panels per group
    tiles_at: int  # offset of the tile table (ntiles rows of (j0, nr, n, panel offset)) in itab
    ntiles: int
    groups: int
    group_in: int  # K: input channels per group (the reduction length)
    group_out: int  # output channels per group


@dataclass(frozen=True)
class PhaseInput:
    """Copy the NCHW input image (the kernel's ``image`` argument) into zero-padded rows split by
    column phase, the stem's input: ``phase_row`` floats per phase of a padded row (``Q`` in
    ``stem.py``), starting at workspace offset ``rows_at``."""

    kind: ClassVar[int] = PHASE_INPUT
    rows_at: int
    phase_row: int


@dataclass(frozen=True)
class StemPool:
    """The stem conv (3x3, stride 2, padding 1, + bias + ReLU) and the 3x3 / 2 max-pool after it,
    from :class:`PhaseInput`'s rows (of an image ``image_channels`` x ``image_height`` x
    ``image_width``) to the padded NHWC buffer ``dst``; weights: ``pack_stem``'s blocks at
    ``weights_at`` in ``wts``, ``out_channels`` of them."""

    kind: ClassVar[int] = STEM_POOL
    rows_at: int
    phase_row: int
    image_height: int
    image_width: int
    image_channels: int
    dst: Buffer
    weights_at: int
    out_channels: int


@dataclass(frozen=True)
class Gemm:
    """A 1x1 conv, stride 1 (grouped or not), as a matrix product over the pixels of ``src`` into
    ``dst`` (of the same height and width), with a fused epilogue (``EPI_*``).

    Input channel k of group g is read at ``itab[channel_offsets_at + g * group_in + k]`` within a
    pixel of ``src``: the offset table through which a unit's channel split and a V1 shuffle cost
    no copy. ``aux`` is the residual (EPI_RESIDUAL) or passthrough (EPI_INTERLEAVE,
    EPI_PASSTHROUGH: its channel ``pass_from + pass_step * j``) input. ``direct``: the backend
    checked that ``dst`` (and ``aux``) have room for whole micro-kernel tiles, so the micro-kernel
    may store straight from its registers (see ``gemm.py``). With EPI_POOL, ``dst`` only gives the
    pixel count: the outputs are summed into the pooled features, never stored.
    """

    kind: ClassVar[int] = GEMM
    packed: PackedGemm
    src: Buffer
    dst: Buffer
    channel_offsets_at: int
    relu: bool
    epilogue: int = EPI_STORE
    out_first: int = 0  # (EPI_STORE, EPI_PASSTHROUGH) the output channel of the first result
    out_step: int = 1  # (EPI_STORE, EPI_PASSTHROUGH) channels between consecutive results
    aux: Buffer | None = None
    pass_from: int = 0
    pass_step: int = 1
    direct: bool = False


@dataclass(frozen=True)
class Depthwise:
    """A 3x3 depthwise conv, padding 1, of the first ``channels`` (a multiple of 16) channels of
    ``src`` into ``dst``; weights: ``pack_depthwise``'s (10, channels) block at ``weights_at``."""

    kind: ClassVar[int] = DEPTHWISE
    src: Buffer
    dst: Buffer
    channels: int
    stride: int
    relu: bool
    weights_at: int


@dataclass(frozen=True)
class AvgPool:
    """A 3x3 average pool, padding 1, zeros counted (V1's stride-2 shortcut), of the first
    ``channels`` (a multiple of 16) channels of ``src`` into channels ``out_first ..`` of ``dst``."""

    kind: ClassVar[int] = AVG_POOL
    src: Buffer
    dst: Buffer
    channels: int
    stride: int
    out_first: int = 0


@dataclass(frozen=True)
class GlobalPool:
    """The mean over all pixels of the first ``channels`` (a multiple of 16) channels of ``src``,
    into the pooled features (the kernel's ``pooled`` argument)."""

    kind: ClassVar[int] = GLOBAL_POOL
    src: Buffer
    channels: int


@dataclass(frozen=True)
class Classifier:
    """The classifier, ``logits = features @ W + b``: a GEMM (one group, K = its input features)
    whose rows are the images (the pooled features, one padded row each); its input offset table
    at ``channel_offsets_at``."""

    kind: ClassVar[int] = CLASSIFIER
    packed: PackedGemm
    channel_offsets_at: int


Step = PhaseInput | StemPool | Gemm | Depthwise | AvgPool | GlobalPool | Classifier


# --------------------------------------------------------------------------------------------------
# the table Numba reads

STEP_FIELDS = (
    "kind", "split",  # the step kind (its kernel's slot in fns) and SPLIT_*
    "src", "src_h", "src_w", "src_c",  # input: a Buffer; for STEM_POOL the phase rows and the image's H, W
    "dst", "dst_h", "dst_w", "dst_c",  # output: a Buffer; for PHASE_INPUT the phase rows (dst alone)
    "channels",  # channels the step reads (a multiple of 16; STEM_POOL: the image's)
    "stride", "relu",  # (DEPTHWISE, AVG_POOL) conv / pool stride; relu 0 or 1
    "weights",  # offset of the step's packed weights in wts (GEMM: group 0's first panel)
    "phase_row", "out_channels",  # (PHASE_INPUT, STEM_POOL) floats per phase row; the stem's outputs
    # GEMM: reduction length per group, groups, outputs per group, panel floats per group, offset
    # table (in itab), tile table (in itab) and its rows
    "k", "groups", "group_out", "group_floats", "koff", "tiles", "ntiles",
    "mode", "out_first", "out_step",  # the epilogue: EPI_*, and where results go (see there)
    "aux", "aux_c", "pass_from", "pass_step",  # residual / passthrough input (dst's height and width)
    "direct",  # 1: the micro-kernel may store whole tiles straight into dst (see Gemm)
)
STEP_DTYPE = np.dtype([(name, np.int64) for name in STEP_FIELDS])
STEP_TYPE = numba.from_dtype(STEP_DTYPE)  # one row of the table, as Numba sees it

_F32, _I64 = types.float32[::1], types.int64[::1]
# every step kernel: (fns, ws, wts, itab, st, image (C, H, W), pooled, part, nparts): run thread
# ``part``'s share (of ``nparts``) of step ``st``
STEP_ARGS = (_I64, _F32, _F32, _I64, STEP_TYPE, types.float32[:, :, ::1], _F32, types.int64, types.int64)
# the classifier: (fns, features (N, K), wts, itab, fc, logits (N, classes), part, nparts)
CLASSIFIER_ARGS = (_I64, types.float32[:, ::1], _F32, _I64, STEP_TYPE, types.float32[:, ::1], types.int64,
                   types.int64)


def _buffer(prefix: str, b: Buffer) -> dict[str, int]:
    return {prefix: b.offset, prefix + "_h": b.height, prefix + "_w": b.width, prefix + "_c": b.channel_stride}


def _gemm_fields(p: PackedGemm, channel_offsets_at: int) -> dict[str, int]:
    return dict(weights=p.weights_at, group_floats=p.group_floats, tiles=p.tiles_at, ntiles=p.ntiles,
                groups=p.groups, k=p.group_in, group_out=p.group_out, koff=channel_offsets_at)


def _fields(step: Step) -> dict[str, int]:
    """The table fields of one record (the rest stay 0)."""
    if isinstance(step, PhaseInput):
        return dict(dst=step.rows_at, phase_row=step.phase_row)
    if isinstance(step, StemPool):
        return dict(src=step.rows_at, src_h=step.image_height, src_w=step.image_width,
                    channels=step.image_channels, phase_row=step.phase_row, **_buffer("dst", step.dst),
                    weights=step.weights_at, out_channels=step.out_channels)
    if isinstance(step, Gemm):
        if (step.src.height, step.src.width) != (step.dst.height, step.dst.width):
            raise ValueError(f"a Gemm step reads and writes pixels of one size: src {step.src}, dst {step.dst}")
        aux = step.aux or Buffer(0, 0, 0, 0)
        return dict(**_buffer("src", step.src), **_buffer("dst", step.dst), relu=int(step.relu),
                    **_gemm_fields(step.packed, step.channel_offsets_at),
                    mode=step.epilogue, out_first=step.out_first, out_step=step.out_step,
                    aux=aux.offset, aux_c=aux.channel_stride, pass_from=step.pass_from, pass_step=step.pass_step,
                    direct=int(step.direct))
    if isinstance(step, Depthwise):
        return dict(**_buffer("src", step.src), **_buffer("dst", step.dst), channels=step.channels,
                    stride=step.stride, relu=int(step.relu), weights=step.weights_at)
    if isinstance(step, AvgPool):
        return dict(**_buffer("src", step.src), **_buffer("dst", step.dst), channels=step.channels,
                    stride=step.stride, out_first=step.out_first)
    if isinstance(step, GlobalPool):
        return dict(**_buffer("src", step.src), channels=step.channels)
    if isinstance(step, Classifier):
        return _gemm_fields(step.packed, step.channel_offsets_at)
    raise TypeError(f"not a step record: {step!r}")


def pack_steps(records: Sequence[Step], splits: Sequence[int] | None = None) -> np.ndarray:
    """The step table the kernels read (:data:`STEP_DTYPE`, one row per record), each step split
    across threads as ``splits`` says (``SPLIT_*``; default: none is split)."""
    splits = [SPLIT_NONE] * len(records) if splits is None else splits
    table = np.zeros(len(records), STEP_DTYPE)
    for i, (step, split) in enumerate(zip(records, splits, strict=True)):
        row = {**_fields(step), "kind": step.kind, "split": split}
        table[i] = tuple(row.get(name, 0) for name in STEP_FIELDS)
    return table
