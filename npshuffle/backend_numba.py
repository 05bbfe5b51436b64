"""The Numba backend: the lowered program run by the Numba CPU kernels (``kernels.cpu``).

``NumbaBackend().prepare(plan, weights)`` lowers the plan (``npshuffle.lowering``) and packs the
program's weights once (``numba_steps.PackedWeights``); the first call with an input size turns
the program into a step table for that size, with the activations placed in a flat workspace
(``numba_steps.StepTable``). A call is then one compiled call from Python (``kernels.cpu.forward``):
a batch runs image by image on each thread; a single image has each step with enough work split
across the threads (see ``numba_steps.split_policy``), or runs on one thread, as the runner's
``schedule`` says (see :class:`NumbaRunner`; by default it times both and uses the faster,
:class:`_AdaptiveSchedule`). Nothing large is allocated per call.

This module also gets the kernels compiled, or loaded from Numba's cache, once per process
(:func:`ensure_kernels`; on a cold cache with a core to spare, in two processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np

from . import children, kernel_cache
from .backends import BackendError
from .cpu_settings import check_schedule, check_threads, usable_cores
from .lowering import lower
from .plan import Plan

try:
    import numba

    from .numba_steps import PackedWeights, StepTable, cpu  # (kernels.cpu, with npshuffle's cache locator)
except ImportError as exc:  # pragma: no cover - exercised only without numba
    raise BackendError(f"the numba backend needs the numba package ({exc}); use backend='numpy'") from None

COMPILE_NOTICE_AFTER_S = 1.0


# On a cold cache the kernels take ~20 s of compiling on one core (kernels.cpu compiles each on its
# own). With two cores, a helper process compiles the five GEMM micro-kernels, the classifier, the
# average pool and the photo resampler at the same time (about half the work, counting the
# helper's ~0.6 s start);
# both processes fill the cache, and this one then loads the helper's kernels from it. Only with a
# core to spare: on a machine kept busy by other work, two compiles sharing one core took longer
# than one (33 s against 20 s here, load average 3.5 on 2 cores). NPSHUFFLE_COMPILE_HELPER=0
# compiles everything in this process, =1 always uses the helper.
HELPER_ENV = "NPSHUFFLE_COMPILE_HELPER"
HELPER_SLOTS = cpu.MICRO_KERNELS + (cpu.FN_CLASSIFIER, cpu.AVG_POOL, cpu.RESAMPLE)
HELPER_TIMEOUT_S = 600.0

_kernels_ready = False  # compiled, or loaded from the cache, in this process (ensure_kernels)
_compile_lock = threading.Lock()


def _busy() -> bool:
    """Is the machine busy: a load average over the last minute within half a process of its
    cores? (Unknown, as on Windows: no.)"""
    try:
        return os.getloadavg()[0] >= usable_cores() - 0.5
    except (AttributeError, OSError):
        return False


def _spare_core() -> bool:
    """Is a second core free for a helper?"""
    setting = os.environ.get(HELPER_ENV)
    if setting in ("0", "1"):
        return setting == "1"
    return usable_cores() >= 2 and not _busy()


def _start_helper(slots) -> subprocess.Popen | None:
    """A process that compiles the kernels of these address-table slots into the cache (None if it
    cannot be started: then this process compiles them itself). It ends with this process."""
    code = ("from npshuffle import backend_numba  # (installs the cache locator, as here)\n"
            f"backend_numba.cpu.compile_kernels({list(slots)!r}, driver=False)\n")
    try:
        return children.start_python(code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def _compile_kernels() -> None:
    """Compile the kernels, or load them from Numba's cache (``kernels.cpu.compile_kernels``); on a
    cold cache, with two cores or more, in two processes (see HELPER_ENV above).

    Numba unpickles its cache files without checking them, so a damaged file (a full disk, a copy
    cut short) raises from deep inside it: then the cache is emptied and everything compiled anew.
    """
    try:
        _compile_or_load()
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes Numba raise
        if kernel_cache.cache_dir()[0] is None:
            raise
        print(f"npshuffle: the compiled-kernel cache is damaged ({type(exc).__name__}); compiling anew",
              file=sys.stderr, flush=True)
        kernel_cache.clear()
        _compile_or_load()
    if not kernel_cache.is_warm():
        kernel_cache.write_stamp()  # later processes know, without importing numba, that they are cached


def _compile_or_load() -> None:
    cold = cpu.compile_kernels([cpu.GLOBAL_POOL], driver=False)  # the smallest kernel: is the cache cold?
    helper = None
    if cold and _spare_core() and kernel_cache.cache_dir()[0]:
        helper = _start_helper(HELPER_SLOTS)
    try:
        cpu.compile_kernels([s for s in cpu.ALL_KERNELS if helper is None or s not in HELPER_SLOTS])
        if helper is not None:
            helper.wait(HELPER_TIMEOUT_S)
    finally:
        if helper is not None:
            children.stop(helper)
    if helper is not None:  # load the helper's kernels (or compile what it did not leave in the cache)
        cpu.compile_kernels(HELPER_SLOTS, driver=False)
    cpu.kernel_table()


def exact_resampler():
    """The photo preprocessing kernel for ``npshuffle.preprocess`` once this process has the kernels
    (:func:`ensure_kernels` ran; else None, and PIL does the same work, slower): a function
    ``(words, orientation, box, size, offset, interpolation, tables, order, out) -> bool``, False when it has no
    such interpolation (see ``kernels.cpu.resample.resize_crop_normalise``; ``words``: the pixels as
    ``npshuffle.pixels.rgbx_view`` gives them)."""
    return _resample if _kernels_ready else None


def _resample(words, orientation, box, size, offset, interpolation, tables, order, out) -> bool:
    kind = cpu.RESAMPLE_FILTERS.get(interpolation)
    if kind is None:
        return False
    cpu.resize_crop_normalise(words, orientation, box, size[0], size[1], offset[0], offset[1], kind, tables, order, out)
    return True


def ensure_kernels() -> bool:
    """Compile the kernels, or load them from the cache, once per process (:func:`_compile_kernels`).
    If that takes more than a second, say so on stderr while it happens and report the time when
    done. Returns whether they were ready before this call."""
    global _kernels_ready
    if _kernels_ready:
        return True
    with _compile_lock:
        if _kernels_ready:
            return True
        start = time.perf_counter()
        announced = threading.Event()

        def announce():
            announced.set()
            print("npshuffle: compiling the Numba kernels (first run only, cached afterwards)...",
                  file=sys.stderr, flush=True)

        timer = threading.Timer(COMPILE_NOTICE_AFTER_S, announce)
        timer.daemon = True
        timer.start()
        try:
            _compile_kernels()
        finally:
            timer.cancel()
        if announced.is_set():
            print(f"npshuffle: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        _kernels_ready = True
        return False


class _AdaptiveSchedule:
    """``schedule="adaptive"``: whether the next batch-1 call runs split across the threads or on one.

    Split, a pass is ~50 fork-joins. That is fastest on an idle machine, but when other processes
    keep the cores busy each fork-join can wait milliseconds for a preempted thread, and one
    thread (an OpenMP team of one: nothing to wait for) is then many times faster. So batch-1
    calls are timed, and each uses the schedule with the lower best time over the last second
    (the best, not the median: a burst of interference, say another runtime's threads still
    spinning for 50 ms, only makes some calls slower, while lasting contention slows them all);
    the other one is timed again once the time spent since its last timing reaches 20x its cost
    (so probing costs at most ~5 %). Until both are timed, the first guess is the load average's:
    one thread when it says the machine is busy (:func:`_busy`), split otherwise.
    """

    WINDOW_S, PROBE_EVERY = 1.0, 20.0

    def __init__(self):
        self.recent: dict[bool, list[tuple[float, float]]] = {False: [], True: []}  # single? -> (when, seconds)
        self.since_probe = 0.0
        self.busy = _busy()

    def single_thread(self) -> bool:
        """Run the next call on one thread (True) or split (False)?"""
        if not self.recent[self.busy]:
            return self.busy
        # the best time of each schedule (keyed by single_thread: True / False); an untimed one
        # counts as 0, so it is tried next
        best = {single: min(t for _, t in times) if times else 0.0 for single, times in self.recent.items()}
        faster = best[True] < best[False]
        if self.since_probe >= self.PROBE_EVERY * best[not faster]:  # time to probe the slower one
            self.since_probe = 0.0
            return not faster
        return faster

    def record(self, single: bool, seconds: float) -> None:
        now = time.perf_counter()
        times = self.recent[single]
        times.append((now, seconds))
        while len(times) > 1 and times[0][0] < now - self.WINDOW_S:  # keep the last second (at least one)
            times.pop(0)
        self.since_probe += seconds


class NumbaRunner:
    """The runner ``NumbaBackend.prepare`` returns: ``runner(x)`` maps (N, 3, H, W) float32 to logits.

    Two settings, attributes that may also be changed between calls:

    ``threads``
        how many threads a call uses. None (the default): Numba's thread count at the time of the
        call, ``numba.get_num_threads()`` (NUMBA_NUM_THREADS, all cores unless set, or what
        ``numba.set_num_threads`` last set in the calling thread). An int: that many, at most
        NUMBA_NUM_THREADS (the size of Numba's thread pool, fixed when the process starts).
    ``schedule``
        how a batch of *one* image uses them (a batch of several always gives each thread whole
        images, each in a workspace of its own, and one thread runs everything on one):

        * ``"split"``: every step with enough work is split across the threads (~50 fork-joins
          per image): the fastest on an idle machine;
        * ``"single"``: the whole pass on one thread (no fork-join waiting for a thread that
          another process preempted): faster when other work keeps the cores busy;
        * ``"adaptive"`` (the default): times both and uses the faster, probing the other now and
          then (:class:`_AdaptiveSchedule`); its first guess is ``"single"`` when the load
          average says the machine is busy, ``"split"`` otherwise.

    Everything that depends on the input size (steps, workspaces) is built on the first call with
    that size and kept, so later calls allocate nothing but their outputs. Calls from several Python
    threads run at the same time, each in a workspace of its own (``concurrent``): a folder job
    runs one single-threaded call per core (``npshuffle.predict.predict_stream``), with no
    fork-join for a thread to wait at.
    """

    def __init__(self, plan: Plan, weights: dict[str, np.ndarray], threads: int | None = None,
                 schedule: str = "adaptive"):
        self.threads = threads
        self.schedule = schedule
        self.packed = PackedWeights(lower(plan, weights))
        self._tables: dict[tuple[int, int], StepTable] = {}
        self._adaptive: dict[tuple[int, int], _AdaptiveSchedule] = {}  # (schedule="adaptive") per input size
        self._lock = threading.Lock()  # (the step tables and the adaptive schedules; not the forward pass)

    concurrent = True  # calls from several Python threads run at the same time (see above)

    @property
    def threads(self) -> int | None:
        return self._threads

    @threads.setter
    def threads(self, value: int | None) -> None:
        self._threads = check_threads(value)

    @property
    def schedule(self) -> str:
        return self._schedule

    @schedule.setter
    def schedule(self, value: str) -> None:
        self._schedule = check_schedule(value)

    def steps_for(self, height: int, width: int) -> StepTable:
        """The step table for one input size (built on first use)."""
        table = self._tables.get((height, width))
        if table is None:
            table = self._tables[(height, width)] = StepTable(self.packed, height, width)
            self._adaptive[(height, width)] = _AdaptiveSchedule()
        return table

    def __call__(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Logits (N, classes) for ``x`` (N, 3, H, W). ``threads``: this call's thread count, instead
        of the ``threads`` attribute (see the class docstring)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        channels = self.packed.program.image.channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"expected a batch of shape (N, {channels}, H, W), got {x.shape}")
        n, _, h, w = x.shape
        nthreads = check_threads(threads) or self.threads or numba.get_num_threads()
        with self._lock:
            ready = ensure_kernels()
            table = self.steps_for(h, w)
            adaptive = None
            single = False  # (a batch of one on one thread: the whole pass in one fork-join)
            if n == 1 and nthreads > 1:
                if self.schedule == "adaptive":
                    adaptive = self._adaptive[(h, w)]
                    single = adaptive.single_thread()
                else:
                    single = self.schedule == "single"
        threads = 1 if single else nthreads
        # a batch: each thread takes whole images; one thread: the whole pass in one fork-join
        by_image = n > 1 or threads == 1
        features, logits = table.outputs(n, self.packed.program.logits.channels)
        ws = table.take_workspace(threads if by_image else 1)
        team = numba.get_num_threads()  # (Numba's thread count is this Python thread's own setting)
        start = time.perf_counter()
        if threads != team:
            numba.set_num_threads(threads)  # (one thread: a team of one, no fork-join waits on anybody)
        try:
            cpu.forward(ws, self.packed.wts, table.itab, table.steps, table.rounds, x, features,
                        self.packed.fc_step, logits, threads, by_image)
        finally:
            if threads != team:
                numba.set_num_threads(team)
            table.give_back(ws)
        if adaptive is not None and ready:  # (not the call that compiled)
            with self._lock:
                adaptive.record(single, time.perf_counter() - start)
        return logits


class NumbaBackend:
    """Numba kernels (``kernels.cpu``) running the plan's lowered program; see the module docstring.

    ``threads`` and ``schedule``: how the runners it prepares use the CPU's threads (see
    :class:`NumbaRunner`; each runner keeps them as attributes of its own).
    """

    name = "numba"

    def __init__(self, threads: int | None = None, schedule: str = "adaptive"):
        self.threads = check_threads(threads)
        self.schedule = check_schedule(schedule)

    def prepare(self, plan: Plan, weights: dict[str, np.ndarray]) -> NumbaRunner:
        return NumbaRunner(plan, weights, threads=self.threads, schedule=self.schedule)
