"""``npshuffle warmup``: compile and cache the Numba kernels ahead of time, and time this machine.

For Dockerfiles, cluster nodes and CI images: run it once where the package is installed, and
every later process finds the kernels compiled. It also measures what ``--device auto`` needs to
choose well on this machine (see :mod:`npshuffle.auto`) and keeps it in the cache's stamp. When
the kernels are already cached it only checks the stamp (well under a second); ``--force``
compiles again.
"""

from __future__ import annotations

import statistics
import subprocess
import time

import numpy as np

from . import children, kernel_cache

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


def _fresh_process_seconds(code: str) -> float:
    """Wall time a fresh Python process takes to run ``code`` (which prints nothing else)."""
    timer = "import time; t = time.perf_counter()\n" + code + "print(time.perf_counter() - t)\n"
    proc = children.start_python(timer, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:  # (not communicate(): it would close the child's stdin, which tells the child to exit)
        proc.wait(timeout=120)
        out = proc.stdout.read()
    finally:
        children.stop(proc)
        proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"a timing process failed (exit status {proc.returncode})")
    return float(out.strip().splitlines()[-1])


def _numba_start_seconds() -> float:
    """What a job pays to start Numba in a new process: import numba and load the cached kernels
    (with one forward pass, which is when they load), beyond what starting on NumPy costs."""
    common = "import numpy as np, npshuffle\n"
    numba = common + ("m = npshuffle.load_model(backend='numba'); s = m.recipe['crop']\n"
                      "m.forward(np.zeros((1, 3, s, s), np.float32))\n")
    numpy_only = common + "m = npshuffle.load_model(backend='numpy')\n"
    return max(_fresh_process_seconds(numba) - _fresh_process_seconds(numpy_only), 0.0)


def _measure(names: list, loaded: list) -> dict:
    """This machine's timings for --device auto (see npshuffle.auto), on the first model."""
    from .predict import load_model

    model = loaded[0] if loaded else load_model(names[0], backend="numba")
    size = model.recipe["crop"]
    x = np.zeros((1, 3, size, size), np.float32)
    reference = load_model(names[0], backend="numpy")
    return {
        "numpy_s": round(_median_seconds(lambda: reference.forward(x), 7) + DECODE_S, 5),
        "numba_s": round(_median_seconds(lambda: model.forward(x), 21) + DECODE_S, 5),
        "numba_start_s": round(_numba_start_seconds(), 3),
    }


TIMINGS = ("numpy_s", "numba_s", "numba_start_s")


def warmup(models: list[str] | None = None, *, force: bool = False, measure: bool = True) -> dict:
    """Compile (or load) the Numba kernels by running ``models`` (default: the default model) at
    batch 1 and batch 2 (the forward driver's two ways through a pass: split across threads, and
    an image per thread), so nothing is left to compile later; then, unless the stamp already has
    them, time this machine for ``--device auto``. Returns a report dict: ``cache`` (folder), ``why``
    (why that folder), ``already`` (compiled before), ``compiled`` (this run compiled rather than
    loaded from Numba's cache), ``ready_s``, ``seconds`` (all of it), ``timed`` (this run timed the
    machine), ``measured`` (the timings in the stamp), ``problem`` (why timing failed, or None)."""
    from .predict import load_model

    directory, why = kernel_cache.cache_dir()
    report = {"cache": str(directory) if directory else None, "why": why, "already": False, "compiled": False,
              "timed": False, "measured": {}, "problem": None}
    start = time.perf_counter()
    if directory is None:
        return report
    names = models or [None]
    if force:
        kernel_cache.clear(directory)
    loaded = []
    if kernel_cache.is_warm(directory):
        for name in models or ():
            load_model(name, backend="numpy")  # (still say so when a name is wrong)
        report["already"] = True
    else:
        # Numba's index files already there: this run loads rather than compiles, and its time
        # says nothing about how long a compile takes here
        report["compiled"] = not kernel_cache.has_index(directory)
        loaded = [load_model(name, backend="numba") for name in names]
        for model in loaded:
            size = model.recipe["crop"]
            for batch in (1, 2):
                model.forward(np.zeros((batch, 3, size, size), np.float32))
    report["ready_s"] = time.perf_counter() - start
    measured = {"compile_s": round(report["ready_s"], 3)} if report["compiled"] else {}
    have = (kernel_cache.read_stamp(directory) or {}).get("measured", {})
    if measure and not (report["already"] and all(key in have for key in TIMINGS)):
        try:
            measured.update(_measure(names, loaded))
            report["timed"] = True
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            report["problem"] = str(exc)
    if measured or not report["already"]:
        kernel_cache.write_stamp(measured, directory)
    report.update(seconds=time.perf_counter() - start, measured={**have, **measured})
    return report


def add_warmup_arguments(parser) -> None:
    parser.add_argument("--model", "-m", nargs="+", metavar="NAME",
                        help="models to run (default: the default model; every model uses the same kernels)")
    parser.add_argument("--force", action="store_true", help="delete the cached kernels, compile and time again")


def run_warmup(args) -> int:
    from .cli import EXIT_OK, fail

    report = warmup(args.model, force=args.force, measure=True)
    if report["cache"] is None:
        return fail(report["why"])
    if report["already"]:
        print(f"the Numba kernels are already compiled for this machine, in {report['cache']} "
              f"(checked in {report['ready_s']:.2f} s; --force compiles again)")
    else:
        done = "compiled" if report["compiled"] else "loaded (Numba had them cached, without a stamp)"
        print(f"{done} the Numba kernels in {report['ready_s']:.1f} s, cached in {report['cache']} "
              f"({report['why']})")
    m = report["measured"]
    if report["problem"]:
        print(f"could not time this machine ({report['problem']}): --device auto uses its defaults")
    elif report["timed"]:
        print(f"this machine, batch 1: {1000 * m['numpy_s']:.1f} ms per photo on NumPy, {1000 * m['numba_s']:.1f} ms "
              f"on Numba, {m['numba_start_s']:.2f} s to start Numba in a new process")
    return EXIT_OK
