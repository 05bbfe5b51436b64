"""Plain-NumPy reference implementation of every op a ShuffleNet V1/V2 needs.

Every activation is a float32 array in NCHW layout, ``(batch, channels, height,
width)``, C-contiguous, so the last (width) index moves fastest; every function
here returns float32.  These functions are the *specification* the fast
Numba/CUDA kernels are tested against, so they favour clarity over speed while
staying vectorised enough (im2col + one matrix product per group, one shifted
view per kernel tap) to run a 224x224 ShuffleNet in well under a second.  How
the network maps onto them: the stem is a dense 3x3 stride-2 ``conv2d`` (BN
folded into weight and bias, ``relu=True``) and a 3x3/2 ``max_pool2d``.  A
ShuffleNet V1 unit is a grouped 1x1 ``pointwise_conv2d`` (a grouped conv has
1/G of the parameters of a dense one, ``O * C/G * KH * KW`` instead of
``O * C * KH * KW``, because each output channel only sees the C/G input
channels of its own group), a ``channel_shuffle`` so that the next grouped
conv mixes information across groups, a 3x3 ``depthwise_conv2d`` (groups == C),
a second grouped 1x1, then a residual add or, at stride 2, a
``concat_channels`` with an ``avg_pool2d(3, 2, 1)`` shortcut.  A ShuffleNet V2
unit ``split_channels`` its input, sends one half through 1x1 -> depthwise
3x3 -> 1x1 (at stride 2 both branches take the full input instead), joins the
branches with ``concat_channels`` and applies ``channel_shuffle`` with 2
groups.  V2 adds a final 1x1 conv; both networks end with ``global_avg_pool``,
``linear`` and ``softmax``.  ``batch_norm`` and ``bias_relu`` are the unfolded
BN and the fused bias+ReLU epilogue that fast kernels must reproduce.

At the end of the module, single-image forms of the window ops and convs
(``*_image``, ``window_columns``) compute the same for one (C, H, W) image
into a caller's array, without validation: npshuffle's NumPy backend runs on
them (a batch-1 forward in a few milliseconds instead of tens), and each is
tested against the batched definition it speeds up.
"""

from __future__ import annotations

import operator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .channel_map import SHUFFLE_CONVENTIONS, SPLIT_CONVENTIONS, check_convention
from .sizes import output_size

__all__ = [
    "avg_pool2d",
    "avg_pool_image",
    "batch_norm",
    "bias_relu",
    "bias_relu_",
    "channel_shuffle",
    "concat_channels",
    "conv2d",
    "conv_image",
    "depthwise_conv2d",
    "depthwise_conv_image",
    "global_avg_pool",
    "linear",
    "max_pool2d",
    "max_pool_image",
    "pointwise_conv2d",
    "pointwise_conv_image",
    "shuffle_permutation",
    "softmax",
    "split_channels",
    "tap_ranges",
    "window_columns",
]



# --------------------------------------------------------------------------
# Argument helpers
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Channel shuffle, split, concat
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------


def _pool_args(x, kernel_size, stride, padding, what):
    """Shared validation for the pools (torch rules, ceil_mode=False)."""
    x = _as_f32(x, 4, "x")
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    if ph > kh // 2 or pw > kw // 2:
        # torch's rule; it guarantees every window holds at least one real pixel.
        raise ValueError(
            f"{what} padding ({ph}, {pw}) must be at most half the kernel size "
            f"({kh}, {kw}), i.e. <= ({kh // 2}, {kw // 2})"
        )
    _out_size(x.shape[2], kh, sh, ph, what, "height")
    _out_size(x.shape[3], kw, sw, pw, what, "width")
    return x, kh, kw, sh, sw, ph, pw


