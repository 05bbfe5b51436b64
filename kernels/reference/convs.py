"""Convolutions (dense, grouped, pointwise, depthwise), the bias + ReLU epilogue, and batch norm."""

from __future__ import annotations

import numpy as np

from ._args import _as_f32, _bias, _int, _out_size, _pad, _pair, _windows


def bias_relu(x, bias=None, relu=True) -> np.ndarray:
    """Fused convolution epilogue: ``x + bias[None, :, None, None]``, then ReLU.

    x: (N, C, H, W) float32.  bias: (C,) or None (no add).  relu: if True the
    result is ``max(., 0)``.  This is the epilogue every conv below fuses, and
    the one a folded conv+BN(+ReLU) kernel applies after its accumulation.
    Returns a new (N, C, H, W) float32 array; ``x`` is not modified.
    """
    x = _as_f32(x, 4, "x")
    bias = _bias(bias, x.shape[1])
    out = x.copy() if bias is None else x + bias[None, :, None, None]
    if relu:
        np.maximum(out, 0.0, out=out)
    return out


def conv2d(x, weight, bias=None, *, stride=1, padding=0, groups=1, relu=False) -> np.ndarray:
    """General (dense or grouped) 2-D convolution, cross-correlation like torch.

    Shapes (NCHW):
      x      (N, C, H, W)
      weight (O, C // groups, KH, KW)
      bias   (O,) or None
      out    (N, O, Ho, Wo),  Ho = (H + 2*ph - KH) // sh + 1  (same for W)

    ``stride`` and ``padding`` are ints or ``(h, w)`` pairs; padding is zeros.
    Channels are split into ``groups`` contiguous blocks: output channels
    ``[g*O/G, (g+1)*O/G)`` see only input channels ``[g*C/G, (g+1)*C/G)``,
    which is why a grouped conv has 1/G of the dense weights.
    Fuses ``+ bias`` and, if ``relu``, ``max(., 0)`` (see ``bias_relu``).

    Algorithm: im2col, then one matrix product per group.  Every output pixel
    becomes a row holding its (C/G * KH * KW) input patch values, so a group's
    conv is ``cols (N*Ho*Wo, C/G*KH*KW) @ weight_g.T (C/G*KH*KW, O/G)``.
    """
    x = _as_f32(x, 4, "x")
    weight = _as_f32(weight, 4, "weight")
    groups = _int(groups, "groups", 1)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if c % groups:
        raise ValueError(f"input channels ({c}) are not divisible by groups ({groups})")
    if o % groups:
        raise ValueError(
            f"output channels (weight.shape[0] = {o}) are not divisible by groups ({groups})"
        )
    if cg != c // groups:
        raise ValueError(
            f"weight.shape[1] must be input channels // groups = {c} // {groups} = "
            f"{c // groups}, got weight shape {weight.shape}"
        )
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be >= 1, got weight shape {weight.shape}")
    bias = _bias(bias, o)
    ho = _out_size(h, kh, sh, ph, "conv2d", "height")
    wo = _out_size(w, kw, sw, pw, "conv2d", "width")

    # (N, C, Ho, Wo, KH, KW) view: [n, c, i, j] is the patch under output (i, j).
    patches = _windows(_pad(x, ph, pw), kh, kw, sh, sw)
    og = o // groups
    out = np.empty((n, o, ho, wo), dtype=np.float32)
    for g in range(groups):
        # im2col for this group: rows = (n, i, j) output pixels, columns =
        # (c, ky, kx) in the same order as weight[o, c, ky, kx] flattens.
        p = patches[:, g * cg:(g + 1) * cg]                    # (N, cg, Ho, Wo, KH, KW)
        cols = p.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
        w_g = weight[g * og:(g + 1) * og].reshape(og, cg * kh * kw)
        res = cols @ w_g.T                                      # (N*Ho*Wo, og)
        out[:, g * og:(g + 1) * og] = res.reshape(n, ho, wo, og).transpose(0, 3, 1, 2)
    if bias is not None or relu:
        out = bias_relu(out, bias, relu)
    return out


