"""The output size of a window op (conv or pool): the one place the formula lives.

Every layer of a ShuffleNet is a square window op with a padding, so its output height (and,
the same way, width) for an input of height ``size`` is::

    (size + 2 * padding - kernel) // stride + 1

The plan (``npshuffle.plan``), the lowering, the reference kernels, the CUDA launchers and the
Numba stem's geometry (``kernels.cpu.layout.stem_geometry``) call :func:`output_size`; only the
compiled stem kernel (``kernels/cpu/stem.py``) spells the 3/2/1 case out as ``(n - 1) // 2 + 1``.
"""

from __future__ import annotations


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output height (width) of a ``kernel`` x ``kernel`` window op at ``stride`` and ``padding``."""
    return (size + 2 * padding - kernel) // stride + 1
