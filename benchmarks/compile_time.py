"""How long the Numba backend takes to compile on first use, and to load from its cache after.

    python benchmarks/compile_time.py [--runs 1] [--models flowers flowers_v2] [--helper auto|on|off]

Each run starts a fresh Python process with an empty temporary Numba cache (``NUMBA_CACHE_DIR``)
that does a *full* warm-up, everything a user can hit: load each model with
``npshuffle.load_model(name, backend="numba")`` (a V1 and a V2 by default), run it at batch 1 with
the steps split across the threads and on one thread (``runner.schedule`` "split" and "single", see
``backend_numba.NumbaRunner``), and at batch 2. A second fresh process then does the same with the
cache just filled: that one only loads. Printed: the wall time of each process, from before
``import npshuffle`` to the last logits (Python's own start-up, ~0.05 s, not included).
``--helper off`` compiles everything in the one process, ``on`` has a helper process compile part
of it alongside, ``auto`` (the default) does what the backend does: use the helper when the load
average says a core is free (``NPSHUFFLE_COMPILE_HELPER``, see ``npshuffle.backend_numba``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# the warm-up, run in a child process: prints its wall time in seconds on the last line
WARMUP = """
import sys, time
start = time.perf_counter()
import numba
import numpy as np
import npshuffle

for name in sys.argv[1:]:
    model = npshuffle.load_model(name, backend="numba")
    size = model.recipe["crop"]
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    model.forward(x[:1])  # batch 1, the schedule the machine's load picks
    runner = model._run
    for schedule in ("split", "single"):  # batch 1 split across the threads, then on one thread
        runner.schedule = schedule
        model.forward(x[:1])
    model.forward(x)  # batch 2: each thread takes whole images
print(f"{time.perf_counter() - start:.3f}")
"""


def timed_run(models: list[str], cache: str, helper: str = "auto") -> float:
    """Wall seconds of one warm-up process using the Numba cache folder ``cache``."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(REPO)}
    env.pop("NPSHUFFLE_COMPILE_HELPER", None)
    if helper != "auto":
        env["NPSHUFFLE_COMPILE_HELPER"] = "1" if helper == "on" else "0"
    out = subprocess.run([sys.executable, "-c", WARMUP, *models], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"the warm-up failed:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["flowers", "flowers_v2"], help="bundled names or .npz paths")
    parser.add_argument("--runs", type=int, default=1, help="cold + warm pairs, each with a new empty cache")
    parser.add_argument("--helper", choices=["auto", "on", "off"], default="auto",
                        help="a second process compiling alongside: as the backend decides, always, never")
    args = parser.parse_args()
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="npshuffle-compile-") as cache:
            cold = timed_run(args.models, cache, args.helper)
            warm = timed_run(args.models, cache, args.helper)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"run {run + 1} (helper {args.helper}, load average now {load:.1f}): cold (empty cache, compiling) "
              f"{cold:.2f} s | warm (loading from the cache) {warm:.2f} s", flush=True)


if __name__ == "__main__":
    main()
