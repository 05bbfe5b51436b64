"""What the CUDA tests share: the tolerance, random inputs and weights, the tiny networks, a copy
counter. Imported only by the tests under ``tests/cuda`` (see ``conftest.py`` for when they run)."""

from __future__ import annotations

import numpy as np

from kernels import cuda as kc
from npshuffle.archs import V1Spec, V2Spec, build_plan

SIMULATOR = kc.SIMULATOR  # numba's CUDA simulator: one Python thread per CUDA thread, so tiny shapes
TOLERANCE = 1e-4  # relative: max |got - want| <= TOLERANCE * max |want|

# The kernel tests' sizes: "tiny" everywhere (C <= 20, H, W <= 8, yet crossing each kernel's
# block and tile edges somewhere), "real" (ShuffleNet's own layer shapes) on a GPU only.
SIZES = ["tiny"] if SIMULATOR else ["tiny", "real"]

# Whole networks small enough for the simulator, with every kind of unit: V2 has a stride-2 unit
# per stage and a stride-1 one (split, carry) in stage 2; V1 g2 a first unit (pw1 not grouped),
# a grouped stride-2 unit (avg-pool concat) and a stride-1 one (residual).
TINY_V2 = V2Spec(stem_channels=4, stage_channels=(8, 16), head_channels=16, stage_repeats=(1, 2), num_classes=3)
TINY_V1 = V1Spec(groups=2, stem_channels=4, stage_channels=(16, 32), stage_repeats=(1, 2), num_classes=3)
# the smallest V2 there is (one stage, one unit): for what does not depend on the network (staging)
SMALLEST_V2 = V2Spec(stem_channels=4, stage_channels=(8,), head_channels=8, stage_repeats=(1,), num_classes=3)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(generator: np.random.Generator, *shape: int) -> np.ndarray:
    return generator.standard_normal(shape, dtype=np.float32)


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-30)


def assert_close(got, want, what: str = "") -> None:
    """``got`` (a float32 array) equals ``want`` within TOLERANCE of ``want``'s largest value."""
    got = np.asarray(got)
    assert got.shape == np.shape(want), f"{what}: shape {got.shape} != expected {np.shape(want)}"
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}, expected float32"
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"{what}: relative error {error:.2e} > {TOLERANCE:g}"


def random_weights(plan, seed: int) -> dict[str, np.ndarray]:
    """Folded weights for every tensor ``plan`` needs (the model file's contract), N(0, 0.3^2)."""
    generator = rng(seed)
    return {k: (generator.standard_normal(s) * 0.3).astype(np.float32) for k, s in plan.weight_shapes().items()}


def random_network(spec, dialect: str, seed: int):
    """(plan, weights) of ``spec`` wired as ``dialect``, with random weights."""
    plan = build_plan(spec, dialect)
    return plan, random_weights(plan, seed)


class counting_copies:
    """Counts the host<->device copies made inside the ``with`` block (device arrays'
    copy_to_device / copy_to_host, and cuda.to_device), on a GPU or the simulator alike."""

    def __init__(self):
        self.cuda = kc.cuda
        self.array_type = type(kc.cuda.device_array(1, dtype=np.float32))
        self.counts: dict[str, int] = {}
        self.saved: list[tuple] = []

    def _wrap(self, owner, name):
        original = getattr(owner, name)
        counts = self.counts

        def counted(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(*args, **kwargs)

        self.saved.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, counted)

    def __enter__(self) -> dict[str, int]:
        self._wrap(self.array_type, "copy_to_device")
        self._wrap(self.array_type, "copy_to_host")
        self._wrap(self.cuda, "to_device")
        return self.counts

    def __exit__(self, *exc) -> None:
        for owner, name, value in reversed(self.saved):
            if value is None:
                delattr(owner, name)  # it was inherited: uncover the base class's again
            else:
                setattr(owner, name, value)
