"""Property tests: kernels.reference's convolutions, batch norm and head against torch.nn.functional."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from kernels import reference as ref
from tests.reference_cases import SETTINGS, assert_close, conv_cases, randn, seeds, t, torch_conv

# --------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------


@SETTINGS
@given(conv_cases())
def test_conv2d_matches_torch(case):
    assert_close(ref.conv2d(**case), torch_conv(case))


@SETTINGS
@given(conv_cases("dense"))
def test_conv2d_dense_matches_torch(case):
    assert_close(ref.conv2d(**case), torch_conv(case))


@SETTINGS
@given(conv_cases("depthwise"))
def test_conv2d_depthwise_groups_matches_torch(case):
    assert case["groups"] == case["x"].shape[1]
    assert_close(ref.conv2d(**case), torch_conv(case))


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 2), st.integers(1, 2))
def test_conv2d_tuple_stride_padding(seed, sh, sw, pw):
    rng = np.random.default_rng(seed)
    x, weight = randn(rng, 2, 4, 7, 6), randn(rng, 6, 2, 3, 5)
    ours = ref.conv2d(x, weight, stride=(sh, sw), padding=(0, pw), groups=2)
    theirs = F.conv2d(t(x), t(weight), stride=(sh, sw), padding=(0, pw), groups=2)
    assert_close(ours, theirs)


@SETTINGS
@given(conv_cases("pointwise"))
def test_pointwise_matches_conv2d_and_torch(case):
    ours = ref.pointwise_conv2d(case["x"], case["weight"], case["bias"],
                                groups=case["groups"], relu=case["relu"])
    assert_close(ours, torch_conv(case))
    assert_close(ours, ref.conv2d(**case))


@SETTINGS
@given(conv_cases("depthwise"))
def test_depthwise_matches_conv2d_and_torch(case):
    ours = ref.depthwise_conv2d(case["x"], case["weight"], case["bias"],
                                stride=case["stride"], padding=case["padding"],
                                relu=case["relu"])
    assert_close(ours, torch_conv(case))
    assert_close(ours, ref.conv2d(**case))


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 6), st.booleans(), st.booleans())
def test_bias_relu(seed, n, c, with_bias, relu):
    rng = np.random.default_rng(seed)
    x = randn(rng, n, c, 3, 5)
    bias = randn(rng, c) if with_bias else None
    x_before = x.copy()
    theirs = t(x) if bias is None else t(x) + t(bias)[None, :, None, None]
    if relu:
        theirs = F.relu(theirs)
    assert_close(ref.bias_relu(x, bias, relu), theirs)
    np.testing.assert_array_equal(x, x_before)  # input untouched


# --------------------------------------------------------------------------
# Batch norm
# --------------------------------------------------------------------------


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 8), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from([1e-5, 1e-3, 0.1]))
def test_batch_norm_matches_torch(seed, n, c, h, w, eps):
    rng = np.random.default_rng(seed)
    x = randn(rng, n, c, h, w)
    gamma, beta, mean = randn(rng, c), randn(rng, c), randn(rng, c)
    var = rng.uniform(0.01, 3.0, c).astype(np.float32)
    ours = ref.batch_norm(x, gamma, beta, mean, var, eps=eps)
    theirs = F.batch_norm(t(x), t(mean), t(var), t(gamma), t(beta), training=False, eps=eps)
    assert_close(ours, theirs)


# --------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 64), st.integers(1, 20), st.booleans())
def test_linear_matches_torch(seed, n, f, o, with_bias):
    rng = np.random.default_rng(seed)
    x, weight = randn(rng, n, f), randn(rng, o, f)
    bias = randn(rng, o) if with_bias else None
    assert_close(ref.linear(x, weight, bias), F.linear(t(x), t(weight), t(bias)))


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 50), st.sampled_from([1.0, 10.0, 1000.0]))
def test_softmax(seed, n, k, scale):
    rng = np.random.default_rng(seed)
    logits = randn(rng, n, k) * np.float32(scale)   # large scale: would overflow a naive exp
    ours = ref.softmax(logits)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours.sum(axis=-1), 1.0, rtol=1e-5)
    assert_close(ours, torch.softmax(t(logits), dim=-1))
    assert_close(ref.softmax(logits, axis=0), torch.softmax(t(logits), dim=0))
