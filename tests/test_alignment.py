"""The Numba backend's big arrays start on a cache-line boundary (``kernels.cpu.layout.aligned_zeros``)."""

from __future__ import annotations

import numpy as np
import pytest

from npshuffle.archs import build_plan, v2_spec
from npshuffle.backend_numba import NumbaBackend, cpu


@pytest.mark.parametrize("shape, dtype", [((1,), np.float32), ((3, 1000), np.float32), ((70001,), np.int64),
                                          ((2, 3, 5), np.float64), ((0,), np.float32)])
def test_aligned_zeros_is_zeros_on_a_64_byte_boundary(shape, dtype):
    for _ in range(5):  # (different allocations land differently)
        a = cpu.aligned_zeros(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert (a.size == 0 or a.ctypes.data % 64 == 0) and not a.any()
    b = cpu.aligned_copy(np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2])
    assert b.ctypes.data % 64 == 0 and b.flags.c_contiguous
    np.testing.assert_array_equal(b, np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2])


def test_packed_weights_and_workspaces_are_aligned():
    plan = build_plan(v2_spec("0.5x"), "torchvision")
    rng = np.random.default_rng(0)
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in plan.weight_shapes().items()}
    runner = NumbaBackend().prepare(plan, weights)
    table = runner.steps_for(64, 64)
    assert runner.packed.wts.ctypes.data % 64 == 0
    workspaces = table.take_workspace(2)
    assert workspaces.ctypes.data % 64 == 0 and workspaces.strides[0] % 64 == 0
    table.give_back(workspaces)
    assert table.take_workspace(1) is workspaces  # (a spare one with rows enough is lent again)
    features, logits = table.outputs(3, plan.classifier.num_classes)
    assert features.ctypes.data % 64 == 0 and logits.ctypes.data % 64 == 0
