"""How the Numba CPU kernels use the cores: the ``threads`` and ``schedule`` settings, checked.

``load_model(..., threads=, schedule=)`` (and ``npshuffle predict --threads``) pass them to the
``numba`` backend, or to ``auto`` for when it moves a job to Numba; ``backend_numba.NumbaRunner``
documents what they do and keeps them as attributes. Checked here without importing numba, so
that ``auto`` refuses a bad value when the model is loaded, not when a large job first needs it.
"""

from __future__ import annotations

import os
import sys

import numpy as np

# How a batch of one image uses the threads (a larger batch always gives each thread whole images):
#   "split":    every step with enough work split across the threads (fastest on an idle machine)
#   "single":   the whole pass on one thread (faster when other work keeps the cores busy)
#   "adaptive": time both and use the faster (the default)
SCHEDULES = ("adaptive", "split", "single")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all of them where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def numba_pool_size() -> int:
    """The size of Numba's thread pool in this process: NUMBA_NUM_THREADS, else the cores this
    process may use (Numba's own rule, read without importing numba when it is not loaded yet)."""
    numba = sys.modules.get("numba")
    if numba is not None:
        return numba.config.NUMBA_NUM_THREADS
    try:
        return int(os.environ["NUMBA_NUM_THREADS"])
    except (KeyError, ValueError):
        return usable_cores()


def given(threads: int | None, schedule: str | None) -> dict:
    """The settings that were given (not None), as keyword arguments for a backend."""
    return {key: value for key, value in (("threads", threads), ("schedule", schedule)) if value is not None}


def check_threads(threads: int | None) -> int | None:
    """``threads`` as an int, or None (all of Numba's threads); ValueError if it is neither, or
    more than Numba's thread pool holds (fixed when the process starts)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be None (all of Numba's) or a positive int, not {threads!r}")
    pool = numba_pool_size()
    if threads > pool:
        raise ValueError(f"threads={threads}: Numba has {pool} threads in this process "
                         "(set NUMBA_NUM_THREADS before starting it for more)")
    return int(threads)


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    return schedule
