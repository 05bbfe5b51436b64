"""The CPU thread settings (``threads``, ``schedule``): explicit, checked when a model is loaded,
visible on the model and its runner, and the same logits whatever they are."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import npshuffle
from npshuffle.archs import build_plan, v2_spec
from npshuffle.auto import AutoBackend, Crossover
from npshuffle.backends import get_backend
from npshuffle.cpu_settings import SCHEDULES, check_threads, numba_pool_size
from tests.conftest import REPO

TULIP = str(REPO / "examples" / "tulip.jpg")


def small_model():
    plan = build_plan(v2_spec("0.5x", 7))
    rng = np.random.default_rng(0)
    return plan, {k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in plan.weight_shapes().items()}


def test_the_settings_are_visible_on_the_model_and_its_runner():
    model = npshuffle.load_model("flowers_v2", backend="numba", threads=1, schedule="single")
    assert model.settings == {"backend": "numba", "threads": 1, "schedule": "single"}
    assert (model._run.threads, model._run.schedule) == (1, "single")
    assert npshuffle.load_model("flowers_v2").settings == {"backend": "auto", "threads": None, "schedule": None}


def test_logits_do_not_depend_on_the_settings():
    plan, weights = small_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 96, 96)).astype(np.float32)
    results = [get_backend("numba", threads=t, schedule=s).prepare(plan, weights)(x)
               for t in (None, 1) for s in SCHEDULES]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_a_bad_thread_count_is_refused_by_every_cpu_backend(threads):
    for name in ("numba", "auto"):
        with pytest.raises(ValueError, match="threads"):
            get_backend(name, threads=threads)


def test_more_threads_than_numbas_pool_is_refused_when_the_model_loads():
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        AutoBackend(threads=numba_pool_size() + 1)
    assert check_threads(numba_pool_size()) == numba_pool_size()


def test_backends_without_the_numba_cpu_kernels_refuse_the_settings():
    for name in ("numpy", "cuda"):
        with pytest.raises(ValueError, match="Numba CPU kernels"):
            get_backend(name, threads=1)
    with pytest.raises(ValueError, match="schedule"):
        get_backend("numba", schedule="fastest")


def test_auto_hands_its_settings_to_the_numba_runner_it_moves_to():
    plan, weights = small_model()
    runner = AutoBackend(threads=1, schedule="split").prepare(plan, weights)
    runner.crossover, runner.is_warm = Crossover(2, 100), lambda: True
    runner.expect(8)
    runner(np.zeros((4, 3, 64, 64), np.float32))
    assert runner.status == "numba"
    assert (runner.numba_runner.threads, runner.numba_runner.schedule) == (1, "split")


def test_the_pool_size_is_numbas_own_without_importing_numba():
    code = ("import sys; from npshuffle.cpu_settings import numba_pool_size; size = numba_pool_size(); "
            "assert 'numba' not in sys.modules; import numba; assert size == numba.config.NUMBA_NUM_THREADS, size")
    for env in ({}, {"NUMBA_NUM_THREADS": "1"}):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                                env={**__import__("os").environ, **env}, timeout=120)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "at least 1"),
    (["--threads", "1", "--device", "numpy"], "does not run them"),
    (["--threads", "4096"], "NUMBA_NUM_THREADS"),
])
def test_the_cli_refuses_a_bad_threads_in_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "npshuffle", "predict", TULIP, *args], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
