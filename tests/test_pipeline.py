"""Preparing inputs ahead of the network (``npshuffle.pipeline``): in order, bounded, one error
row per broken input, and the same predictions as preparing them one at a time."""

from __future__ import annotations

import itertools
import random
import threading
import time

import numpy as np
import pytest

import npshuffle
from npshuffle.images import ImageError
from npshuffle.pipeline import in_order, prepare_or_error
from tests.conftest import REPO

PHOTOS = sorted(str(p) for p in (REPO / "examples").glob("*.jpg"))


def slow_square(source):
    time.sleep(random.random() / 200)  # finish out of order
    if source % 7 == 3:
        raise ImageError(f"input {source}: broken")
    return source * source


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_results_come_in_input_order_with_errors_in_place(workers):
    out = list(in_order(range(50), lambda s: prepare_or_error(slow_square, s), workers, window=8))
    assert out == [f"input {i}: broken" if i % 7 == 3 else i * i for i in range(50)]


def test_at_most_a_window_of_inputs_is_read_ahead():
    read, lock, most = [0], threading.Lock(), [0]
    yielded = [0]

    def sources():
        for i in itertools.count():  # endless: the pipeline must pull lazily
            with lock:
                read[0] += 1
                most[0] = max(most[0], read[0] - yielded[0])
            yield i

    for _ in in_order(sources(), lambda s: s, workers=3, window=5):
        yielded[0] += 1
        if yielded[0] == 40:
            break  # (stopping early ends the pool without waiting for the endless source)
    assert most[0] <= 6  # the window, plus the one being handed over


def test_a_bug_in_preparing_is_raised_not_swallowed():
    def buggy(source):
        raise ZeroDivisionError("a bug, not a bad photo")

    with pytest.raises(ZeroDivisionError):
        list(in_order(range(3), lambda s: prepare_or_error(buggy, s), workers=2, window=4))


def test_predictions_are_the_same_with_and_without_threads(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    inputs = PHOTOS + [str(broken)] + PHOTOS[::-1]
    model = npshuffle.load_model("flowers_v2", backend="numpy")
    one = npshuffle.predict(inputs, model=model, workers=1, batch_size=3)
    many = npshuffle.predict(inputs, model=model, workers=3, batch_size=3)
    assert [p.source for p in many] == [p.source for p in one] == inputs
    for a, b in zip(one, many, strict=True):
        assert a.error == b.error and a.top == b.top
        if a.ok:
            np.testing.assert_array_equal(a.logits, b.logits)
    assert sum(not p.ok for p in many) == 1 and many[len(PHOTOS)].error.startswith(str(broken))


def test_each_worker_classifies_its_own_batch_on_numba_with_the_sequential_answers(tmp_path):
    """On the Numba backend each worker runs its batch's network on one core at the same time as
    the others: the same predictions, in the same order, as one batch at a time on every core."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    inputs = (PHOTOS + [str(broken)] + PHOTOS[::-1]) * 2
    model = npshuffle.load_model("flowers_v2", backend="numba")
    assert model.concurrent
    one = npshuffle.predict(inputs, model=model, workers=1, batch_size=3)
    many = npshuffle.predict(inputs, model=model, workers=3, batch_size=2)
    assert [p.source for p in many] == [p.source for p in one] == inputs
    for a, b in zip(one, many, strict=True):
        assert a.error == b.error and a.class_index == b.class_index
        if a.ok:
            np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-5 * np.abs(a.logits).max())
    assert sum(not p.ok for p in many) == 2


def test_batches_are_read_lazily():
    from npshuffle.pipeline import batches

    assert list(batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    endless = batches(itertools.count(), 4)
    assert next(endless) == [0, 1, 2, 3] and next(endless) == [4, 5, 6, 7]
