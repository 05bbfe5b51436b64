"""The output size of a window op (conv or pool): the one place the formula lives.

Every layer of a ShuffleNet is a square window op with a padding, so its output height (and,
the same way, width) for an input of height ``size`` is::

    (size + 2 * padding - kernel) // stride + 1

The kernels, the plan (``npshuffle.plan``) and the lowering all call :func:`output_size`.
"""

from __future__ import annotations


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output height (width) of a ``kernel`` x ``kernel`` window op at ``stride`` and ``padding``."""
    return (size + 2 * padding - kernel) // stride + 1
