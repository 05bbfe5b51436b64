"""Backends: how a :class:`~npshuffle.plan.Plan` is executed.

A backend turns (plan, folded weights) into a *runner*: a callable from an NCHW float32 batch
``(N, 3, H, W)`` to logits ``(N, num_classes)``. ``prepare`` is where a backend does its one-time
work (packing weights into its own layout, compiling, allocating workspaces), so a runner can be
called many times cheaply.

``NumpyBackend`` is the readable reference: it walks the plan and calls ``kernels.reference`` op by
op, exactly as the plan's docstrings describe the network. Faster backends plug in by registering
under another name in :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kernels import reference as ref

from .plan import ConvLayer, Plan, V1Unit, V2Unit

Runner = Callable[[np.ndarray], np.ndarray]


class BackendError(RuntimeError):
    """A backend that cannot be used here (not installed, no device, unknown name)."""


class NumpyBackend:
    """Plain NumPy, op by op (``kernels.reference``). Slow, obviously correct."""

    name = "numpy"

    def prepare(self, plan: Plan, weights: dict[str, np.ndarray]) -> Runner:
        def conv(layer: ConvLayer, x: np.ndarray) -> np.ndarray:
            w, b = weights[f"{layer.name}.weight"], weights[f"{layer.name}.bias"]
            return ref.conv2d(x, w, b, stride=layer.stride, padding=layer.padding, groups=layer.groups, relu=layer.relu)

        def v1_unit(u: V1Unit, x: np.ndarray) -> np.ndarray:
            y = conv(u.pw1, x)
            if u.groups > 1:
                y = ref.channel_shuffle(y, u.groups, u.shuffle)
            y = conv(u.pw2, conv(u.dw, y))
            if u.stride == 1:
                return ref.bias_relu(x + y, None, relu=True)
            shortcut = ref.avg_pool2d(x, 3, 2, 1, count_include_pad=True)
            return ref.concat_channels(shortcut, ref.bias_relu(y, None, relu=True))

        def v2_unit(u: V2Unit, x: np.ndarray) -> np.ndarray:
            if u.stride == 1:
                passthrough, x = ref.split_channels(x, u.split)
            else:
                passthrough = conv(u.proj_pw, conv(u.proj_dw, x))
            out = ref.concat_channels(passthrough, conv(u.pw2, conv(u.dw, conv(u.pw1, x))))
            return ref.channel_shuffle(out, 2, "torchvision") if u.shuffle_after else out

        def run_one(x: np.ndarray) -> np.ndarray:
            x = ref.max_pool2d(conv(plan.stem, x), 3, 2, 1)
            for unit in plan.units:
                x = v1_unit(unit, x) if isinstance(unit, V1Unit) else v2_unit(unit, x)
            if plan.head is not None:
                x = conv(plan.head, x)
            c = plan.classifier
            return ref.linear(ref.global_avg_pool(x), weights[f"{c.name}.weight"], weights[f"{c.name}.bias"])

        def run(x: np.ndarray) -> np.ndarray:
            # One image at a time, so that an image's logits never depend on its neighbours: BLAS
            # picks its kernel (GEMV for one row, GEMM tiles and edge cases for more) by the
            # matrix sizes, and with the batch inside the matrix an image's position in it would
            # change the rounding (by ~1e-6, differently on each CPU).
            return np.concatenate([run_one(x[i: i + 1]) for i in range(x.shape[0])])

        return run


def _numba_backend():
    from .backend_numba import NumbaBackend  # imports numba: only when asked for

    return NumbaBackend()


def _cuda_backend():
    from .backend_cuda import CudaBackend  # imports numba.cuda: only when asked for

    return CudaBackend()


# name -> factory. Each factory raises BackendError with a clear message when its backend cannot
# run here (e.g. "cuda" without a GPU or without numba-cuda).
BACKENDS: dict[str, Callable[[], object]] = {
    "numpy": NumpyBackend,
    "numba": _numba_backend,
    "cuda": _cuda_backend,
}


def _auto_backend():
    from .auto import AutoBackend  # NumPy for small jobs, Numba for large ones: see npshuffle/auto.py

    return AutoBackend()


BACKENDS["auto"] = _auto_backend

# what a Model runs on unless told otherwise
DEFAULT_BACKEND = "auto"


def get_backend(name: str | None = None):
    """An instance of the backend called ``name`` (see :data:`BACKENDS`); None = DEFAULT_BACKEND."""
    name = name or DEFAULT_BACKEND
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}") from None
    return factory()
