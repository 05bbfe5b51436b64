"""Numba CPU kernels: the fast path behind ``npshuffle.backend_numba``.

``kernels.reference`` says *what* each op computes; this package computes the same numbers in a
layout and loop order chosen for a CPU (AVX-512, a few cores). The backend packs a model's
weights once, describes the network as a table of *steps* (one per kernel launch: a 1x1 conv as
a GEMM with a fused epilogue, a depthwise conv, a pool, the fused stem), and :func:`forward` runs
that table over one flat workspace per thread, in one call from Python.

Where to read what, in order:

=====================  ==========================================================================
``layout.py``          padded channels-last activations in one flat workspace; packing the
                       weights (``pack_gemm``, ``pack_depthwise``, ``pack_stem``); cache-line
                       aligned arrays (``aligned_zeros``); plain NumPy
``steps.py``           the step records the backend builds (``Gemm``, ``Depthwise``, ...), the
                       table Numba reads (``pack_steps``), and the other shared constants
``tricks.py``          the Numba / LLVM tricks every kernel relies on, and why each is needed
``micro_kernel.py``    the register-blocked GEMM micro-kernel: 4 pixels x NR channels
``gemm.py``            GEMM steps (every 1x1 conv, fused epilogues) and the classifier
``per_channel.py``     depthwise conv, average pool, global average pool
``stem.py``            the stem: conv 3x3 / 2 + ReLU + max-pool 3x3 / 2 in one pass
``resample.py``        before the network: a photo's resize, centre crop and normalisation in one
                       pass, pixel-identical to PIL's
``driver.py``          the kernels' address table, compiling them, the forward pass
=====================  ==========================================================================

Everything is compiled by Numba with ``cache=True``. Importing the package compiles nothing and
changes no Numba setting. Where the cache goes is ``npshuffle.kernel_cache``'s to say: its
``install_locator()``, called before this package is imported (``npshuffle.numba_steps`` does),
chooses the folder and makes Numba treat the package's files as one source, so that an edit to
any of them recompiles every kernel. (Imported without it, Numba's own rules apply: a cache
beside each file, checked against that file alone.)
"""

from .driver import (
                     ALL_KERNELS,
                     FORWARD_ARGS,
                     KERNEL_SLOTS,
                     MICRO_KERNELS,
                     RESAMPLE,
                     _call_step,
                     compile_kernels,
                     compile_settings,
                     forward,
                     kernel_table,
                     run_step,
)
from .gemm import classifier_part
from .layout import (
                     LANES,
                     STEM_CB,
                     STEM_QB,
                     TILE_WIDTHS,
                     aligned_copy,
                     aligned_zeros,
                     from_padded_nhwc,
                     pack_depthwise,
                     pack_gemm,
                     pack_pointwise,
                     pack_stem,
                     padded,
                     stem_geometry,
                     tile_widths,
                     to_padded_nhwc,
)
from .micro_kernel import ROWS, TILE_ARGS
from .per_channel import avg_pool3x3, depthwise3x3, global_pool
from .resample import FILTERS as RESAMPLE_FILTERS
from .resample import resize_crop_normalise
from .stem import phase_input, stem_pool
from .steps import (
                     AVG_POOL,
                     CLASSIFIER,
                     CLASSIFIER_ARGS,
                     DEPTHWISE,
                     EPI_INTERLEAVE,
                     EPI_PASSTHROUGH,
                     EPI_POOL,
                     EPI_RESIDUAL,
                     EPI_STORE,
                     FN_CLASSIFIER,
                     FN_TILE,
                     GEMM,
                     GLOBAL_POOL,
                     N_FNS,
                     PHASE_INPUT,
                     SPLIT_COLUMNS,
                     SPLIT_NONE,
                     SPLIT_PIXELS,
                     STEM_POOL,
                     STEP_ARGS,
                     STEP_DTYPE,
                     STEP_FIELDS,
                     STEP_TYPE,
                     AvgPool,
                     Buffer,
                     Classifier,
                     Depthwise,
                     Gemm,
                     GlobalPool,
                     PackedGemm,
                     PhaseInput,
                     StemPool,
                     Step,
                     pack_steps,
)
from .tricks import FASTMATH

__all__ = [
    # layout and packing
    "LANES", "aligned_zeros", "aligned_copy",
    "TILE_WIDTHS", "STEM_CB", "STEM_QB", "padded", "tile_widths", "pack_gemm", "pack_pointwise",
    "pack_depthwise", "pack_stem", "stem_geometry", "to_padded_nhwc", "from_padded_nhwc",
    # steps
    "PHASE_INPUT", "GEMM", "DEPTHWISE", "STEM_POOL", "AVG_POOL", "GLOBAL_POOL", "CLASSIFIER",
    "SPLIT_NONE", "SPLIT_PIXELS", "SPLIT_COLUMNS",
    "EPI_STORE", "EPI_RESIDUAL", "EPI_INTERLEAVE", "EPI_PASSTHROUGH", "EPI_POOL",
    "Buffer", "PackedGemm", "PhaseInput", "StemPool", "Gemm", "Depthwise", "AvgPool", "GlobalPool", "Classifier",
    "Step", "pack_steps", "STEP_FIELDS", "STEP_DTYPE", "STEP_TYPE", "STEP_ARGS", "CLASSIFIER_ARGS", "TILE_ARGS",
    "FORWARD_ARGS", "FN_CLASSIFIER", "FN_TILE", "N_FNS", "FASTMATH", "ROWS",
    # kernels (the GEMM step kernel is ``kernels.cpu.gemm.gemm``)
    "phase_input", "stem_pool", "depthwise3x3", "avg_pool3x3", "global_pool", "classifier_part",
    # driver
    # preprocessing
    "resize_crop_normalise", "RESAMPLE", "RESAMPLE_FILTERS",
    "KERNEL_SLOTS", "ALL_KERNELS", "MICRO_KERNELS", "compile_kernels", "compile_settings", "kernel_table",
    "run_step", "forward", "_call_step",
]
