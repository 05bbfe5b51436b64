"""Argument checks shared by the reference ops: every one turns a bad argument into a ValueError
that names it."""

from __future__ import annotations

import operator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..sizes import output_size


def _as_f32(a, ndim: int | None, name: str) -> np.ndarray:
    """Return ``a`` as a float32 ndarray, checking its number of dimensions."""
    a = np.asarray(a, dtype=np.float32)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _int(value, name: str, minimum: int) -> int:
    """Check that ``value`` is an integer >= ``minimum`` and return it as int.

    A wrong *type* (float, bool, None) is a TypeError; a wrong value
    (e.g. stride 0, negative padding) is a ValueError.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    """Turn an int or an ``(h, w)`` pair into a validated ``(h, w)`` tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r}")
        return _int(value[0], name, minimum), _int(value[1], name, minimum)
    v = _int(value, name, minimum)
    return v, v


def _bias(bias, channels: int) -> np.ndarray | None:
    """Validate an optional per-channel bias of shape ``(channels,)``."""
    if bias is None:
        return None
    bias = _as_f32(bias, None, "bias")
    if bias.shape != (channels,):
        raise ValueError(
            f"bias must have shape ({channels},) (one value per output channel), "
            f"got {bias.shape}"
        )
    return bias


def _out_size(size: int, k: int, s: int, p: int, what: str, axis: str) -> int:
    """``output_size`` along one axis, refusing a kernel larger than the padded input."""
    if k > size + 2 * p:
        raise ValueError(
            f"{what} kernel {axis} ({k}) is larger than the padded input {axis} "
            f"({size} + 2*{p} = {size + 2 * p})"
        )
    return output_size(size, k, s, p)


def _pad(x: np.ndarray, ph: int, pw: int, value: float = 0.0) -> np.ndarray:
    """Pad the two spatial axes of an NCHW array with a constant."""
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """All (kh, kw) windows of an already padded NCHW array, at stride (sh, sw).

    Returns a read-only *view* of shape ``(N, C, Ho, Wo, kh, kw)`` where
    ``[n, c, i, j]`` is the patch ``xp[n, c, i*sh : i*sh+kh, j*sw : j*sw+kw]``.
    ``sliding_window_view`` yields every window at stride 1; keeping every
    ``sh``-th row and ``sw``-th column of those gives exactly
    ``(Hp - kh) // sh + 1`` rows, i.e. torch's ``ceil_mode=False`` size.
    """
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return win[:, :, ::sh, ::sw]
