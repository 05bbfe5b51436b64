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
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import children, kernel_cache
from .backends import BackendError, NumpyBackend
from .cpu_settings import check_schedule, check_threads, given
from .plan import Plan

# Defaults until `npshuffle warmup` has measured this machine: the project's 2-core machine,
# bundled models at batch 1 (benchmarks/cold_start.py); numpy_s includes decoding a photo.
DEFAULT_TIMINGS = {"numba_start_s": 0.6, "numpy_s": 0.012, "numba_s": 0.004, "compile_s": 20.0}
# What Numba saves per photo pixel beyond that: its resampler against PIL's resize (the timings above
# are for small photos). On 12 MP photos, 2-core machine, one thread: PIL 42 ms against the kernel's
# 13 ms in a quick look, 67.8 against 18.3 ms with `benchmarks/preprocess_time.py --photos
# ~/.cache/npshuffle/bench_e2e --glob "*.jpg"`: 2.4-4.1 ns a pixel; taken as 2 ns (the lower end).
PREPROCESS_SAVING_S_PER_PIXEL = 2e-9
CROSSOVER_ENV = "NPSHUFFLE_AUTO_CROSSOVER"


@dataclass(frozen=True)
class Crossover:
    """Job sizes (images) from which the Numba backend pays: ``warm`` with its kernels cached,
    ``cold`` when they must be compiled first (in the background, while NumPy starts)."""

    warm: int
    cold: int

    @classmethod
    def from_timings(cls, numba_start_s: float, numpy_s: float, numba_s: float, compile_s: float,
                     extra_saving_s: float = 0.0) -> Crossover:
        """``extra_saving_s``: what Numba saves per image beyond ``numpy_s - numba_s`` (big photos)."""
        saving = numpy_s - numba_s + extra_saving_s
        if not saving > 0:  # (also NaN) Numba is no faster here: never switch
            return cls(math.inf, math.inf)
        warm = math.ceil(numba_start_s / saving)
        return cls(warm, warm + math.ceil(compile_s / numpy_s))

    @classmethod
    def current(cls, photo_pixels: float = 0.0) -> Crossover:
        """The override in the environment, else this machine's measured timings, else defaults;
        for photos of ``photo_pixels`` pixels (0: small ones, as the timings were measured on)."""
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
        return cls.from_timings(**timings, extra_saving_s=PREPROCESS_SAVING_S_PER_PIXEL * photo_pixels)


def choose(images: float, warm: bool, crossover: Crossover) -> str:
    """What a job of ``images`` images runs on: "numpy", "numba" or "compile" (NumPy now, Numba
    once a background compile has filled the cache)."""
    if warm:
        return "numba" if images >= crossover.warm else "numpy"
    return "compile" if images >= crossover.cold else "numpy"


# --------------------------------------------------------------------------------------------------
# the background compile


