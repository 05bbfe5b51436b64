"""Running a folder job on a few threads, in order: the decode, preprocess and network of each batch.

A folder job is three kinds of work per photo: decode (PIL), preprocess (resize, crop, normalise)
and the network. :func:`in_order` runs a function over the inputs on a small thread pool and hands
the results back in input order: ``npshuffle.predict`` gives each worker a whole batch (decode and
preprocess its photos, then run the network on them). Everything heavy releases the GIL: PIL's
decode and resize, the Numba kernels (``nogil``), NumPy's BLAS. On the Numba backend each worker
runs its batch on one core, so the cores never wait for each other; on the others the network
calls take turns, each using every core, while the other workers prepare the next batches.

:func:`in_order` keeps at most ``window`` inputs in flight or waiting (memory stays bounded however
many photos there are); :func:`prepare_or_error` turns an input that cannot be prepared into its error
message (``npshuffle.predict`` calls it on each photo of a batch): one broken file is one
error row, never a stopped run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

from .cpu_settings import numba_pool_size
from .images import ImageError

In, Out = TypeVar("In"), TypeVar("Out")


def default_workers(threads: int | None = None) -> int:
    """Workers by default: one per core the network may use (``threads``, the model's setting, else
    Numba's thread count: NUMBA_NUM_THREADS, or every core this process may use)."""
    return threads or numba_pool_size()


def in_order(items: Iterable[In], work: Callable[[In], Out], workers: int, window: int) -> Iterator[Out]:
    """Yield ``work(item)`` for each item, in order.

    ``workers`` threads run ``work`` on up to ``window`` items ahead of the one being yielded
    (``workers <= 1``: one at a time, in the calling thread, nothing ahead). ``items`` may be any
    iterable, a generator included: it is read only as far as the window reaches. An exception
    from ``work`` is raised here, when its item's turn comes.
    """
    if workers <= 1:
        yield from map(work, items)
        return
    window = max(window, workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="npshuffle-worker") as pool:
        ahead: deque = deque()
        iterator = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(ahead) < window:
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                ahead.append(pool.submit(work, item))
            if not ahead:
                return
            future = ahead.popleft()
            try:
                yield future.result()
            except GeneratorExit:  # the caller stopped early (Ctrl-C, a broken pipe): drop the rest
                for pending in ahead:
                    pending.cancel()
                raise


def prepare_or_error(prepare: Callable, source: object) -> object:
    """``prepare(source)``, or the ImageError's message (which names the input)."""
    try:
        return prepare(source)
    except ImageError as exc:
        return str(exc)


def batches(items: Iterable[In], size: int) -> Iterator[list[In]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
