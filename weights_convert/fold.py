"""Folding batch norm into the convolution before it.

In inference mode a BatchNorm2d is a per-channel affine map::

    bn(y)[o] = gamma[o] * (y[o] - mean[o]) / sqrt(var[o] + eps) + beta[o]

and a convolution's output channel ``o`` is ``y[o] = sum(w[o] * patch) + b[o]``. Writing
``s[o] = gamma[o] / sqrt(var[o] + eps)``, the two collapse into one convolution::

    w'[o] = w[o] * s[o]                 (every weight of output channel o, whatever the groups)
    b'[o] = (b[o] - mean[o]) * s[o] + beta[o]

Because the scale is per *output* channel, the identity holds for dense, grouped and depthwise
convs alike. The arithmetic is done in float64 and rounded once to float32.
"""

from __future__ import annotations

import numpy as np


def fold_batchnorm(
    weight: np.ndarray,
    bias: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``BN(conv(x; weight, bias))`` into one conv.

    weight (O, C/groups, KH, KW); bias (O,) or None; gamma, beta, mean, var (O,).
    Returns (weight', bias') as float32, shapes (O, C/groups, KH, KW) and (O,).
    """
    out_channels = weight.shape[0]
    for name, value in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if value.shape != (out_channels,):
            raise ValueError(
                f"BN {name} has shape {value.shape}, expected ({out_channels},) for a conv of shape {weight.shape}"
            )
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    conv_bias = np.zeros(out_channels) if bias is None else bias.astype(np.float64)
    folded_w = weight.astype(np.float64) * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    folded_b = (conv_bias - mean) * scale + beta
    return folded_w.astype(np.float32), folded_b.astype(np.float32)


def permute_output_channels(weight: np.ndarray, bias: np.ndarray, perm: np.ndarray):
    """Reorder a per-channel (depthwise) conv's filters: new filter ``i`` is old filter ``perm[i]``.

    Used to move a channel shuffle from after a depthwise conv to before it:
    ``shuffle(dw(y)) == dw'(shuffle(y))`` where dw' has filters permuted by the shuffle's ``perm``.
    """
    return np.ascontiguousarray(weight[perm]), np.ascontiguousarray(bias[perm])