class BackgroundCompile:
    """The Numba kernels compiling into the cache in a child process (``npshuffle warmup``'s
    compile, without its timings), which ends with this process (see :mod:`npshuffle.children`)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.log = tempfile.TemporaryFile()  # (a file, not a pipe: a full pipe would stall the child)
        code = "from npshuffle.warmup import warmup; warmup(measure=False)\n"
        self.proc = children.start_python(code, stdout=subprocess.DEVNULL, stderr=self.log)
        _running.add(self)

    def outcome(self) -> str:
        """"running", "compiled" (the cache is filled and stamped) or "failed"."""
        code = self.proc.poll()
        return "running" if code is None else "compiled" if code == 0 else "failed"

    def error(self) -> str:
        """The last line the child wrote to stderr (why it failed)."""
        self.log.seek(0)
        lines = self.log.read()[-4096:].decode(errors="replace").strip().splitlines()
        return (lines or [f"exit status {self.proc.returncode}"])[-1][:300]

    def stop(self) -> None:
        children.stop(self.proc)
        self.log.close()
        _running.discard(self)


_running: weakref.WeakSet[BackgroundCompile] = weakref.WeakSet()


@atexit.register
def _stop_running() -> None:
    for child in list(_running):
        child.stop()


# --------------------------------------------------------------------------------------------------
# the runner


def _say(message: str) -> None:
    # on a terminal, first clear the progress bar's line (it is redrawn at the next photo)
    clear = "\r\033[K" if sys.stderr.isatty() else ""
    print(f"{clear}npshuffle: {message}", file=sys.stderr, flush=True)


def numba_usable() -> bool:
    """Can Numba run and cache here? (numba installed, a writable cache folder; no import.)"""
    return importlib.util.find_spec("numba") is not None and kernel_cache.cache_dir()[0] is not None


class AutoRunner:
    """A runner (NCHW float32 batch -> logits) that starts on NumPy and moves to Numba when the
    job is large enough (see the module docstring).

    :meth:`expect` tells it how many images the job still has (a list's length, a folder's file
    count); without it, the images seen so far are the estimate of those to come. ``status`` says
    what it is doing, for a progress line; ``log`` receives one line per change of backend.
    ``is_warm`` (kernel_cache.is_warm) and ``crossover`` can be injected, for tests.
    """

    def __init__(self, plan: Plan, weights: dict[str, np.ndarray], *, crossover: Crossover | None = None,
                 is_warm: Callable[[], bool] = kernel_cache.is_warm, log: Callable[[str], None] = _say,
                 numba_settings: dict | None = None):
        self.plan, self.weights = plan, weights
        self.numba_settings = numba_settings or {}  # threads / schedule for the Numba runner, when it comes
        self.numpy_runner = NumpyBackend().prepare(plan, weights)
        self.numba_runner = None
        self.crossover = crossover  # (None: read when needed; a one-photo job never looks)
        self.photo_pixels = 0.0  # the job's photos' size, when told (expect_pixels)
        self._measured: dict[float, Crossover] = {}  # Crossover.current per photo size, read once (a file)
        self.is_warm, self.log = is_warm, log
        self.background: BackgroundCompile | None = None
        self.stay_on_numpy = False  # numba unusable here, or a compile that failed
        self.seen, self.expected = 0, None
        self._warm = None  # is_warm(), asked once per job
        self._lock = threading.Lock()

    @property
    def status(self) -> str:
        if self.numba_runner is not None:
            return "numba"
        return "numpy, compiling numba" if self.background is not None else "numpy"

    def expect(self, images: int) -> None:
        """The job has ``images`` more images to run (counted from now)."""
        with self._lock:
            self.expected = self.seen + images
            self._warm = None

    def expect_pixels(self, pixels: float) -> None:
        """The job's photos are about ``pixels`` pixels each (as decoded): on Numba their
        preprocessing is faster too, by more the bigger they are, so Numba pays sooner."""
        with self._lock:
            self.photo_pixels = float(pixels)

    def _crossover(self) -> Crossover:
        if self.crossover is not None:
            return self.crossover
        if self.photo_pixels not in self._measured:
            self._measured[self.photo_pixels] = Crossover.current(self.photo_pixels)
        return self._measured[self.photo_pixels]

    @property
    def concurrent(self) -> bool:
        """Calls from several Python threads run at the same time: once the job is on Numba."""
        return self.numba_runner is not None

    def __call__(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Logits for ``x``; ``threads``: the Numba runner's for this call (NumPy's BLAS takes its own)."""
        with self._lock:
            self._decide()
            numba_runner = self.numba_runner
            self.seen += x.shape[0]
        return self.numpy_runner(x) if numba_runner is None else numba_runner(x, threads)

    def close(self) -> None:
        """Stop a background compile that is still running (the runner stays usable)."""
        with self._lock:
            if self.background is not None:
                self.background.stop()
                self.background = None

    # -- deciding ----------------------------------------------------------------------------------

    def _remaining(self) -> int:
        """Images still to come, this call's included: as told by expect(), else as many as so far."""
        return self.expected - self.seen if self.expected is not None else max(self.seen, 1)

    def _decide(self) -> None:
        if self.numba_runner is not None or self.stay_on_numpy:
            return
        remaining = self._remaining()
        if self.background is not None:
            self._after_compile(remaining)
            return
        if remaining <= 1:  # one photo: never worth a look at the cache
            return
        if self._warm is None:
            self._warm = self.is_warm()
        choice = choose(remaining, self._warm, self._crossover())
        if choice == "numpy":
            return
        if not numba_usable():
            self.stay_on_numpy = True
            return
        if choice == "numba":
            self._use_numba(None)
            return
        try:
            self.background = BackgroundCompile()
        except OSError as exc:
            self.stay_on_numpy = True
            self.log(f"cannot start a background compile ({exc}); staying on NumPy")
            return
        self.log(f"{remaining} images and no compiled Numba kernels yet: running on NumPy while they "
                 "compile in the background (once per machine; `npshuffle warmup` does it ahead of time)")

    def _after_compile(self, remaining: int) -> None:
        outcome = self.background.outcome()
        if outcome == "running":
            return
        seconds = time.perf_counter() - self.background.started
        if outcome == "failed":
            self.stay_on_numpy = True
            self.log(f"the background compile failed ({self.background.error()}); staying on NumPy")
        elif remaining >= self._crossover().warm:  # (else starting Numba costs more than it saves)
            self._use_numba(f"Numba kernels compiled in the background in {seconds:.0f} s", remaining)
        self.background.stop()
        self.background = None

    def _use_numba(self, why: str | None, remaining: int = 0) -> None:
        from .backends import get_backend

        try:
            self.numba_runner = get_backend("numba", **self.numba_settings).prepare(self.plan, self.weights)
        except (BackendError, ImportError) as exc:
            self.stay_on_numpy = True
            self.log(f"staying on NumPy: {exc}")
            return
        if why:
            self.log(f"{why}; switching to Numba for the remaining {remaining} images")


class AutoBackend:
    """``backend="auto"``: see :class:`AutoRunner`. ``threads`` and ``schedule``: the Numba
    runner's, once the job moves to Numba (see ``backend_numba.NumbaRunner``)."""

    name = "auto"

    def __init__(self, threads: int | None = None, schedule: str | None = None):
        self.threads = check_threads(threads)
        self.schedule = None if schedule is None else check_schedule(schedule)

    def prepare(self, plan: Plan, weights: dict[str, np.ndarray]) -> AutoRunner:
        return AutoRunner(plan, weights, numba_settings=given(self.threads, self.schedule))
