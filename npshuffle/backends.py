"""Backends: what runs a plan (through its lowered program), and the registry that names them.

A backend turns (plan, folded weights) into a *runner*: a callable from an NCHW float32 batch
``(N, 3, H, W)`` to logits ``(N, num_classes)``. ``prepare`` is where a backend does its one-time
work (lowering the plan with ``npshuffle.lowering``, packing weights into its own layout,
compiling, allocating workspaces), so a runner can be called many times cheaply.

:data:`BACKENDS` names them: ``numpy`` (``backend_numpy``: plain NumPy, nothing to compile),
``numba`` and ``cuda`` (``backend_numba``, ``backend_cuda``: imported only when asked for) and
``auto`` (the default: NumPy or Numba per job, ``npshuffle/auto.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import cpu_settings
from .backend_numpy import NumpyBackend  # (re-exported: the one backend that is always there)

Runner = Callable[[np.ndarray], np.ndarray]


class BackendError(RuntimeError):
    """A backend that cannot be used here (not installed, no device, unknown name)."""


def _numba_backend(**cpu_settings):
    from .backend_numba import NumbaBackend  # imports numba: only when asked for

    return NumbaBackend(**cpu_settings)


def _cuda_backend():
    from .backend_cuda import CudaBackend  # imports numba.cuda: only when asked for

    return CudaBackend()


def _auto_backend(**cpu_settings):
    from .auto import AutoBackend  # NumPy for small jobs, Numba for large ones: see npshuffle/auto.py

    return AutoBackend(**cpu_settings)


# name -> factory. Each factory raises BackendError with a clear message when its backend cannot
# run here (e.g. "cuda" without a GPU or without numba-cuda).
BACKENDS: dict[str, Callable[..., object]] = {
    "numpy": NumpyBackend,
    "numba": _numba_backend,
    "cuda": _cuda_backend,
    "auto": _auto_backend,
}
# the backends that run the Numba CPU kernels, and so take their thread settings
NUMBA_CPU_BACKENDS = ("numba", "auto")

# what a Model runs on unless told otherwise
DEFAULT_BACKEND = "auto"


def get_backend(name: str | None = None, *, threads: int | None = None, schedule: str | None = None):
    """An instance of the backend called ``name`` (see :data:`BACKENDS`); None = DEFAULT_BACKEND.

    ``threads`` and ``schedule`` set how the Numba CPU kernels use the cores (see
    ``backend_numba.NumbaRunner``: None = all of Numba's threads, ``"adaptive"``); they apply to
    ``numba`` and ``auto`` (whose NumPy part runs NumPy's BLAS, which takes its thread count from
    OPENBLAS_NUM_THREADS / OMP_NUM_THREADS when the process starts). Other backends refuse them.
    """
    name = name or DEFAULT_BACKEND
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}") from None
    settings = cpu_settings.given(threads, schedule)
    if settings and name not in NUMBA_CPU_BACKENDS:
        raise ValueError(f"{' and '.join(settings)} set the Numba CPU kernels' threads: backend {name!r} does not "
                         f"run them (use {' or '.join(repr(n) for n in NUMBA_CPU_BACKENDS)}; NumPy's BLAS takes "
                         "OPENBLAS_NUM_THREADS / OMP_NUM_THREADS from the environment)")
    return factory(**settings)
