"""The NumPy backend's fast runner (``NumpyBackend.prepare``) against its plain op-by-op walk
(``NumpyBackend.prepare_reference``), on random architectures, both dialects and odd input sizes;
plus the properties a default backend needs: thread safety and no numba import."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npshuffle.archs import V2Spec, build_plan, v1_spec
from npshuffle.backends import NumpyBackend
from tests.conftest import REPO
from tests.strategies import v1_specs, v2_specs


def random_weights(plan, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in plan.weight_shapes().items()}


@settings(max_examples=30, deadline=None)
@given(st.one_of(v1_specs(), v2_specs()), st.sampled_from(["torchvision", "megvii"]),
       st.integers(32, 70), st.integers(32, 70), st.integers(0, 2**32 - 1))
def test_fast_runner_matches_the_plain_walk(spec, dialect, h, w, seed):
    """Any architecture and input size (odd sizes take the per-tap copies instead of the phase
    planes), a batch of two: same logits as the op-by-op walk, to float32 rounding."""
    plan = build_plan(spec, dialect)
    weights = random_weights(plan, seed)
    x = np.random.default_rng(seed + 1).standard_normal((2, 3, h, w)).astype(np.float32)
    backend = NumpyBackend()
    fast, plain = backend.prepare(plan, weights)(x), backend.prepare_reference(plan, weights)(x)
    assert fast.dtype == np.float32 and fast.shape == plain.shape == (2, spec.num_classes)
    scale = max(1.0, float(np.abs(plain).max()))
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4 * scale)


def test_empty_batch():
    plan = build_plan(V2Spec(8, (16, 32), 32, (1, 2), 7), "torchvision")
    run = NumpyBackend().prepare(plan, random_weights(plan, 0))
    assert run(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, plan.classifier.num_classes)


def test_one_runner_from_many_threads_at_once():
    """Every call owns its arrays: threads sharing one runner get what they get alone, bitwise."""
    plan = build_plan(v1_spec(3, "0.5x", 10), "megvii")
    run = NumpyBackend().prepare(plan, random_weights(plan, 1))
    images = np.random.default_rng(2).standard_normal((4, 1, 3, 96, 96)).astype(np.float32)
    alone = [run(image) for image in images]
    results, errors = {}, []

    def worker(i: int) -> None:
        try:
            for _ in range(5):
                out = run(images[i])
                if not np.array_equal(out, alone[i]):
                    results[i] = out
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not results


def test_numpy_backend_does_not_import_numba():
    code = (
        "import sys, numpy as np\n"
        "from npshuffle.archs import build_plan, v2_spec\n"
        "from npshuffle.backends import NumpyBackend\n"
        "plan = build_plan(v2_spec('0.5x', 5))\n"
        "w = {k: np.zeros(s, np.float32) for k, s in plan.weight_shapes().items()}\n"
        "NumpyBackend().prepare(plan, w)(np.zeros((1, 3, 64, 64), np.float32))\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stderr
