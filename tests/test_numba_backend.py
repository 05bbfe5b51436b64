"""Whole networks: ``NumbaBackend`` against the reference ``NumpyBackend`` within 1e-4 relative.

Random small V1 / V2 specs in both dialects (every wiring a plan can have: V1 groups 1-8 with
either shuffle convention, the first unit's ungrouped pw1, stride-2 concat and stride-1 residual;
V2 halves / interleaved splits, with and without the final shuffle, stride-2 projections), random
weights, random batch and input sizes; every threading schedule; the real Megvii checkpoints.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npshuffle import backend_numba
from npshuffle.archs import V2Spec, build_plan, v1_spec, v2_spec
from npshuffle.backend_numba import NumbaBackend
from npshuffle.backends import BackendError, NumpyBackend, get_backend
from npshuffle.cpu_settings import SCHEDULES
from npshuffle.model import Model
from tests.conftest import REPO, WEIGHTS, require
from tests.strategies import v1_specs, v2_specs

RELATIVE_TOLERANCE = 1e-4


def random_weights(plan, seed: int) -> dict[str, np.ndarray]:
    """He-scaled random weights and biases: activations stay O(1) through any depth."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in plan.weight_shapes().items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = (2.0 / fan_in) ** 0.5 if len(shape) > 1 else 0.1
        weights[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return weights


def assert_matches(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape and ours.dtype == np.float32
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=RELATIVE_TOLERANCE * scale)


@settings(max_examples=30, deadline=None)
@given(
    spec=st.one_of(v1_specs(max_classes=70), v2_specs(max_step=40, max_head=80, max_classes=70)),
    dialect=st.sampled_from(["torchvision", "megvii"]),
    batch=st.integers(1, 4),
    height=st.integers(32, 80),
    width=st.integers(32, 80),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_networks_match_the_reference(spec, dialect, batch, height, width, seed):
    plan = build_plan(spec, dialect)
    weights = random_weights(plan, seed)
    x = np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)
    expected = NumpyBackend().prepare(plan, weights)(x)
    assert_matches(NumbaBackend().prepare(plan, weights)(x), expected)


@pytest.mark.parametrize("spec", [v2_spec("0.5x"), v2_spec("1.0x"), v1_spec(3, "0.5x"), v1_spec(8, "1.0x")],
                         ids=["v2_x0_5", "v2_x1_0", "v1_g3_x0_5", "v1_g8_x1_0"])
@pytest.mark.parametrize("dialect", ["torchvision", "megvii"])
def test_published_variants_at_224(spec, dialect):
    plan = build_plan(spec, dialect)
    weights = random_weights(plan, 0)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    assert_matches(NumbaBackend().prepare(plan, weights)(x), NumpyBackend().prepare(plan, weights)(x))


def test_sizes_batches_and_thread_schedules_share_one_runner():
    """One runner, many input sizes and batch sizes, 1 or 2 threads: per-size workspaces are
    reused, each image gives the same logits alone or in a batch, split by image or by layer."""
    plan = build_plan(V2Spec(12, (24, 48), 64, (2, 2), 10), "torchvision")
    weights = random_weights(plan, 3)
    runner = NumbaBackend().prepare(plan, weights)
    reference = NumpyBackend().prepare(plan, weights)
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((n, 3, h, w)).astype(np.float32) for n, h, w in
               [(1, 40, 40), (3, 57, 33), (1, 40, 40), (5, 40, 40), (2, 57, 33)]]
    threads = numba.get_num_threads()
    try:
        for nthreads in sorted({1, threads}):
            numba.set_num_threads(nthreads)
            for x in batches:
                out = runner(x)
                assert_matches(out, reference(x))
                singles = np.concatenate([runner(x[i: i + 1]) for i in range(len(x))])
                np.testing.assert_allclose(out, singles, rtol=0, atol=1e-5 * np.abs(out).max())
    finally:
        numba.set_num_threads(threads)
    assert runner(batches[0]) is not runner(batches[0])  # callers get their own array
    with pytest.raises(ValueError, match="shape"):
        runner(np.zeros((1, 4, 40, 40), np.float32))


def test_calls_from_several_threads_run_at_once_and_give_the_serial_answers():
    """Python threads calling one runner at the same time (one Numba thread each, or all of them),
    on two input sizes: each call gets its own workspace and outputs, so every answer is the one
    the same call gives alone."""
    plan = build_plan(V2Spec(12, (24, 48), 64, (2, 2), 10), "torchvision")
    runner = NumbaBackend().prepare(plan, random_weights(plan, 5))
    rng = np.random.default_rng(6)
    batches = [rng.standard_normal((n, 3, h, h)).astype(np.float32) for n, h in [(3, 40), (1, 48), (2, 40), (4, 48)]]
    expected = [runner(x, threads=1) for x in batches]
    barrier = threading.Barrier(4)

    def call(i):
        barrier.wait()  # (all four start together)
        return [runner(batches[(i + k) % 4], threads=1 + (i + k) % 2) for k in range(12)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(4)))
    for i, outs in enumerate(results):
        for k, out in enumerate(outs):
            np.testing.assert_allclose(out, expected[(i + k) % 4], rtol=0, atol=1e-5 * np.abs(out).max())
    assert runner.concurrent


def test_registered_and_used_by_model(tmp_path):
    assert isinstance(get_backend("numba"), NumbaBackend)
    assert get_backend("numba").name == "numba"