def max_pool2d(x, kernel_size, stride=None, padding=0) -> np.ndarray:
    """Max pooling: x (N, C, H, W) -> (N, C, Ho, Wo), Ho = (H + 2p - k) // s + 1.

    ``kernel_size``, ``stride`` (default: kernel_size), ``padding`` are ints
    or (h, w) pairs.  Padding counts as -inf, so it never wins (torch
    semantics); padding must be <= kernel // 2 as torch requires; floor
    output size (``ceil_mode=False``).
    """
    x, kh, kw, sh, sw, ph, pw = _pool_args(x, kernel_size, stride, padding, "max_pool2d")
    win = _windows(_pad(x, ph, pw, -np.inf), kh, kw, sh, sw)   # (N, C, Ho, Wo, kh, kw)
    return win.max(axis=(4, 5))


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True) -> np.ndarray:
    """Average pooling: x (N, C, H, W) -> (N, C, Ho, Wo), Ho = (H + 2p - k) // s + 1.

    ``kernel_size``, ``stride`` (default: kernel_size), ``padding`` are ints
    or (h, w) pairs; padding is zeros and must be <= kernel // 2 (torch rule);
    ``ceil_mode=False``.
    count_include_pad=True:  every window sum is divided by kh * kw, padded
                             zeros included (torch's default; ShuffleNet V1's
                             stride-2 shortcut uses avg_pool2d(3, 2, 1) so).
    count_include_pad=False: divided by the number of real (non-pad) pixels
                             in that window, so border outputs are true means.
    """
    x, kh, kw, sh, sw, ph, pw = _pool_args(x, kernel_size, stride, padding, "avg_pool2d")
    sums = _windows(_pad(x, ph, pw), kh, kw, sh, sw).sum(axis=(4, 5))
    if count_include_pad:
        return (sums / np.float32(kh * kw)).astype(np.float32, copy=False)
    # Count real pixels per window by pooling a padded map of ones: 1 inside
    # the image, 0 in the padding.  Same for every (n, c), so pool one plane.
    ones = np.ones((1, 1) + x.shape[2:], dtype=np.float32)
    counts = _windows(_pad(ones, ph, pw), kh, kw, sh, sw).sum(axis=(4, 5))
    return (sums / counts).astype(np.float32, copy=False)


def global_avg_pool(x) -> np.ndarray:
    """Global average pooling: x (N, C, H, W) -> (N, C), the mean over H and W."""
    x = _as_f32(x, 4, "x")
    return x.mean(axis=(2, 3), dtype=np.float32)


