"""``npshuffle warmup``: compile and cache the Numba kernels ahead of time, and time this machine.

For Dockerfiles, cluster nodes and CI images: run it once where the package is installed, and
every later process finds the kernels compiled. It also measures what ``--device auto`` needs to
choose well on this machine (see :mod:`npshuffle.auto`) and keeps it in the cache's stamp. When
the kernels are already cached it only checks the stamp (well under a second); ``--force``
compiles again.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np

from . import kernel_cache
from .children import exit_with_parent

# decoding + preprocessing one photo (a phone-camera-sized JPEG costs more, a thumbnail less),
# added to the NumPy forward time when working out how many images a compile takes to pay off
DECODE_S = 0.003


def _median_seconds(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _numba_start_seconds() -> float:
    """Import numba and load the cached kernels in a fresh process, as a job on Numba would."""
    code = (
        "import time; t = time.perf_counter()\n"
        "import numpy as np, npshuffle\n"
        "m = npshuffle.load_model(backend='numba'); s = m.recipe['crop']\n"
        "m.forward(np.zeros((1, 3, s, s), np.float32))\n"
        "print(time.perf_counter() - t)\n"
    )
    numpy_only = (
        "import time; t = time.perf_counter()\n"
        "import numpy as np, npshuffle\n"
        "m = npshuffle.load_model(backend='numpy')\n"
        "print(time.perf_counter() - t)\n"
    )
    seconds = []
    for script in (code, numpy_only):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
        seconds.append(float(out.stdout.strip().splitlines()[-1]))
    return max(seconds[0] - seconds[1], 0.0)


def warmup(models: list[str] | None = None, *, force: bool = False, measure: bool = True) -> dict:
    """Compile (or load) the Numba kernels by running ``models`` (default: the default model) at
    batch 1 and batch 2; then time this machine for ``--device auto``. Returns a report dict:
    ``cache`` (folder), ``why`` (why that folder), ``already`` (nothing to do), ``seconds``,
    ``measured`` (the timings written to the stamp)."""
    from .predict import load_model

    directory, why = kernel_cache.cache_dir()
    report = {"cache": str(directory) if directory else None, "why": why, "already": False, "measured": {}}
    start = time.perf_counter()
    if not force and kernel_cache.is_warm(directory):
        for name in models or ():
            load_model(name, backend="numpy")  # (still say so when a name is wrong)
        report.update(already=True, seconds=time.perf_counter() - start)
        return report
    if force:
        kernel_cache.clear(directory)
    # Numba's own index files present: this run loads rather than compiles, and its time says
    # nothing about how long a compile takes here
    compiles = directory is None or not any(p.suffix == ".nbi" for p in directory.iterdir())
    names = models or [None]
    loaded = [load_model(name, backend="numba") for name in names]
    for model in loaded:
        size = model.recipe["crop"]
        for batch in (1, 2):
            model.forward(np.zeros((batch, 3, size, size), np.float32))
    compile_s = time.perf_counter() - start
    measured = {"compile_s": round(compile_s, 3)} if compiles else {}
    if measure:
        model = loaded[0]
        x = np.zeros((1, 3, model.recipe["crop"], model.recipe["crop"]), np.float32)
        reference = load_model(names[0], backend="numpy")
        measured["numpy_s"] = round(_median_seconds(lambda: reference.forward(x), 7) + DECODE_S, 5)
        measured["numba_s"] = round(_median_seconds(lambda: model.forward(x), 21) + DECODE_S, 5)
        measured["numba_start_s"] = round(_numba_start_seconds(), 3)
    kernel_cache.write_stamp(measured, directory)
    report.update(seconds=time.perf_counter() - start, ready_s=compile_s, compiled=compiles, measured=measured)
    return report


def add_warmup_arguments(parser) -> None:
    parser.add_argument("--model", "-m", nargs="+", metavar="NAME",
                        help="models to run (default: the default model; every model uses the same kernels)")
    parser.add_argument("--force", action="store_true", help="delete the cached kernels and compile again")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # auto's background compile


def run_warmup(args) -> int:
    from .cli import EXIT_OK, fail

    if args.child:
        exit_with_parent()
    report = warmup(args.model, force=args.force, measure=True)
    if args.child:
        return EXIT_OK
    if report["cache"] is None:
        return fail(report["why"])
    if report["already"]:
        print(f"the Numba kernels are already compiled for this machine, in {report['cache']} "
              f"(checked in {report['seconds']:.2f} s; --force compiles again)")
        return EXIT_OK
    m = report["measured"]
    done = "compiled" if report["compiled"] else "loaded (Numba had cached them; no stamp yet)"
    print(f"{done} the Numba kernels in {report['ready_s']:.1f} s, cached in {report['cache']} ({report['why']})")
    print(f"this machine, batch 1: {1000 * m['numpy_s']:.1f} ms per photo on NumPy, {1000 * m['numba_s']:.1f} ms on "
          f"Numba, {m['numba_start_s']:.2f} s to start Numba in a new process")
    return EXIT_OK
