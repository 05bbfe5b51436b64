"""``--device auto`` (the default): each job runs where it finishes first.

The Numba backend is the fastest per image, but a process pays ~0.5 s to import numba and load
its cached kernels, and the first run on a machine compiles them (tens of seconds). The NumPy
backend starts at once. So, per job of ``n`` images:

=====================  ===================================================================
job                    what runs
=====================  ===================================================================
n < warm crossover     NumPy; numba is never imported
kernels cached, and    Numba (import + load, then every image on it)
n >= warm crossover
kernels not cached,    NumPy at once, while a child process compiles the kernels into the
n >= cold crossover    cache; then Numba for the rest of the job
otherwise              NumPy
=====================  ===================================================================

"Cached" is :func:`npshuffle.kernel_cache.is_warm` (a stamp check: no numba import). The
crossovers follow from four timings, measured by ``npshuffle warmup`` on the machine it runs
on and kept in the stamp (defaults below until then): an image costs ``numpy_s`` on the NumPy
path and ``numba_s`` on Numba, so Numba pays once ``n * (numpy_s - numba_s)`` exceeds its
start-up ``numba_start_s``; compiling pays when the job outlasts the compile (``compile_s``) by
at least that many images. ``NPSHUFFLE_AUTO_CROSSOVER=WARM,COLD`` (image counts) overrides both.

The backends agree to within 1e-4 (relative), not bitwise: force ``--device numpy`` or
``numba`` when a run must be reproducible to the last bit across job sizes.
"""

from __future__ import annotations

import atexit
import math
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import kernel_cache
from .backends import BackendError, NumpyBackend
from .plan import Plan

# Defaults until `npshuffle warmup` has measured this machine: the project's 2-core machine,
# bundled models at batch 1 (benchmarks/cold_start.py); numpy_s includes decoding a photo.
DEFAULT_TIMINGS = {"numba_start_s": 0.6, "numpy_s": 0.012, "numba_s": 0.004, "compile_s": 45.0}
CROSSOVER_ENV = "NPSHUFFLE_AUTO_CROSSOVER"


@dataclass(frozen=True)
class Crossover:
    """Job sizes (images) from which the Numba backend pays: ``warm`` with its kernels cached,
    ``cold`` when they must be compiled first (in the background, while NumPy starts)."""

    warm: int
    cold: int

    @classmethod
    def from_timings(cls, numba_start_s: float, numpy_s: float, numba_s: float, compile_s: float) -> Crossover:
        saving = numpy_s - numba_s
        if not saving > 0:  # (also NaN) Numba is no faster here: never switch
            return cls(math.inf, math.inf)
        warm = math.ceil(numba_start_s / saving)
        return cls(warm, warm + math.ceil(compile_s / numpy_s))

    @classmethod
    def current(cls) -> Crossover:
        """The override in the environment, else this machine's measured timings, else defaults."""
        override = os.environ.get(CROSSOVER_ENV)
        if override:
            try:
                warm, cold = (int(v) for v in override.split(","))
                return cls(warm, cold)
            except ValueError:
                raise BackendError(f"{CROSSOVER_ENV} must be two image counts, WARM,COLD (got {override!r})") from None
        timings = dict(DEFAULT_TIMINGS)
        measured = (kernel_cache.read_stamp() or {}).get("measured", {})
        for key in timings:
            value = measured.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
                timings[key] = float(value)
        return cls.from_timings(**timings)


def choose(images: float, warm: bool, crossover: Crossover) -> str:
    """What a job of ``images`` images runs on: "numpy", "numba" or "compile" (NumPy now, Numba
    once a background compile has filled the cache)."""
    if warm:
        return "numba" if images >= crossover.warm else "numpy"
    return "compile" if images >= crossover.cold else "numpy"


# --------------------------------------------------------------------------------------------------
# the background compile


class BackgroundCompile:
    """``npshuffle warmup`` in a child process, which exits if this process dies (it watches its
    standard input, a pipe from here: end of file means the parent is gone) and is killed when
    this process exits or :meth:`stop` is called: nothing outlives the command that started it."""

    def __init__(self):
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "npshuffle", "warmup", "--child"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        _children.add(self)

    def done(self) -> bool | None:
        """None while compiling; True when the cache is filled; False when the compile failed."""
        code = self.proc.poll()
        return None if code is None else code == 0

    def error(self) -> str:
        out = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        return (out.splitlines() or [f"exit status {self.proc.returncode}"])[-1][:300]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stderr):
            if stream:
                stream.close()
        _children.discard(self)


