"""The driver: the kernels' address table, compiling them, and the forward pass.

Steps and threads
-----------------
The backend (``npshuffle.numba_steps``) turns the lowered program into a table of *steps*
(``steps.py``), one row per kernel launch,
holding nothing but integers. A step kernel (``steps.STEP_ARGS``; ``fns[kind]``) executes one
step, or one thread's share of it; :func:`forward` runs the whole table and the classifier, in
one call from Python:

* one image: every step with enough work split across the threads (by pixel tiles, output rows
  or output-channel tiles, as its ``split`` field says); runs of small steps go to thread 0 in
  one round. A parallel region costs ~1.3 us with Numba's OpenMP layer, so ~50 fork-joins per
  image are cheap;
* a batch: each thread runs whole images in its own workspace, whose activations then stay in its
  own core's L2 cache.

Compiling
---------
Each kernel -- the six step kernels, the classifier and the five micro-kernels -- is compiled on
its own for fixed argument types and called through a table of addresses (``fns``,
:func:`kernel_table`), and the driver :func:`_forward` holds no kernel code at all (see
``tricks.py``, trick 6: that keeps the first run's compile down to ~18 s of one core's time). That
also lets two processes compile different kernels at the same time (:func:`compile_kernels`;
``npshuffle.backend_numba`` does so on a cold cache). Everything is compiled with ``cache=True``,
so a new process loads machine code from the cache instead of compiling again. The calls cost
what they did before: the micro-kernel was never inlined, and a step kernel is called once per
step and thread.

Every compile of these kernels happens here, inside :func:`compile_settings`, which switches on
LLVM's SLP vectoriser for them alone (``tricks.py``, trick 7): importing the package changes no
setting of Numba's.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
from numba import njit, prange, types
from numba.core import config

from .gemm import classifier_part, gemm
from .layout import TILE_WIDTHS
from .micro_kernel import TILE_ARGS, _tile_kernel
from .per_channel import avg_pool3x3, depthwise3x3, global_pool
from .resample import RESAMPLE_ARGS, resize_crop_normalise
from .stem import phase_input, stem_pool
from .steps import (
    AVG_POOL,
    CLASSIFIER_ARGS,
    DEPTHWISE,
    FN_CLASSIFIER,
    FN_TILE,
    GEMM,
    GLOBAL_POOL,
    N_FNS,
    PHASE_INPUT,
    SPLIT_NONE,
    STEM_POOL,
    STEP_ARGS,
    STEP_TYPE,
)
from .tricks import _caller

SLP_ENV = "NUMBA_SLP_VECTORIZE"


@contextmanager
def compile_settings():
    """While our kernels compile: LLVM's SLP vectoriser on, which Numba leaves off by default
    (``tricks.py``, trick 7). Numba re-reads its NUMBA_* environment variables before each
    compilation, so the setting goes there, and is taken out again afterwards (and Numba's config
    re-read), leaving the process as it was. A NUMBA_SLP_VECTORIZE the user set is left alone:
    ``=0`` opts out (Numba's cache does not key on it, so clear the cache for that to take effect).

    (Another thread compiling other code at the same time would see the setting too.)
    """
    if SLP_ENV in os.environ:
        yield
        return
    os.environ[SLP_ENV] = "1"
    try:
        yield
    finally:
        os.environ.pop(SLP_ENV, None)
        config.reload_config()


_call_step = _caller(STEP_ARGS)  # _call_step(fns[kind], *arguments): run a step kernel
_call_classifier = _caller(CLASSIFIER_ARGS)

# the kernels of the address table, with the argument types each is compiled for
_KERNELS = {
    PHASE_INPUT: (phase_input, STEP_ARGS),
    GEMM: (gemm, STEP_ARGS),
    DEPTHWISE: (depthwise3x3, STEP_ARGS),
    STEM_POOL: (stem_pool, STEP_ARGS),
    AVG_POOL: (avg_pool3x3, STEP_ARGS),
    GLOBAL_POOL: (global_pool, STEP_ARGS),
    FN_CLASSIFIER: (classifier_part, CLASSIFIER_ARGS),
    **{FN_TILE + nr // 8: (_tile_kernel(nr), TILE_ARGS) for nr in TILE_WIDTHS},
}
# kernels called from Python, not through the table: the photo preprocessing (``resample.py``), which
# is compiled and cached with the others; its key in compile_kernels' slots
RESAMPLE = "resample"
_COMPILED = {**_KERNELS, RESAMPLE: (resize_crop_normalise, RESAMPLE_ARGS)}  # every kernel, by slot
KERNEL_SLOTS = tuple(_KERNELS)  # the address table's
ALL_KERNELS = tuple(_COMPILED)  # what compile_kernels compiles by default
MICRO_KERNELS = tuple(FN_TILE + nr // 8 for nr in TILE_WIDTHS)  # the GEMM micro-kernels' slots
_table: list[np.ndarray] = []  # kernel_table()'s result, once built
_driver_compiled = False  # _forward compiled (or loaded) for FORWARD_ARGS by compile_kernels


@njit(parallel=True, cache=True, nogil=True)
def _forward(fns, workspaces, wts, itab, steps, rounds, images, features, fc_step, logits, nthreads, by_image):
    """:func:`forward`, given the address table ``fns``. It releases the GIL (``nogil``), so that the
    threads decoding the next photos (``npshuffle.pipeline``) run while the network does.

    There is a single ``prange`` (one fork-join per round): Numba compiles each ``prange`` body
    into a function of its own, and one loop keeps the first run's compile time down.
    """
    n_images = images.shape[0]
    nsteps = steps.shape[0]
    nrounds = rounds.shape[0]  # >= 1 (Numba may evaluate rounds[r % nrounds] before the branch that uses it)
    total = 2 if by_image else n_images * nrounds + 1
    whole, one = np.int64(0), np.int64(1)
    for r in range(total):
        for t in prange(nthreads):
            part = np.int64(t)
            if r == total - 1:
                _call_classifier(fns[FN_CLASSIFIER], fns, features, wts, itab, fc_step[0], logits, part, nthreads)
            elif by_image:
                for n in range(part, n_images, nthreads):
                    for s in range(nsteps):
                        st = steps[s]
                        _call_step(fns[st.kind], fns, workspaces[part], wts, itab, st, images[n], features[n],
                                   whole, one)
            else:
                n, first, last = r // nrounds, rounds[r % nrounds, 0], rounds[r % nrounds, 1]
                if last - first == 1 and steps[first].split != SPLIT_NONE:
                    st = steps[first]
                    _call_step(fns[st.kind], fns, workspaces[0], wts, itab, st, images[n], features[n], part, nthreads)
                elif part == 0:
                    for s in range(first, last):
                        st = steps[s]
                        _call_step(fns[st.kind], fns, workspaces[0], wts, itab, st, images[n], features[n], whole, one)


# the driver's argument types as the backend passes them (others compile another version on first use)
_F32, _I64, _RECORDS = types.float32[::1], types.int64[::1], types.Array(STEP_TYPE, 1, "C")
FORWARD_ARGS = (_I64, types.float32[:, ::1], _F32, _I64, _RECORDS, types.int64[:, ::1], types.float32[:, :, :, ::1],
                types.float32[:, ::1], _RECORDS, types.float32[:, ::1], types.int64, types.boolean)


def compile_kernels(slots=None, driver: bool = True) -> bool:
    """Compile the kernels of these slots (``ALL_KERNELS``: the address table's ``KERNEL_SLOTS`` and
    ``RESAMPLE``; default: all), and with ``driver``
    the driver of :func:`forward`, or load them from Numba's cache. Returns True when any of them
    had to be compiled (the cache did not have it).

    Each kernel compiles on its own, so two processes may compile different ones at the same time,
    each filling the cache, and either then loads the other's (see ``npshuffle.backend_numba``)."""
    global _driver_compiled
    compiled = False
    todo = [_COMPILED[slot] for slot in (_COMPILED if slots is None else slots)]
    if driver:
        todo.append((_forward, FORWARD_ARGS))
    with compile_settings():
        for kernel, argtypes in todo:
            kernel.compile(argtypes)
            compiled |= kernel.stats.cache_misses[argtypes] > 0
    _driver_compiled |= driver
    return compiled


def kernel_table() -> np.ndarray:
    """The address table ``fns`` (int64, ``steps.N_FNS`` slots: ``fns[kind]`` the step kernels, then
    the classifier and the micro-kernels, see ``steps.py``):
    on the first call in a process, every kernel is compiled, or loaded from Numba's cache."""
    if not _table:
        fns = np.zeros(N_FNS, np.int64)
        with compile_settings():
            for slot, (kernel, argtypes) in _KERNELS.items():
                kernel.compile(argtypes)
                compiled = kernel.overloads[argtypes]
                fns[slot] = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
        _table.append(fns)
    return _table[0]


def run_step(ws, wts, itab, st, image, pooled, part, nparts) -> None:
    """Run this thread's share (``part`` of ``nparts``) of one step from Python (for tests and
    per-layer profiles; :func:`forward` calls the kernels directly)."""
    kernel = _KERNELS[int(st["kind"])][0]
    kernel(kernel_table(), ws, wts, itab, st, image, pooled, part, nparts)


def forward(workspaces, wts, itab, steps, rounds, images, features, fc_step, logits, nthreads, by_image) -> None:
    """The whole network on ``images`` (N, C, H, W) -> ``logits`` (N, classes), on ``nthreads`` threads.

    ``by_image``: thread t runs every step on images t, t + nthreads, ... in ``workspaces[t]``.
    Otherwise the images go one after the other, in ``workspaces[0]``, through the *rounds* of
    the step table: ``rounds[r] = (first, last)`` is either one step that the threads split as
    its ``split`` field says, or a run of steps too small to split, which thread 0 runs. Then the
    classifier, its column tiles split across the threads.

    The first call in a process compiles the kernels (or loads them from Numba's cache).
    """
    if not _driver_compiled:  # (compiled in compile_settings, not by Numba on the call)
        compile_kernels((), driver=True)
    _forward(kernel_table(), workspaces, wts, itab, steps, rounds, images, features, fc_step, logits, nthreads,
             by_image)
