"""Quick timings of the Numba backend alone: batch 1 on one thread and split across all threads,
and batch-32 throughput, for a few architectures.

    python benchmarks/forward_times.py [--calls 300] v2_x0_5 v2_x1_0 v1_g3_x0_5

Prints the median and the *minimum* of each: on a machine whose speed drifts (a shared VM), the
minimum is the steadier number for comparing two versions of the kernels. To compare two git
revisions, check the other one out beside this one (``git worktree add /tmp/old REV``) and run
this script from each in turn, a few times, alternating:

    (cd /tmp/old && PYTHONPATH=/tmp/old python benchmarks/forward_times.py v2_x0_5)
    python benchmarks/forward_times.py v2_x0_5

For the comparison with other runtimes, use ``bench_cpu.py``; for a per-layer breakdown,
``profile_layers.py``.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from npshuffle.backend_numba import cpu  # (kernels.cpu, with npshuffle's kernel cache)

try:
    from profile_layers import random_model, times
except ImportError:  # run from elsewhere than benchmarks/
    from benchmarks.profile_layers import random_model, times


def time_arch(name: str, calls: int, size: int, rng: np.random.Generator) -> str:
    """One line of timings for one architecture (random weights, torchvision wiring)."""
    nthreads = numba.get_num_threads()
    plan, runner = random_model(name, rng)
    x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    start = time.perf_counter()
    runner(x)
    first = time.perf_counter() - start
    prog = runner.steps_for(size, size)
    ws = prog.take_workspace(nthreads)
    features, logits = prog.outputs(1, plan.classifier.num_classes)
    row = [f"{name}:"]
    for threads in sorted({1, nthreads}):
        # batch 1 as the backend runs it: one thread runs the whole pass, or the threads split every step
        med, low = times(lambda t=threads: cpu.forward(ws, runner.packed.wts, prog.itab, prog.steps, prog.rounds,
                                                       x, features, runner.packed.fc_step, logits, t, t == 1), calls)
        row.append(f"batch 1, {threads} thread(s): median {med * 1e3:.3f} ms, min {low * 1e3:.3f}")
    batch = rng.standard_normal((32, 3, size, size)).astype(np.float32)
    med, low = times(lambda: runner(batch), max(3, calls // 50))
    row.append(f"batch 32: median {32 / med:.0f} img/s, best {32 / low:.0f}")
    row.append(f"(first call {first:.1f} s)")
    return " | ".join(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="+", help="v2_x0_5, v2_x1_0, v2_x2_0, v1_g3_x0_5, ...")
    parser.add_argument("--calls", type=int, default=300, help="timed calls at batch 1 (batch 32: calls / 50)")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for name in args.archs:
        print(time_arch(name, args.calls, args.size, rng), flush=True)


if __name__ == "__main__":
    main()
