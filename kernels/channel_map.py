"""Channel maps: a ShuffleNet's split, concat and shuffle as one formula on the channel number.

A V2 unit splits its input in two, a unit concatenates two branches, and both versions shuffle
channels. None of these compute anything: they only decide *which channel* a value lives in. So
instead of copying tensors around, a kernel that reads or writes a tensor can apply the move
itself, through a map from its own channel number ``i`` to a channel of the tensor::

    channel(i) = offset + step * (i % period) + jump * (i // period)

=====================================================  ==========================================
what the network does                                  the map
=====================================================  ==========================================
nothing (read or write channel i as channel i)         ``ChannelMap()``
concat: the second operand's channel i (first has C1)  ``ChannelMap(offset=C1)``
V2 split "halves": the second half of C channels        ``ChannelMap(offset=C // 2)``
V2 split "interleaved": the odd channels                ``ChannelMap(offset=1, step=2)``
concat then shuffle(2): first operand / second          ``ChannelMap(step=2)`` / ``(offset=1, step=2)``
shuffle(G) read back: shuffled channel i comes from    :func:`shuffle_source` (``period`` and
                                                        ``jump`` at work)
=====================================================  ==========================================

This module is plain Python and NumPy, shared by the lowering (``npshuffle.lowering``) and every
kernel family; it is also where the two conventions of each move are named.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Channel-shuffle conventions (see kernels.reference.channel_shuffle):
#   "torchvision": reshape (n, g, c/g, h, w) -> transpose -> flatten (the paper's wording)
#   "megvii":      reshape (n, c/g, g, h, w) -> transpose -> flatten (ShuffleNet-Series V1)
SHUFFLE_CONVENTIONS = ("torchvision", "megvii")
# How a V2 stride-1 unit splits its input in two (see kernels.reference.split_channels):
#   "halves":      first half / second half (torchvision's x.chunk(2, dim=1))
#   "interleaved": even channels / odd channels (ShuffleNet-Series V2)
SPLIT_CONVENTIONS = ("halves", "interleaved")

NO_PERIOD = 1 << 30  # a period no channel number reaches: i % NO_PERIOD == i (and it fits 32 bits)


class ChannelMap(NamedTuple):
    """Where channel ``i`` of an op's input or output lives in the tensor it reads or writes:
    ``offset + step * (i % period) + jump * (i // period)`` (see the module docstring)."""

    offset: int = 0
    step: int = 1
    period: int = NO_PERIOD
    jump: int = 0

    def __call__(self, i):
        """The mapped channel number(s) of ``i`` (an int or an integer array)."""
        return self.offset + self.step * (i % self.period) + self.jump * (i // self.period)

    @property
    def is_identity(self) -> bool:
        return self == IDENTITY

    @property
    def is_affine(self) -> bool:
        """``offset + step * i`` for every i (no period): a strided slice of channels."""
        return self.period == NO_PERIOD

    def indices(self, count: int) -> np.ndarray:
        """The mapped channels of ``0 .. count - 1`` (int64)."""
        return np.asarray(self(np.arange(count, dtype=np.int64)), dtype=np.int64)


IDENTITY = ChannelMap()
# The even and the odd channels: the two halves of a V2 "interleaved" split, and where the two
# operands of a concat land after a shuffle(2) (the first's channel j at 2j, the second's at 2j + 1).
EVEN_CHANNELS, ODD_CHANNELS = ChannelMap(step=2), ChannelMap(offset=1, step=2)


def check_convention(convention: str, allowed: tuple[str, ...]) -> None:
    if convention not in allowed:
        raise ValueError(f"convention must be one of {allowed}, got {convention!r}")


def _groups_of(channels: int, groups: int) -> int:
    if groups < 1 or channels % groups:
        raise ValueError(f"channels ({channels}) are not divisible by groups ({groups})")
    return channels // groups


def shuffle_source(channels: int, groups: int, convention: str = "torchvision") -> ChannelMap:
    """The read map of a channel shuffle: channel i of ``channel_shuffle(x, groups, convention)``
    is channel ``shuffle_source(...)(i)`` of x (``kernels.reference.shuffle_permutation`` as a map).

    "torchvision" views the C channels as G rows of C/G and reads them by columns, so shuffled
    channel i comes from ``(i % G) * (C/G) + i // G``; "megvii" views them as C/G rows of G:
    ``(i % (C/G)) * G + i // (C/G)``.
    """
    check_convention(convention, SHUFFLE_CONVENTIONS)
    per_group = _groups_of(channels, groups)
    if convention == "torchvision":
        return ChannelMap(step=per_group, period=groups, jump=1)
    return ChannelMap(step=groups, period=per_group, jump=1)


def shuffle_destination(channels: int, groups: int, convention: str = "torchvision") -> ChannelMap:
    """The write map of a channel shuffle (the inverse of :func:`shuffle_source`): channel k of x
    lands on channel ``shuffle_destination(...)(k)`` of the shuffled tensor, so a kernel that
    *stores* channel k there has shuffled its output for free."""
    check_convention(convention, SHUFFLE_CONVENTIONS)
    per_group = _groups_of(channels, groups)
    if convention == "torchvision":
        return ChannelMap(step=groups, period=per_group, jump=1)
    return ChannelMap(step=per_group, period=groups, jump=1)
