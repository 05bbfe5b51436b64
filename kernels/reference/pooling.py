"""Max, average and global average pooling."""

from __future__ import annotations

import numpy as np

from ._args import _as_f32, _out_size, _pad, _pair, _windows


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
