"""Does the batch path lose anything to running its threads in one process?

    python benchmarks/batch_scaling.py [--seconds 8] v1_g3_x0_5 v2_x0_5

For each architecture (random weights, torchvision wiring, 224x224), times a batch of 32 three ways,
each the *best* call over ``--seconds`` of repeated calls (the steadier number on a machine whose
speed drifts):

* one process, all threads: the batch path as ``npshuffle`` runs it (each thread takes whole
  images in its own workspace);
* one process, one thread;
* as many one-thread processes as the first way has threads, all running at the same time: the
  same work with nothing shared but the hardware.

All three are printed as milliseconds per image per thread. If the first is well above the third,
the threads of one process get in each other's way (shared cache lines, allocations); if the
third is well above the second, the cores compete for the hardware (caches, memory bandwidth).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

try:
    from profile_layers import random_model
except ImportError:  # run from elsewhere than benchmarks/
    from benchmarks.profile_layers import random_model

BATCH = 32


def best_ms_per_image(name: str, threads: int, seconds: float) -> float:
    """Best batch-32 call over ``seconds``, in ms per image per thread."""
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    _, runner = random_model(name, rng)
    x = rng.standard_normal((BATCH, 3, 224, 224)).astype(np.float32)
    runner(x)
    best, stop = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        runner(x)
        best = min(best, time.perf_counter() - start)
    return best / BATCH * threads * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="+", help="v2_x0_5, v2_x1_0, v1_g3_x0_5, ...")
    parser.add_argument("--seconds", type=float, default=8.0, help="time each way for this long")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one one-thread measurement
    args = parser.parse_args()
    if args.one:
        print(best_ms_per_image(args.one, 1, args.seconds))
        return
    nthreads = numba.get_num_threads()
    for name in args.archs:
        together = best_ms_per_image(name, nthreads, args.seconds)
        alone = best_ms_per_image(name, 1, args.seconds)
        command = [sys.executable, __file__, "--one", name, "--seconds", str(args.seconds), name]
        env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(nthreads)]
        side_by_side = [float(p.communicate()[0]) for p in procs]
        print(f"{name}: batch {BATCH}, ms per image per thread: {nthreads} threads in one process {together:.2f} "
              f"| 1 thread {alone:.2f} | {nthreads} one-thread processes side by side "
              + " / ".join(f"{t:.2f}" for t in side_by_side), flush=True)


if __name__ == "__main__":
    main()
