"""kernels.reference's single-image fast forms, tied to the batched definitions (tests/test_reference_convs.py).

The batched kernels are checked against torch; each single-image form (window columns, tap ranges,
``*_image`` kernels writing into a given output) is checked against its batched definition.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from kernels import reference as ref
from tests.reference_cases import SETTINGS, assert_close, conv_cases, randn, seeds, spatial

# --------------------------------------------------------------------------
# Single-image fast forms, tied to the batched definitions above
# --------------------------------------------------------------------------


@st.composite
def window_cases(draw, pool=False):
    """One image (C, H, W) and a (kernel, stride, padding), sizes both on and off the phase-plane path
    (H, W multiples of the stride or not); a pool keeps torch's padding <= kernel // 2."""
    rng = np.random.default_rng(draw(seeds))
    k = draw(st.sampled_from([1, 2, 3, 3, 3, 5]))
    padding = draw(st.integers(0, k // 2)) if pool else draw(st.integers(0, k))
    stride = draw(st.sampled_from([1, 1, 2, 2, 3]))
    c = draw(st.integers(1, 6))
    h, w = spatial(draw, k, padding), spatial(draw, k, padding)
    return randn(rng, c, h, w), k, stride, padding


def padded_window_value(x, k, s, p, fill, ky, kx):
    """Tap (ky, kx) of every output, the slow obvious way: pad with ``fill``, then index."""
    xp = np.pad(x, ((0, 0), (p, p), (p, p)), constant_values=fill)
    ho, wo = (x.shape[1] + 2 * p - k) // s + 1, (x.shape[2] + 2 * p - k) // s + 1
    return xp[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]


@SETTINGS
@given(window_cases(), st.sampled_from([0.0, -np.inf]))
def test_window_columns_are_the_padded_shifted_image(case, fill):
    x, k, s, p = case
    cols = ref.window_columns(x, k, s, p, fill)
    ho, wo = (x.shape[1] + 2 * p - k) // s + 1, (x.shape[2] + 2 * p - k) // s + 1
    assert cols.shape == (x.shape[0], k * k, ho * wo) and cols.dtype == np.float32
    for ky in range(k):
        for kx in range(k):
            expected = padded_window_value(x, k, s, p, fill, ky, kx)
            np.testing.assert_array_equal(cols[:, ky * k + kx].reshape(expected.shape), expected)


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 5), st.integers(1, 3), st.integers(0, 5))
def test_tap_ranges_cover_exactly_the_unpadded_inputs(size, k, s, p):
    if k > size + 2 * p:
        return
    out_size, taps = ref.tap_ranges(size, k, s, p)
    assert out_size == (size + 2 * p - k) // s + 1
    positions = np.arange(size)
    for t, (dst, src) in enumerate(taps):
        reads = np.arange(out_size)[dst] * s + t - p
        assert ((reads >= 0) & (reads < size)).all()
        np.testing.assert_array_equal(positions[src], reads)
        outside = np.setdiff1d(np.arange(out_size), np.arange(out_size)[dst]) * s + t - p
        assert ((outside < 0) | (outside >= size)).all()


@SETTINGS
@given(conv_cases("pointwise"), st.booleans())
def test_pointwise_conv_image_matches_pointwise_conv2d(case, strided_out):
    """One image, weight in (G, O/G, C/G); the output may be every other row of a bigger array
    (how the NumPy backend writes a V2 unit's concat + shuffle in place)."""
    x, weight, bias, g = case["x"][:1], case["weight"], case["bias"], case["groups"]
    o, c, p = weight.shape[0], x.shape[1], x.shape[2] * x.shape[3]
    expected = ref.pointwise_conv2d(x, weight, bias, groups=g, relu=case["relu"])[0]
    room = np.full((o, 2, p), np.nan, np.float32)
    out = room[:, 1] if strided_out else np.empty((o, p), np.float32)
    b = None if bias is None else bias.reshape(g, o // g, 1)
    ref.pointwise_conv_image(x[0].reshape(g, c // g, p), weight.reshape(g, o // g, c // g), b, case["relu"],
                             out.reshape(g, o // g, p))
    assert_close(out.reshape(expected.shape), expected)
    if strided_out:
        assert np.isnan(room[:, 0]).all()


@SETTINGS
@given(window_cases(), st.booleans(), st.booleans())
def test_depthwise_conv_image_matches_depthwise_conv2d(case, with_bias, relu):
    x, k, s, p = case
    rng = np.random.default_rng(x.size)
    c = x.shape[0]
    weight, bias = randn(rng, c, 1, k, k), (randn(rng, c) if with_bias else None)
    expected = ref.depthwise_conv2d(x[None], weight, bias, stride=s, padding=p, relu=relu)[0]
    out = np.empty((c, expected.shape[1] * expected.shape[2]), np.float32)
    b = None if bias is None else bias[:, None]
    ref.depthwise_conv_image(x, weight.reshape(c, 1, k * k), b, k, s, p, relu, out)
    assert_close(out.reshape(expected.shape), expected)


@SETTINGS
@given(window_cases(), st.integers(1, 5), st.booleans())
def test_conv_image_matches_conv2d(case, o, relu):
    x, k, s, p = case
    rng = np.random.default_rng(x.size)
    weight, bias = randn(rng, o, x.shape[0], k, k), randn(rng, o)
    expected = ref.conv2d(x[None], weight, bias, stride=s, padding=p, relu=relu)[0]
    out = np.empty((o, expected.shape[1] * expected.shape[2]), np.float32)
    ref.conv_image(x, weight.reshape(o, -1), bias[:, None], k, s, p, relu, out)
    assert_close(out.reshape(expected.shape), expected)


@SETTINGS
@given(window_cases(pool=True))
def test_max_pool_image_is_max_pool2d_bitwise(case):
    x, k, s, p = case
    expected = ref.max_pool2d(x[None], k, s, p)[0]
    out = np.empty((x.shape[0], expected.shape[1] * expected.shape[2]), np.float32)
    np.testing.assert_array_equal(ref.max_pool_image(x, k, s, p, out).reshape(expected.shape), expected)


@SETTINGS
@given(window_cases(pool=True))
def test_avg_pool_image_matches_avg_pool2d(case):
    """Written into a channel slice of a bigger array, as V1's stride-2 concat does."""
    x, k, s, p = case
    expected = ref.avg_pool2d(x[None], k, s, p, count_include_pad=True)[0]
    c, n = x.shape[0], expected.shape[1] * expected.shape[2]
    room = np.full((c + 2, n), np.nan, np.float32)
    ref.avg_pool_image(x, k, s, p, room[:c])
    assert_close(room[:c].reshape(expected.shape), expected)
    assert np.isnan(room[c:]).all()


@SETTINGS
@given(seeds, st.integers(1, 6), st.booleans(), st.booleans())
def test_bias_relu_in_place_is_bias_relu(seed, c, with_bias, relu):
    rng = np.random.default_rng(seed)
    x = randn(rng, 1, c, 3, 4)
    bias = randn(rng, c) if with_bias else None
    expected = ref.bias_relu(x, bias, relu)
    y = x[0].reshape(c, 12).copy()
    assert ref.bias_relu_(y, None if bias is None else bias[:, None], relu) is y
    np.testing.assert_array_equal(y.reshape(expected.shape[1:]), expected[0])
