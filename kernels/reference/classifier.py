"""The classifier head: linear layer and softmax."""

from __future__ import annotations

import numpy as np

from ._args import _as_f32, _bias


def linear(x, weight, bias=None) -> np.ndarray:
    """Fully connected layer: x (N, F), weight (O, F), bias (O,) or None -> (N, O).

    ``out = x @ weight.T + bias`` (torch's ``F.linear`` weight layout).
    """
    x = _as_f32(x, 2, "x")
    weight = _as_f32(weight, 2, "weight")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight.shape[1] ({weight.shape[1]}) must equal the input features "
            f"x.shape[1] ({x.shape[1]})"
        )
    bias = _bias(bias, weight.shape[0])
    out = x @ weight.T
    if bias is not None:
        out += bias[None, :]
    return out


def softmax(logits, axis=-1) -> np.ndarray:
    """Numerically stable softmax along ``axis``; output has the input's shape.

    Subtracting the max along ``axis`` first leaves the result unchanged
    (exp(a - m) / sum exp(b - m) = exp(a) / sum exp(b)) but keeps every
    exponent <= 0, so exp cannot overflow and the sum is >= 1.
    """
    z = _as_f32(logits, None, "logits")
    if z.ndim == 0:
        raise ValueError("softmax needs at least a 1-D array")
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
