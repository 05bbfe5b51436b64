"""The CUDA tests: when they run, where, and how the simulator is switched on.

Every test under ``tests/cuda`` runs the ``kernels.cuda`` kernels or ``npshuffle.backend_cuda``,
either on a real GPU or on numba's CUDA simulator (each CUDA thread a Python thread: slow, so the
shapes here are tiny when simulated, see ``helpers.py``). They run when, at collection:

* ``NUMBA_ENABLE_CUDASIM=1`` is in the environment: the simulator. numba reads that variable once,
  when it is first imported, so it must be set before the process starts; the rest of the suite
  imports numba normally, which is why ``tests/test_cuda_simulator.py`` runs this directory in
  child processes that have it set (``python -m pytest tests/cuda``);
* otherwise, a CUDA GPU is usable (``numba.cuda.is_available()``): the same tests run on the device,
  with real-size cases added (``pytest tests/cuda``, as ``benchmarks/gpu_check.sh`` does).

In any other case (a plain ``pytest`` on a machine without a GPU) they are collected and skipped,
with the reason; ``NPSHUFFLE_CUDA_REQUIRED=1`` turns that skip into an error (the child processes
set it, so that a simulator that did not switch on cannot pass by skipping everything).

``NPSHUFFLE_CUDA_SHARD=i/n`` keeps every n-th test of this directory, from the i-th (0-based): the
simulator is one core per process, so ``tests/test_cuda_simulator.py`` runs shards side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _cuda_mode() -> tuple[str | None, str]:
    """("simulator" | "device" | None, why)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        from numba import config

        if not getattr(config, "ENABLE_CUDASIM", 0):
            return None, "NUMBA_ENABLE_CUDASIM=1 was set after numba was imported: the simulator is off"
        return "simulator", "numba's CUDA simulator"
    try:
        from numba import cuda

        if cuda.is_available():
            return "device", "a CUDA GPU"
    except Exception as exc:  # no numba.cuda, a broken driver: no GPU for these tests
        return None, f"numba.cuda is not usable here ({type(exc).__name__}: {exc})"
    return None, "no CUDA GPU and NUMBA_ENABLE_CUDASIM is not 1 (tests/test_cuda_simulator.py runs them simulated)"


MODE, WHY = _cuda_mode()


def _here(item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config, items):
    """Skip (or refuse) this directory's tests when there is no CUDA to run them on; keep one
    shard of them when asked; silence numba's occupancy warnings on them (tiny grids, on purpose)."""
    ours = [item for item in items if _here(item)]
    if not ours:
        return
    if MODE is None:
        if os.environ.get("NPSHUFFLE_CUDA_REQUIRED") == "1":
            raise pytest.UsageError(f"NPSHUFFLE_CUDA_REQUIRED=1 but the CUDA tests cannot run: {WHY}")
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=f"CUDA tests: {WHY}"))
        return
    for item in ours:
        item.add_marker(pytest.mark.filterwarnings("ignore:.*(under-utilization|low occupancy)"))
    shard = os.environ.get("NPSHUFFLE_CUDA_SHARD")
    if shard:
        index, count = (int(part) for part in shard.split("/"))
        dropped = [item for i, item in enumerate(ours) if i % count != index]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            dropped_ids = {id(item) for item in dropped}
            items[:] = [item for item in items if id(item) not in dropped_ids]


def pytest_report_header(config):
    return f"CUDA tests (tests/cuda): {'run on ' + WHY if MODE else 'skipped: ' + WHY}"