def pointwise_conv2d(x, weight, bias=None, *, groups=1, relu=False) -> np.ndarray:
    """1x1 convolution (grouped allowed), stride 1, no padding.

    Shapes: x (N, C, H, W), weight (O, C // groups, 1, 1), bias (O,) or None,
    out (N, O, H, W).  Fuses ``+ bias`` and optional ReLU.

    A 1x1 conv is a matrix product over all pixels at once: within group g,
    ``out[n, g-block] = W_g (O/G, C/G) @ x[n, g-block] (C/G, H*W)``.  The
    ``(N, G, C/G, H*W)`` view of x and the ``(G, O/G, C/G)`` view of the weight
    let one broadcasting matmul do every (image, group) pair.
    """
    x = _as_f32(x, 4, "x")
    weight = _as_f32(weight, 4, "weight")
    groups = _int(groups, "groups", 1)
    n, c, h, w = x.shape
    o = weight.shape[0]
    if weight.shape[2:] != (1, 1):
        raise ValueError(f"pointwise_conv2d needs a 1x1 kernel, got weight shape {weight.shape}")
    if c % groups:
        raise ValueError(f"input channels ({c}) are not divisible by groups ({groups})")
    if o % groups:
        raise ValueError(
            f"output channels (weight.shape[0] = {o}) are not divisible by groups ({groups})"
        )
    if weight.shape[1] != c // groups:
        raise ValueError(
            f"weight.shape[1] must be input channels // groups = {c} // {groups} = "
            f"{c // groups}, got weight shape {weight.shape}"
        )
    bias = _bias(bias, o)
    cg, og = c // groups, o // groups
    xg = x.reshape(n, groups, cg, h * w)          # (N, G, C/G, H*W)
    wg = weight.reshape(groups, og, cg)           # (G, O/G, C/G)
    out = np.matmul(wg, xg)                       # (N, G, O/G, H*W)
    out = out.reshape(n, o, h, w)
    if bias is not None or relu:
        out = bias_relu(out, bias, relu)
    return out


def depthwise_conv2d(x, weight, bias=None, *, stride=1, padding=0, relu=False) -> np.ndarray:
    """Depthwise convolution: groups == C, one KH x KW filter per channel.

    Shapes: x (N, C, H, W), weight (C, 1, KH, KW), bias (C,) or None,
    out (N, C, Ho, Wo) with Ho = (H + 2*ph - KH) // sh + 1.  ``stride`` and
    ``padding`` are ints or ``(h, w)`` pairs; padding is zeros.  Fuses
    ``+ bias`` and optional ReLU (ShuffleNet itself uses no ReLU here).

    Written as a sum over the KH*KW kernel taps: for tap (ky, kx), the input
    pixels that tap touches for all outputs form the strided view
    ``xp[:, :, ky : ky + sh*(Ho-1) + 1 : sh, kx : kx + sw*(Wo-1) + 1 : sw]``
    of shape (N, C, Ho, Wo), which is scaled per channel by weight[:, 0, ky, kx].
    """
    x = _as_f32(x, 4, "x")
    weight = _as_f32(weight, 4, "weight")
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    n, c, h, w = x.shape
    if weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(
            f"depthwise weight must have shape (C, 1, KH, KW) = ({c}, 1, KH, KW), "
            f"got {weight.shape}"
        )
    kh, kw = weight.shape[2:]
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be >= 1, got weight shape {weight.shape}")
    bias = _bias(bias, c)
    ho = _out_size(h, kh, sh, ph, "depthwise_conv2d", "height")
    wo = _out_size(w, kw, sw, pw, "depthwise_conv2d", "width")

    xp = _pad(x, ph, pw)
    out = np.zeros((n, c, ho, wo), dtype=np.float32)
    for ky in range(kh):
        for kx in range(kw):
            tap = xp[:, :, ky:ky + sh * (ho - 1) + 1:sh, kx:kx + sw * (wo - 1) + 1:sw]
            out += tap * weight[None, :, 0, ky, kx, None, None]
    if bias is not None or relu:
        out = bias_relu(out, bias, relu)
    return out




def batch_norm(x, gamma, beta, mean, var, eps=1e-5) -> np.ndarray:
    """Inference-mode batch normalisation, per channel (not folded).

    Shapes: x (N, C, H, W); gamma, beta, mean, var each (C,); out (N, C, H, W).
    ``out = (x - mean) / sqrt(var + eps) * gamma + beta`` with the running
    statistics, i.e. ``F.batch_norm(..., training=False)``.  Folding it into
    the preceding conv uses ``scale = gamma / sqrt(var + eps)``:
    ``W' = W * scale[:, None, None, None]``, ``b' = (b - mean) * scale + beta``.
    """
    x = _as_f32(x, 4, "x")
    c = x.shape[1]
    params = {}
    for name, p in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        p = _as_f32(p, None, name)
        if p.shape != (c,):
            raise ValueError(f"{name} must have shape ({c},) (one per channel), got {p.shape}")
        params[name] = p
    if np.any(params["var"] + eps <= 0):
        raise ValueError("var + eps must be positive for every channel")
    scale = params["gamma"] / np.sqrt(params["var"] + np.float32(eps))
    out = (x - params["mean"][None, :, None, None]) * scale[None, :, None, None]
    return (out + params["beta"][None, :, None, None]).astype(np.float32, copy=False)
