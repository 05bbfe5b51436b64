"""A/B of the Numba backend between two checkouts, interleaved round by round.

    git worktree add /tmp/old REV
    python benchmarks/ab_forward.py /tmp/old . --arch v2_x1_0 --batch 1 --threads 1 [--rounds 30]

The shared VM this project is measured on drifts by up to 2x within minutes, so two runs of
``forward_times.py`` a few minutes apart can disagree by more than a kernel change is worth. Here
``--processes`` worker processes per checkout (each with its checkout's ``PYTHONPATH``: it imports
that npshuffle and its compiled kernels) load the same random-weight network and wait; the
controller then asks them all in turn, in a random order each round, for ``--calls`` timed
forward passes, and keeps each one's best time. Both sides run under the same conditions within
seconds of each other, so the per-round ratio B/A (of each side's mean best) is steady even when
the absolute times are not. It prints the median and the interquartile range of those ratios
(below 1: B is faster) and each side's median best time.

Several processes per side, because one process differs from the next by a few per cent on its
own (where its arrays land in memory): checking this script against itself (the same code as A
and B, one process each) gave a median ratio of 1.058; differences that small need more
processes, and any difference under ~5 % is not a finding.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = r"""
import json, sys, time
import numba, numpy as np
from npshuffle.archs import build_plan, v1_spec, v2_spec
from npshuffle.backend_numba import NumbaBackend
arch, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
parts = arch.split("_")
width = f"{parts[-2].lstrip('x')}.{parts[-1]}x"
spec = v2_spec(width) if parts[0] == "v2" else v1_spec(int(parts[1][1:]), width)
plan = build_plan(spec, "torchvision")
rng = np.random.default_rng(0)
weights = {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in plan.weight_shapes().items()}
runner = NumbaBackend(threads=threads).prepare(plan, weights)
x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
for _ in range(3):
    runner(x)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    calls = int(line)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - start)
    print(json.dumps({"best": min(times)}), flush=True)
"""


def start_worker(tree: Path, args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, args.arch, str(args.batch), str(args.threads)],
                              cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = worker.stdout.readline()
    if not line or not json.loads(line).get("ready"):
        raise SystemExit(f"the worker for {tree} did not start (see its output above)")
    return worker


def best_of(worker: subprocess.Popen, calls: int) -> float:
    worker.stdin.write(f"{calls}\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())["best"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="checkout A (the reference)")
    parser.add_argument("b", type=Path, help="checkout B")
    parser.add_argument("--arch", default="v2_x1_0")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per worker per round (best kept)")
    parser.add_argument("--processes", type=int, default=3, help="worker processes per checkout")
    args = parser.parse_args()
    workers = [(name, start_worker(tree.resolve(), args)) for name, tree in (("A", args.a), ("B", args.b))
               for _ in range(args.processes)]
    best: dict[str, list[float]] = {"A": [], "B": []}
    try:
        for _ in range(args.rounds):
            this_round: dict[str, list[float]] = {"A": [], "B": []}
            for name, worker in random.sample(workers, len(workers)):
                this_round[name].append(best_of(worker, args.calls))
            for name, times in this_round.items():
                best[name].append(float(np.mean(times)))
    finally:
        for _, worker in workers:
            worker.stdin.close()
            worker.wait(timeout=30)
    ratios = np.array(best["B"]) / np.array(best["A"])
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    print(f"{args.arch}, batch {args.batch}, {args.threads} thread(s); {args.processes} processes per side, "
          f"{args.rounds} rounds of {args.calls} calls each")
    for name, tree in (("A", args.a), ("B", args.b)):
        print(f"  {name} {tree}: median best {np.median(best[name]) * 1e3:.3f} ms per call")
    print(f"  B / A time: median {median:.3f} (interquartile {q1:.3f}-{q3:.3f}); below 1: B is faster")


if __name__ == "__main__":
    main()
