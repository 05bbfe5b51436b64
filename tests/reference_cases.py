"""Shared pieces of the kernels.reference property tests (tests/test_reference_*.py).

torch is only imported by the tests; the reference module is pure NumPy.  Random
arrays come from a NumPy generator seeded by hypothesis, so hypothesis shrinks
shapes/options while the data stays reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=40, deadline=None)

# Worst |ours - theirs| / max(1, max|theirs|) seen in this run (for reporting).
WORST = {"err": 0.0}

KERNELS = [1, 3, 1, 3, 2, 5]  # mostly 1 and 3, occasionally 2 or 5


def assert_close(ours, theirs, rtol=1e-5):
    """fp32 comparison: relative 1e-5, absolute 1e-5 scaled by the output size."""
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach().numpy()
    assert isinstance(ours, np.ndarray)
    assert ours.dtype == np.float32, ours.dtype
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = max(1.0, float(np.abs(theirs).max())) if theirs.size else 1.0
    if theirs.size:
        err = float(np.abs(ours.astype(np.float64) - theirs).max()) / scale
        WORST["err"] = max(WORST["err"], err)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=1e-5 * scale)


def t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


seeds = st.integers(0, 2**32 - 1)


def spatial(draw, k, p):
    """A spatial size >= the smallest the kernel allows (k <= size + 2p)."""
    lo = max(1, k - 2 * p)
    return draw(st.integers(lo, lo + 9))


@st.composite
def conv_cases(draw, kind="any"):
    """Random conv problem: returns kwargs for ref.conv2d plus the arrays."""
    rng = np.random.default_rng(draw(seeds))
    n = draw(st.integers(1, 3))
    k = draw(st.sampled_from(KERNELS))
    kw = k if draw(st.integers(0, 4)) else draw(st.sampled_from(KERNELS))  # rare non-square
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    if kind == "depthwise":
        groups = draw(st.integers(1, 8))
        cg, og = 1, 1
    elif kind == "dense":
        groups, cg, og = 1, draw(st.integers(1, 8)), draw(st.integers(1, 8))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
        cg, og = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if kind == "pointwise":
        k = kw = 1
        stride, padding = 1, 0
    c, o = groups * cg, groups * og
    h, w = spatial(draw, k, padding), spatial(draw, kw, padding)
    x = randn(rng, n, c, h, w)
    weight = randn(rng, o, cg, k, kw)
    bias = randn(rng, o) if draw(st.booleans()) else None
    relu = draw(st.booleans())
    return {"x": x, "weight": weight, "bias": bias, "stride": stride,
            "padding": padding, "groups": groups, "relu": relu}


def torch_conv(case):
    y = F.conv2d(t(case["x"]), t(case["weight"]), t(case["bias"]),
                 stride=case["stride"], padding=case["padding"], groups=case["groups"])
    return F.relu(y) if case["relu"] else y
