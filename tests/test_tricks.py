"""The Numba tricks of ``kernels.cpu.tricks`` do what their docstrings say, seen in the generated LLVM IR."""

from __future__ import annotations

import numpy as np
from numba import njit

from npshuffle import backend_numba  # (kernels.cpu, with npshuffle's cache locator)
from npshuffle.backend_numba import cpu


def test_wide_vectors_sets_the_prefer_vector_width_attribute_on_its_function():
    from kernels.cpu.tricks import _wide_vectors

    @njit
    def scale(x):
        _wide_vectors()
        for i in range(x.size):
            x[i] *= 2.0

    @njit
    def plain(x):
        for i in range(x.size):
            x[i] *= 2.0

    x = np.ones(64, np.float32)
    scale(x)
    plain(x)
    assert (x == 4.0).all()  # (the attribute changes code generation, never the numbers)
    wide = next(iter(scale.inspect_llvm().values()))
    assert '"prefer-vector-width"="512"' in wide
    assert '"prefer-vector-width"="512"' not in next(iter(plain.inspect_llvm().values()))


def test_every_kernel_module_asks_for_wide_vectors():
    """Each file with a hot loop calls _wide_vectors() in its kernels (trick 8), so none is left at
    LLVM's 256-bit preference on Intel server CPUs."""
    import inspect

    import kernels.cpu.gemm
    import kernels.cpu.micro_kernel
    import kernels.cpu.per_channel
    import kernels.cpu.resample
    import kernels.cpu.stem

    assert backend_numba.cpu is cpu
    kernels_by_module = {
        kernels.cpu.gemm: ["gemm", "_finish_tile", "classifier_part"],
        kernels.cpu.per_channel: ["depthwise3x3", "_depthwise_block", "avg_pool3x3", "global_pool"],
        kernels.cpu.resample: ["resize_crop_normalise", "_weights"],
        kernels.cpu.stem: ["phase_input", "_stem_tile", "stem_pool"],
    }
    for module, names in kernels_by_module.items():
        for name in names:
            assert "_wide_vectors()" in inspect.getsource(getattr(module, name).py_func), f"{module.__name__}.{name}"
    assert "_wide_vectors()" in inspect.getsource(kernels.cpu.micro_kernel._tile_kernel)