_children: weakref.WeakSet[BackgroundCompile] = weakref.WeakSet()


@atexit.register
def _stop_children() -> None:
    for child in list(_children):
        child.stop()


# --------------------------------------------------------------------------------------------------
# the runner


def _say(message: str) -> None:
    print(f"npshuffle: {message}", file=sys.stderr, flush=True)


class AutoRunner:
    """A runner (NCHW float32 batch -> logits) that starts on NumPy and moves to Numba when the
    job is large enough (see the module docstring).

    :meth:`expect` tells it how many images the job still has (a list's length, a folder's file
    count); without it, the images seen so far are the estimate of those to come. ``status`` says
    what it is doing, for a progress line; ``log`` receives one line per change of backend.
    """

    def __init__(self, plan: Plan, weights: dict[str, np.ndarray], *, crossover: Crossover | None = None,
                 warm: Callable[[], bool] = kernel_cache.is_warm, log: Callable[[str], None] = _say):
        self.plan, self.weights = plan, weights
        self.numpy = NumpyBackend().prepare(plan, weights)
        self.numba = None
        self.crossover = crossover  # (None: read when first needed; a one-photo job never looks)
        self.warm, self.log = warm, log
        self.compile: BackgroundCompile | None = None
        self.numba_failed = False
        self.seen, self.expected = 0, None
        self._lock = threading.Lock()

    @property
    def status(self) -> str:
        if self.numba is not None:
            return "numba"
        return "numpy, compiling numba" if self.compile is not None else "numpy"

    def expect(self, images: int) -> None:
        """The job has ``images`` more images to run (counted from now)."""
        self.expected = self.seen + images

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self._decide(x.shape[0])
            run = self.numba or self.numpy
            self.seen += x.shape[0]
        return run(x)

    def close(self) -> None:
        """Stop a background compile that is still running."""
        if self.compile is not None:
            self.compile.stop()
            self.compile = None

    # -- deciding ----------------------------------------------------------------------------------

    def _decide(self, batch: int) -> None:
        if self.numba is not None or self.numba_failed:
            return
        if self.compile is not None:
            done = self.compile.done()
            if done is None:
                return
            seconds = time.perf_counter() - self.compile.started
            if done:
                self._use_numba(f"Numba kernels compiled in the background in {seconds:.0f} s")
            else:
                self.numba_failed = True
                self.log(f"the background compile failed ({self.compile.error()}); staying on NumPy")
            self.compile.stop()
            self.compile = None
            return
        remaining = (self.expected - self.seen) if self.expected is not None else self.seen + batch
        if remaining <= batch:  # the last batch: nothing left for a switch to pay off
            return
        self.crossover = self.crossover or Crossover.current()
        choice = choose(remaining, self.warm(), self.crossover)
        if choice == "numba":
            self._use_numba(None)
        elif choice == "compile":
            try:
                self.compile = BackgroundCompile()
            except OSError as exc:
                self.numba_failed = True
                self.log(f"cannot start a background compile ({exc}); staying on NumPy")
                return
            self.log(f"{remaining} images and no compiled Numba kernels yet: running on NumPy while they "
                     "compile in the background (once per machine; `npshuffle warmup` does it ahead of time)")

    def _use_numba(self, why: str | None) -> None:
        from .backends import get_backend

        try:
            self.numba = get_backend("numba").prepare(self.plan, self.weights)
        except (BackendError, ImportError) as exc:
            self.numba_failed = True
            self.log(f"staying on NumPy: {exc}")
            return
        if why:
            remaining = self.expected - self.seen if self.expected is not None else None
            rest = f" for the remaining {remaining} images" if remaining else ""
            self.log(f"{why}; switching to Numba{rest}")


class AutoBackend:
    """``backend="auto"``: see :class:`AutoRunner`."""

    name = "auto"

    def prepare(self, plan: Plan, weights: dict[str, np.ndarray]) -> AutoRunner:
        return AutoRunner(plan, weights)
