"""``kernels.cpu.twins``: each fast CPU kernel, array in and array out, equals its ``kernels.reference``
function of the same name on random shapes (odd sizes, channel counts across the 16-lane and
64-wide tile boundaries, groups, strides), and refuses what its kernel cannot do."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npshuffle import kernel_cache

kernel_cache.install_locator()  # (before kernels.cpu is imported, as the backend does)

from kernels import reference as ref  # noqa: E402
from kernels.cpu import twins  # noqa: E402

SETTINGS = settings(max_examples=15, deadline=None)


def close(ours, expected):
    assert ours.shape == expected.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@SETTINGS
@given(n=st.integers(1, 2), groups=st.sampled_from([1, 2, 3]), cg=st.integers(1, 30),
       og=st.sampled_from([1, 15, 16, 17, 64, 70]), h=st.integers(1, 9), w=st.integers(1, 9), relu=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_pointwise_conv2d(n, groups, cg, og, h, w, relu, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = randn(rng, n, groups * cg, h, w), randn(rng, groups * og, cg, 1, 1), randn(rng, groups * og)
    close(twins.pointwise_conv2d(x, weight, bias, groups=groups, relu=relu),
          ref.pointwise_conv2d(x, weight, bias, groups=groups, relu=relu))


@SETTINGS
@given(c=st.integers(1, 40), h=st.integers(1, 12), w=st.integers(1, 12), stride=st.integers(1, 2),
       relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_depthwise_conv2d_and_the_pools(c, h, w, stride, relu, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = randn(rng, 2, c, h, w), randn(rng, c, 1, 3, 3), randn(rng, c)
    close(twins.depthwise_conv2d(x, weight, bias, stride=stride, padding=1, relu=relu),
          ref.depthwise_conv2d(x, weight, bias, stride=stride, padding=1, relu=relu))
    close(twins.avg_pool2d(x, 3, stride, 1), ref.avg_pool2d(x, 3, stride, 1))
    close(twins.global_avg_pool(x), ref.global_avg_pool(x))


@SETTINGS
@given(c=st.integers(1, 3), o=st.sampled_from([1, 8, 12, 24, 29]), h=st.integers(1, 30), w=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1))
def test_stem_conv_max_pool(c, o, h, w, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = randn(rng, 1, c, h, w), randn(rng, o, c, 3, 3), randn(rng, o)
    close(twins.stem_conv_max_pool(x, weight, bias),
          ref.max_pool2d(ref.conv2d(x, weight, bias, stride=2, padding=1, relu=True), 3, 2, 1))


@SETTINGS
@given(n=st.integers(1, 5), features=st.integers(1, 80), classes=st.sampled_from([1, 10, 64, 130]),
       seed=st.integers(0, 2**31 - 1))
def test_linear(n, features, classes, seed):
    rng = np.random.default_rng(seed)
    x, weight, bias = randn(rng, n, features), randn(rng, classes, features), randn(rng, classes)
    close(twins.linear(x, weight, bias), ref.linear(x, weight, bias))


@pytest.mark.parametrize("call, message", [
    (lambda: twins.depthwise_conv2d(np.zeros((1, 4, 5, 5)), np.zeros((4, 1, 5, 5))), "3x3 with padding 1"),
    (lambda: twins.avg_pool2d(np.zeros((1, 4, 5, 5)), 2), "3x3 window"),
    (lambda: twins.pointwise_conv2d(np.zeros((1, 4, 5, 5)), np.zeros((6, 3))), "does not fit"),
    (lambda: twins.pointwise_conv2d(np.zeros((4, 5, 5)), np.zeros((6, 4))), "NCHW"),
])
def test_what_the_kernels_cannot_do_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