def test_missing_numba_is_a_backend_error():
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from npshuffle.backends import get_backend, BackendError\n"
        "try:\n    get_backend('numba')\nexcept BackendError as e:\n    print('BackendError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert "BackendError:" in out.stdout and "numba" in out.stdout


def test_a_slow_first_compile_is_announced_once(monkeypatch, capsys):
    monkeypatch.setattr(backend_numba, "COMPILE_NOTICE_AFTER_S", 0.01)
    monkeypatch.setattr(backend_numba, "_kernels_ready", False)
    compiles = []

    def slow():
        time.sleep(0.1)
        compiles.append(1)

    monkeypatch.setattr(backend_numba, "_compile_kernels", slow)
    assert backend_numba.ensure_kernels() is False  # (they were not ready: this call compiled them)
    assert backend_numba.ensure_kernels() is True
    assert compiles == [1]
    err = capsys.readouterr().err
    assert err.count("compiling") == 1 and err.count("compiled in") == 1


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_threads_and_schedule_are_explicit_settings(monkeypatch):
    """``NumbaBackend(threads=, schedule=)``: kept on the runner; "split" splits a batch of one
    across the threads, "single" runs it on one thread, a batch always goes image by image."""
    plan = build_plan(V2Spec(12, (24, 48), 64, (2, 2), 10), "torchvision")
    weights = random_weights(plan, 5)
    x = np.random.default_rng(6).standard_normal((3, 3, 40, 40)).astype(np.float32)
    expected = NumpyBackend().prepare(plan, weights)(x)
    for threads in (None, 1, 2):
        for schedule in SCHEDULES:
            runner = NumbaBackend(threads=threads, schedule=schedule).prepare(plan, weights)
            assert (runner.threads, runner.schedule) == (threads, schedule)
            assert_matches(np.concatenate([runner(x[:1]), runner(x[1:])]), expected)
    calls = []
    forward = backend_numba.cpu.forward

    def spy(*args):
        calls.append((args[-2], args[-1], numba.get_num_threads()))  # (threads, by_image, Numba's team)
        forward(*args)

    monkeypatch.setattr(backend_numba.cpu, "forward", spy)
    runner = NumbaBackend(threads=2, schedule="split").prepare(plan, weights)
    runner(x[:1])
    runner(x)
    runner.schedule = "single"
    runner(x[:1])
    runner.threads = 1
    runner.schedule = "split"
    runner(x[:1])
    assert calls == [(2, False, 2), (2, True, 2), (1, True, 1), (1, True, 1)]
    for bad in (dict(threads=0), dict(threads=numba.config.NUMBA_NUM_THREADS + 1), dict(threads=1.5),
                dict(schedule="fast")):
        with pytest.raises(ValueError):
            NumbaBackend(**bad)
    with pytest.raises(ValueError, match="schedule"):
        runner.schedule = "both"


@pytest.mark.parametrize("groups", [3, 8])
def test_megvii_checkpoints(tmp_path, groups):
    from weights_convert import convert_file

    checkpoint = require(WEIGHTS / f"ShuffleNetV1_g{groups}_0.5x.pth.tar")
    convert_file(checkpoint, tmp_path / "model.npz")
    fast = Model.load(tmp_path / "model.npz", backend="numba")
    slow = Model.load(tmp_path / "model.npz", backend="numpy")
    # BGR 0..255 input, as the Megvii recipe feeds it
    x = np.random.default_rng(groups).uniform(0, 255, (3, 3, 224, 224)).astype(np.float32)
    expected = slow.forward(x)
    ours = fast.forward(x)
    scale = np.abs(expected).max(axis=1, keepdims=True)
    assert (np.abs(ours - expected) <= RELATIVE_TOLERANCE * scale).all()
    assert (ours.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("split_ms, single_ms", [(1.0, 2.0), (400.0, 3.0)], ids=["idle machine", "busy machine"])
def test_batch1_schedule_settles_on_the_faster_and_keeps_probing(split_ms, single_ms):
    """The runner times batch-1 calls split across threads and on one thread, uses the faster,
    and re-times the other now and then (about 5 % of the time spent)."""
    schedule = backend_numba._AdaptiveSchedule()
    choices = []
    for _ in range(4000):  # (the busy case re-times the 400 ms schedule after 20 x 400 ms)
        single = schedule.single_thread()
        choices.append(single)
        schedule.record(single, (single_ms if single else split_ms) / 1e3)
    faster = single_ms < split_ms
    later = choices[20:]
    assert later.count(faster) > 0.9 * len(later)
    assert 0 < later.count(not faster)  # still probing
    spent_probing = later.count(not faster) * max(split_ms, single_ms)
    assert spent_probing < 0.1 * sum(single_ms if c else split_ms for c in later)


@pytest.mark.parametrize("change", [dict(stride=1), dict(kernel=5, padding=2), dict(relu=False)])
def test_a_stem_the_fused_kernel_cannot_run_is_refused_by_name(change):
    """The fused stem + max-pool kernel is for ShuffleNet's stem: 3x3, stride 2, padding 1, ReLU."""
    plan = build_plan(v2_spec("0.5x"))
    other = dataclasses.replace(plan, stem=dataclasses.replace(plan.stem, **change))
    with pytest.raises(BackendError, match=other.stem.name):
        NumbaBackend().prepare(other, random_weights(other, 0))
