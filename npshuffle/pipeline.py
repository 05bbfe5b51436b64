"""Preparing inputs ahead of the network: decode and preprocess on a few threads, in order.

A folder job is three kinds of work per photo: decode (PIL), preprocess (resize, crop, normalise)
and the network. The first two run here on a small thread pool (PIL and NumPy release the GIL for
their heavy parts, and so does the network: the Numba driver is ``nogil``, the NumPy backend's
BLAS too), so the next batch is being prepared while the current one runs through the network.

:func:`prepared` keeps at most ``window`` inputs in flight or waiting (memory stays bounded
however many photos there are), yields them in input order, and turns an input that cannot be
prepared into its error message: one broken file is one error row, never a stopped run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from .cpu_settings import usable_cores
from .images import ImageError, describe


def default_workers() -> int:
    """Threads that decode and preprocess by default: one per core this process may use, at most 4
    (past that, the network is the bound on the machines this was measured on)."""
    return min(4, usable_cores())


def _prepare_or_error(prepare: Callable, source: object) -> object:
    """``prepare(source)``, or the ImageError's message (which names the input)."""
    try:
        return prepare(source)
    except ImageError as exc:
        return str(exc)


def prepared(sources: Iterable, prepare: Callable[[object], object], workers: int,
             window: int) -> Iterator[tuple[str, object]]:
    """Yield ``(name, prepare(source) or an error message)`` for each source, in order.

    ``workers`` threads prepare up to ``window`` sources ahead of the one being yielded
    (``workers <= 1``: one at a time, in the calling thread, nothing ahead). ``sources`` may be
    any iterable, a generator included: it is read only as far as the window reaches.
    """
    if workers <= 1:
        for source in sources:
            yield describe(source), _prepare_or_error(prepare, source)
        return
    window = max(window, workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="npshuffle-prepare") as pool:
        ahead: deque = deque()
        iterator = iter(sources)
        exhausted = False
        while True:
            while not exhausted and len(ahead) < window:
                try:
                    source = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                ahead.append((describe(source), pool.submit(_prepare_or_error, prepare, source)))
            if not ahead:
                return
            name, future = ahead.popleft()
            try:
                yield name, future.result()
            except GeneratorExit:  # the caller stopped early (Ctrl-C, a broken pipe): drop the rest
                for _, pending in ahead:
                    pending.cancel()
                raise
