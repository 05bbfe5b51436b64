"""Channel shuffle, split and concat: the ops that only move channels."""

from __future__ import annotations

import numpy as np

from ..channel_map import SHUFFLE_CONVENTIONS, SPLIT_CONVENTIONS, check_convention
from ._args import _as_f32, _int


def channel_shuffle(x, groups, convention="torchvision") -> np.ndarray:
    """Permute channels so that the next grouped conv sees every group.

    Shapes: x (N, C, H, W) with C divisible by ``groups``; out (N, C, H, W).

    "torchvision" (the ShuffleNet paper, torchvision's ShuffleNetV2):
        reshape (N, G, C/G, H, W) -> transpose(1, 2) -> flatten back to C.
        Think of the channels as a G x C/G matrix (row = group) and read it
        by columns, so output channels take one channel from each group in turn:
            out[:, c'] = in[:, (c' % G) * (C/G) + c' // G]
    "megvii" (Megvii's ShuffleNet-Series V1 code):
        reshape (N, C/G, G, H, W) -> transpose(1, 2) -> flatten.
            out[:, c'] = in[:, (c' % (C/G)) * G + c' // (C/G)]
        which is the torchvision shuffle with C/G groups instead of G.

    The two are inverse permutations of each other: a "megvii" shuffle undoes
    a "torchvision" shuffle with the same ``groups`` and vice versa (they are
    transposing a G x C/G matrix and a C/G x G matrix).  With G = 2 and C = 4
    both equal [0, 2, 1, 3]; in general they differ.  ``shuffle_permutation``
    returns the index array.  Returns a new contiguous array.
    """
    x = _as_f32(x, 4, "x")
    groups = _int(groups, "groups", 1)
    check_convention(convention, SHUFFLE_CONVENTIONS)
    n, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channels ({c}) are not divisible by groups ({groups})")
    if convention == "torchvision":
        y = x.reshape(n, groups, c // groups, h, w)
    else:
        y = x.reshape(n, c // groups, groups, h, w)
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3, 4)).reshape(n, c, h, w)


def shuffle_permutation(channels, groups, convention="torchvision") -> np.ndarray:
    """Index array p (int64, shape (channels,)) of ``channel_shuffle``.

    ``channel_shuffle(x, groups, convention)[:, i] == x[:, p[i]]`` for all i,
    so a fast kernel can shuffle with a gather ``x[:, p]`` or, better, fold p
    into the next layer's weights.  Uses the closed-form index formulas in
    ``channel_shuffle``'s docstring.
    """
    channels = _int(channels, "channels", 1)
    groups = _int(groups, "groups", 1)
    check_convention(convention, SHUFFLE_CONVENTIONS)
    if channels % groups:
        raise ValueError(f"channels ({channels}) are not divisible by groups ({groups})")
    i = np.arange(channels, dtype=np.int64)
    per_group = channels // groups
    if convention == "torchvision":
        return (i % groups) * per_group + i // groups
    return (i % per_group) * groups + i // per_group


def split_channels(x, convention="halves") -> tuple[np.ndarray, np.ndarray]:
    """Split the channels of x (N, C, H, W), C even, into two (N, C/2, H, W).

    "halves" (torchvision ``x.chunk(2, dim=1)``): ``(x[:, :C/2], x[:, C/2:])``.
    "interleaved" (Megvii ShuffleNetV2, whose ``channel_shuffle`` returns the
    even then the odd channels): ``(x[:, 0::2], x[:, 1::2])``.
    Megvii's layout is torchvision's "concat then shuffle(2) then chunk" with
    the shuffle folded into the split.  Returns two new contiguous arrays.
    """
    x = _as_f32(x, 4, "x")
    check_convention(convention, SPLIT_CONVENTIONS)
    c = x.shape[1]
    if c % 2:
        raise ValueError(f"split_channels needs an even number of channels, got {c}")
    if convention == "halves":
        a, b = x[:, : c // 2], x[:, c // 2:]
    else:
        a, b = x[:, 0::2], x[:, 1::2]
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def concat_channels(*xs) -> np.ndarray:
    """Concatenate NCHW arrays along channels: (N, C1, H, W), ... -> (N, sum Ci, H, W).

    Batch size and spatial size must agree (ShuffleNet's stride-2 units join
    the two branches this way; V2 units join the split halves).
    """
    if not xs:
        raise ValueError("concat_channels needs at least one array")
    arrs = [_as_f32(a, 4, f"input {i}") for i, a in enumerate(xs)]
    n, _, h, w = arrs[0].shape
    for i, a in enumerate(arrs[1:], start=1):
        if (a.shape[0], a.shape[2], a.shape[3]) != (n, h, w):
            raise ValueError(
                f"input {i} has shape {a.shape}, which does not match input 0 "
                f"{arrs[0].shape} in batch and spatial size"
            )
    return np.concatenate(arrs, axis=1)