# --------------------------------------------------------------------------
# Classifier head
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Single-image fast forms (the NumPy backend's hot path at batch 1)
# --------------------------------------------------------------------------
#
# The functions above take a batch, validate every argument and return new
# arrays.  The ones below compute the same ops for ONE image held as a
# (C, H, W) float32 array, trust their caller (no validation: the backend
# checked the shapes once, when it prepared the plan), take weights already
# laid out for them, and write into the caller's ``out`` array.  With
# ShuffleNet's small tensors (30 channels of 28x28 is typical) the batched
# forms spend their time in NumPy's per-row loop overhead, in im2col copies
# and in temporaries, not in arithmetic; these keep every pass over the data
# on long contiguous rows: a 1x1 conv is one matrix product, and every KxK
# window op works on the image's ``window_columns``: K*K shifted copies of
# it, each a plain (C, Ho*Wo) matrix.  Each is tested against its batched definition
# in tests/test_reference_kernels.py.


def tap_ranges(size: int, kernel: int, stride: int, padding: int) -> tuple[int, list[tuple[slice, slice]]]:
    """Where each kernel tap lands along one axis, with the padding left out.

    Returns ``(out_size, taps)``, ``out_size = (size + 2*padding - kernel) // stride + 1``
    and ``taps[t] = (dst, src)`` for tap t = 0..kernel-1: output positions ``i``
    in ``dst`` read input position ``i*stride + t - padding`` and ``src`` lists
    those input positions in the same order.  Outputs whose input would fall in
    the padding are left out of ``dst``.
    """
    out_size = output_size(size, kernel, stride, padding)
    taps = []
    for t in range(kernel):
        first = max(0, -((t - padding) // stride))                      # ceil((padding - t) / stride)
        stop = min(out_size, (size - 1 + padding - t) // stride + 1)   # one past the last valid output
        count = max(0, stop - first)
        start = first * stride + t - padding
        end = start + (count - 1) * stride + 1 if count else start     # one past the last input read
        taps.append((slice(first, first + count), slice(start, end, stride)))
    return out_size, taps


def window_columns(x, kernel: int, stride: int, padding: int, fill: float = 0.0) -> np.ndarray:
    """im2col for one image: every KxK window a window op at (stride, padding) reads, as columns.

    x (C, H, W) C-contiguous.  Returns a new (C, K*K, Ho*Wo) float32 array whose
    ``[c, ky*K + kx, i*Wo + j]`` is ``x[c, i*stride + ky - padding, j*stride + kx - padding]``,
    or ``fill`` where that falls in the padding.  Row ``[c, t]`` is tap t's shifted image
    of channel c, so a depthwise conv is a (1, K*K) @ (K*K, Ho*Wo) product per channel,
    a dense conv one (O, C*K*K) @ (C*K*K, Ho*Wo) product, a pool a max or sum over axis 1.

    How: write ``ky - padding = stride*dy + a`` (0 <= a < stride), and the same for x with
    (dx, b).  Input row ``i*stride + ky - padding`` is then row ``i + dy`` of the *phase
    plane* ``x[:, a::stride, b::stride]`` (the image itself at stride 1).  When H = stride*Ho
    and W = stride*Wo (every ShuffleNet layer on an even-sized input) the phase planes are
    Ho x Wo: laid out flat with pitch Wo between rows of ``fill``, a shift by (dy, dx) is a
    shift of the flat index by ``dy*Wo + dx``, so each tap is one slice copied as long
    contiguous rows, instead of NumPy's per-row loops over 28-pixel rows.  Columns that a
    shift by dx moves past the left or right edge wrap onto the neighbouring row instead of
    the padding; those ``|dx|`` output columns are set to ``fill`` afterwards.  Other sizes:
    one strided copy per tap (``tap_ranges``).
    """
    c, h, w = x.shape
    k, s, p = kernel, stride, padding
    ho, taps_y = tap_ranges(h, k, s, p)
    wo, taps_x = tap_ranges(w, k, s, p)
    cols = np.empty((c, k, k, ho, wo), dtype=np.float32)
    if h != s * ho or w != s * wo:
        for ky, (dst_y, src_y) in enumerate(taps_y):
            for kx, (dst_x, src_x) in enumerate(taps_x):
                tap = cols[:, ky, kx]
                if (dst_y.stop - dst_y.start, dst_x.stop - dst_x.start) != (ho, wo):
                    tap.fill(fill)   # part of this tap lies in the padding
                tap[:, dst_y, dst_x] = x[:, src_y, src_x]
        return cols.reshape(c, k * k, ho * wo)
    # The s*s phase planes, each between `border` rows of fill: more than any shift reaches.
    border = k + -(-k // wo)
    rows = border + ho + border
    phases = np.empty((c, s, s, rows, wo), dtype=np.float32)
    phases[:, :, :, :border] = fill
    phases[:, :, :, border:border + ho] = x.reshape(c, ho, s, wo, s).transpose(0, 2, 4, 1, 3)
    phases[:, :, :, border + ho:] = fill
    flat = phases.reshape(c, s * s * rows * wo)
    n = ho * wo
    for ky in range(k):
        dy, a = divmod(ky - p, s)
        for kx in range(k):
            dx, b = divmod(kx - p, s)
            start = ((a * s + b) * rows + border + dy) * wo + dx
            cols[:, ky, kx] = flat[:, start:start + n].reshape(c, ho, wo)
    for kx in range(k):   # the wrapped columns (see above)
        dx = (kx - p) // s
        if dx < 0:
            cols[:, :, kx, :, :-dx] = fill
        elif dx > 0:
            cols[:, :, kx, :, wo - dx:] = fill
    return cols.reshape(c, k * k, ho * wo)


def bias_relu_(y: np.ndarray, bias: np.ndarray | None, relu: bool) -> np.ndarray:
    """In-place ``bias_relu``: ``y += bias`` (broadcast), then ``y = max(y, 0)`` if relu. Returns y."""
    if bias is not None:
        np.add(y, bias, out=y)
    if relu:
        np.maximum(y, 0.0, out=y)
    return y


def pointwise_conv_image(x, weight, bias, relu: bool, out) -> np.ndarray:
    """Grouped 1x1 conv of one image as one stacked matrix product, into ``out``.

    x      (G, C/G, P)    the image's P = H*W pixels, channels in G groups; any view whose
                          matrices have unit pixel stride (BLAS reads strided rows)
    weight (G, O/G, C/G)  ``pointwise_conv2d``'s (O, C/G, 1, 1) weight, reshaped once
    bias   (G, O/G, 1) or None
    out    (G, O/G, P)    same rule as x; a strided view here is how a caller writes a
                          concat or a shuffle into place instead of copying afterwards

    ``out[g] = weight[g] @ x[g] (+ bias[g]) (ReLU)``: that is ``pointwise_conv2d`` for one
    image; ``G = 1`` is a dense 1x1 conv.  Returns ``out``.
    """
    np.matmul(weight, x, out=out)
    return bias_relu_(out, bias, relu)


def depthwise_conv_image(x, weight, bias, kernel: int, stride: int, padding: int, relu: bool, out) -> np.ndarray:
    """Depthwise conv of one image, into ``out``.

    x      (C, H, W) C-contiguous
    weight (C, 1, K*K)   ``depthwise_conv2d``'s (C, 1, K, K) weight, reshaped once
    bias   (C, 1) or None
    out    (C, Ho*Wo),   Ho = (H + 2*padding - K) // stride + 1  (same for W)

    Channel c's output is its (1, K*K) filter times its (K*K, Ho*Wo) ``window_columns``,
    so the whole conv is one stacked matrix product ``(C, 1, K*K) @ (C, K*K, Ho*Wo)``: one
    BLAS call per channel, which beats K*K multiply-add passes with a per-channel broadcast
    weight (~2x slower per element than a plain NumPy multiply).  Returns ``out``.
    """
    np.matmul(weight, window_columns(x, kernel, stride, padding), out=out[:, None, :])
    return bias_relu_(out, bias, relu)


def conv_image(x, weight, bias, kernel: int, stride: int, padding: int, relu: bool, out) -> np.ndarray:
    """Dense KxK conv of one image (the stem) as im2col + one matrix product, into ``out``.

    x      (C, H, W) C-contiguous
    weight (O, C*K*K)   ``conv2d``'s (O, C, K, K) weight flattened once, columns in (c, ky, kx) order
    bias   (O, 1) or None
    out    (O, Ho*Wo)

    ``out = weight @ cols`` with the (C*K*K, Ho*Wo) ``window_columns``.  Returns ``out``.
    """
    cols = window_columns(x, kernel, stride, padding)
    np.matmul(weight, cols.reshape(-1, cols.shape[2]), out=out)
    return bias_relu_(out, bias, relu)


def max_pool_image(x, kernel: int, stride: int, padding: int, out) -> np.ndarray:
    """Max pooling of one image, x (C, H, W) C-contiguous -> out (C, Ho*Wo), as ``max_pool2d``
    (-inf padding, ``padding <= kernel // 2`` so no window is all padding, floor sizes).

    The maximum of the ``window_columns`` (filled with -inf) over their K*K taps: bitwise
    the same as ``max_pool2d``, as max is exact whatever the order.  Returns ``out``.
    """
    return np.max(window_columns(x, kernel, stride, padding, fill=-np.inf), axis=1, out=out)


def avg_pool_image(x, kernel: int, stride: int, padding: int, out) -> np.ndarray:
    """Average pooling of one image with ``count_include_pad=True``: x (C, H, W) C-contiguous ->
    out (C, Ho*Wo), as ``avg_pool2d`` (zero padding, ``padding <= kernel // 2``, floor sizes).

    The sum of the ``window_columns`` over their K*K taps, divided by K*K: the same sums as
    ``avg_pool2d`` in another order, so equal to float32 rounding.  ``out`` may be a channel
    slice of a bigger array (V1's stride-2 concat).  Returns ``out``.
    """
    np.sum(window_columns(x, kernel, stride, padding), axis=1, out=out)
    return np.divide(out, np.float32(kernel * kernel), out=out)
