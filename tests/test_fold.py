"""BN folding: conv followed by BN equals the folded conv, for any groups, with or without a bias."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import reference as ref
from weights_convert.fold import fold_batchnorm, permute_output_channels


@st.composite
def conv_bn_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3, 4]))
    cin = groups * draw(st.integers(1, 4))
    cout = groups * draw(st.integers(1, 4))
    depthwise = draw(st.booleans())
    if depthwise:
        groups = cin = cout
    kernel = draw(st.sampled_from([1, 3]))
    seed = draw(st.integers(0, 2**31 - 1))
    with_bias = draw(st.booleans())
    return groups, cin, cout, kernel, seed, with_bias


@settings(max_examples=40, deadline=None)
@given(conv_bn_cases())
def test_folded_conv_equals_conv_then_batchnorm(case):
    groups, cin, cout, kernel, seed, with_bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, cin, 7, 6)).astype(np.float32)
    w = rng.standard_normal((cout, cin // groups, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if with_bias else None
    gamma = rng.uniform(0.2, 2.0, cout).astype(np.float32)
    beta = rng.standard_normal(cout).astype(np.float32)
    mean = rng.standard_normal(cout).astype(np.float32)
    var = rng.uniform(0.01, 3.0, cout).astype(np.float32)

    expected = F.batch_norm(
        F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                 padding=kernel // 2, groups=groups),
        torch.from_numpy(mean), torch.from_numpy(var), torch.from_numpy(gamma), torch.from_numpy(beta),
        training=False, eps=1e-5,
    ).numpy()
    fw, fb = fold_batchnorm(w, b, gamma, beta, mean, var)
    ours = ref.conv2d(x, fw, fb, padding=kernel // 2, groups=groups)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))
    # and the unfolded reference ops agree too
    unfolded = ref.batch_norm(ref.conv2d(x, w, b, padding=kernel // 2, groups=groups), gamma, beta, mean, var)
    np.testing.assert_allclose(unfolded, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_fold_rejects_mismatched_statistics():
    w = np.ones((4, 2, 1, 1), np.float32)
    ones = np.ones(4, np.float32)
    try:
        fold_batchnorm(w, None, ones, ones, ones, np.ones(3, np.float32))
    except ValueError as exc:
        assert "var" in str(exc)
    else:
        raise AssertionError("a (3,) running_var for 4 channels was accepted")


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([2, 3, 4, 8]), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_moving_a_shuffle_before_a_depthwise_conv(groups, per_group, seed):
    """shuffle(dw(y)) == dw'(shuffle(y)) with dw' = dw with its filters permuted by the shuffle."""
    channels = groups * per_group
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((1, channels, 5, 5)).astype(np.float32)
    w = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    for convention in ("torchvision", "megvii"):
        perm = ref.shuffle_permutation(channels, groups, convention)
        pw, pb = permute_output_channels(w, b, perm)
        before = ref.channel_shuffle(ref.depthwise_conv2d(y, w, b, padding=1), groups, convention)
        after = ref.depthwise_conv2d(ref.channel_shuffle(y, groups, convention), pw, pb, padding=1)
        np.testing.assert_array_equal(before, after)
