"""Property tests: kernels.reference against torch.nn.functional.

torch is only imported here; the reference module is pure NumPy.  Random
arrays come from a NumPy generator seeded by hypothesis, so hypothesis shrinks
shapes/options while the data stays reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import reference as ref

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
# Channel shuffle, split, concat
# --------------------------------------------------------------------------


def torch_shuffle_torchvision(x, g):
    n, c, h, w = x.shape
    return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


def torch_shuffle_megvii(x, g):
    n, c, h, w = x.shape
    return x.reshape(n, c // g, g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


@st.composite
def shuffle_cases(draw):
    groups = draw(st.integers(1, 8))
    c = groups * draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(seeds))
    x = randn(rng, draw(st.integers(1, 3)), c, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return x, groups


@SETTINGS
@given(shuffle_cases())
def test_channel_shuffle_matches_torch_recipes(case):
    x, g = case
    np.testing.assert_array_equal(ref.channel_shuffle(x, g), torch_shuffle_torchvision(t(x), g))
    np.testing.assert_array_equal(ref.channel_shuffle(x, g, "torchvision"),
                                  torch_shuffle_torchvision(t(x), g))
    np.testing.assert_array_equal(ref.channel_shuffle(x, g, "megvii"),
                                  torch_shuffle_megvii(t(x), g))


@SETTINGS
@given(shuffle_cases(), st.sampled_from(ref.SHUFFLE_CONVENTIONS))
def test_shuffle_permutation_consistent(case, convention):
    x, g = case
    c = x.shape[1]
    p = ref.shuffle_permutation(c, g, convention)
    assert p.shape == (c,) and np.issubdtype(p.dtype, np.integer)
    np.testing.assert_array_equal(np.sort(p), np.arange(c))   # a permutation
    np.testing.assert_array_equal(ref.channel_shuffle(x, g, convention), x[:, p])


@SETTINGS
@given(shuffle_cases())
def test_shuffle_conventions_are_inverse(case):
    x, g = case
    c = x.shape[1]
    tv = ref.shuffle_permutation(c, g, "torchvision")
    mg = ref.shuffle_permutation(c, g, "megvii")
    np.testing.assert_array_equal(tv[mg], np.arange(c))
    np.testing.assert_array_equal(mg[tv], np.arange(c))
    both = ref.channel_shuffle(ref.channel_shuffle(x, g, "torchvision"), g, "megvii")
    np.testing.assert_array_equal(both, x)
    both = ref.channel_shuffle(ref.channel_shuffle(x, g, "megvii"), g, "torchvision")
    np.testing.assert_array_equal(both, x)
    # Megvii with G groups is torchvision with C/G groups.
    np.testing.assert_array_equal(mg, ref.shuffle_permutation(c, c // g, "torchvision"))


def test_shuffle_permutation_examples():
    # 6 channels, 3 groups: groups (0 1)(2 3)(4 5) -> one from each group in turn.
    np.testing.assert_array_equal(ref.shuffle_permutation(6, 3), [0, 2, 4, 1, 3, 5])
    np.testing.assert_array_equal(ref.shuffle_permutation(6, 3, "megvii"), [0, 3, 1, 4, 2, 5])


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 8), st.integers(1, 4), st.integers(1, 4))
def test_split_channels(seed, n, half, h, w):
    rng = np.random.default_rng(seed)
    x = randn(rng, n, 2 * half, h, w)
    a, b = ref.split_channels(x)
    ta, tb = t(x).chunk(2, dim=1)
    np.testing.assert_array_equal(a, ta)
    np.testing.assert_array_equal(b, tb)
    a2, b2 = ref.split_channels(x, "halves")
    np.testing.assert_array_equal(a2, a)
    np.testing.assert_array_equal(b2, b)
    # Megvii ShuffleNetV2's channel_shuffle recipe, written in torch.
    tx = t(x).reshape(n * 2 * half // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, half, h, w)
    a, b = ref.split_channels(x, "interleaved")
    np.testing.assert_array_equal(a, tx[0])
    np.testing.assert_array_equal(b, tx[1])
    np.testing.assert_array_equal(a, x[:, 0::2])
    # interleaved split == torchvision shuffle(2) followed by the halves split
    s1, s2 = ref.split_channels(ref.channel_shuffle(x, half, "torchvision"), "halves")
    np.testing.assert_array_equal(s1, a)
    np.testing.assert_array_equal(s2, b)
    for arr in (a, b):
        assert arr.flags.c_contiguous and arr.dtype == np.float32
    np.testing.assert_array_equal(ref.concat_channels(*ref.split_channels(x)), x)


@SETTINGS
@given(seeds, st.integers(1, 3), st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_concat_channels(seed, n, cs):
    rng = np.random.default_rng(seed)
    xs = [randn(rng, n, c, 3, 2) for c in cs]
    np.testing.assert_array_equal(ref.concat_channels(*xs), torch.cat([t(a) for a in xs], 1))


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------


@st.composite
def pool_cases(draw):
    rng = np.random.default_rng(draw(seeds))
    k = draw(st.sampled_from([1, 2, 3, 3, 5]))
    padding = draw(st.integers(0, k // 2))                 # torch: pad <= k // 2
    stride = draw(st.one_of(st.none(), st.integers(1, 3)))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    h, w = spatial(draw, k, padding), spatial(draw, k, padding)
    return randn(rng, n, c, h, w), k, stride, padding


@SETTINGS
@given(pool_cases())
def test_max_pool2d_matches_torch(case):
    x, k, s, p = case
    ours = ref.max_pool2d(x, k, s, p)
    assert_close(ours, F.max_pool2d(t(x), k, s, p))
    assert np.isfinite(ours).all()


@SETTINGS
@given(pool_cases(), st.booleans())
def test_avg_pool2d_matches_torch(case, include_pad):
    x, k, s, p = case
    ours = ref.avg_pool2d(x, k, s, p, count_include_pad=include_pad)
    theirs = F.avg_pool2d(t(x), k, s, p, count_include_pad=include_pad)
    assert_close(ours, theirs)


def test_avg_pool2d_border_divisors():
    # 3x3/1 pad 1 over ones: include_pad gives 4/9 at a corner, exclude gives 1.
    x = np.ones((1, 1, 4, 4), np.float32)
    inc = ref.avg_pool2d(x, 3, 1, 1, count_include_pad=True)
    exc = ref.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    assert inc[0, 0, 0, 0] == pytest.approx(4 / 9)
    assert inc[0, 0, 0, 1] == pytest.approx(6 / 9)
    np.testing.assert_allclose(exc, 1.0)


@SETTINGS
@given(seeds, st.integers(1, 3), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9))
def test_global_avg_pool(seed, n, c, h, w):
    rng = np.random.default_rng(seed)
    x = randn(rng, n, c, h, w)
    ours = ref.global_avg_pool(x)
    assert ours.shape == (n, c)
    assert_close(ours, F.adaptive_avg_pool2d(t(x), 1).flatten(1))
    assert_close(ours, t(x).mean(dim=(2, 3)))


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


# --------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------

X = np.zeros((1, 6, 5, 5), np.float32)

BAD_CALLS = [
    ("not divisible by groups", lambda: ref.conv2d(X, np.zeros((4, 1, 3, 3)), groups=4)),
    ("output channels", lambda: ref.conv2d(X, np.zeros((4, 2, 3, 3)), groups=3)),
    (r"weight.shape\[1\]", lambda: ref.conv2d(X, np.zeros((6, 6, 3, 3)), groups=3)),
    ("larger than the padded input",
     lambda: ref.conv2d(X, np.zeros((6, 6, 7, 7)), padding=0)),
    ("larger than the padded input",
     lambda: ref.conv2d(X, np.zeros((6, 6, 1, 8)), padding=1)),
    ("bias", lambda: ref.conv2d(X, np.zeros((6, 6, 1, 1)), np.zeros(5))),
    ("stride", lambda: ref.conv2d(X, np.zeros((6, 6, 1, 1)), stride=0)),
    ("padding", lambda: ref.conv2d(X, np.zeros((6, 6, 1, 1)), padding=-1)),
    ("stride", lambda: ref.conv2d(X, np.zeros((6, 6, 1, 1)), stride=(1, 2, 3))),
    ("groups", lambda: ref.conv2d(X, np.zeros((6, 6, 1, 1)), groups=0)),
    ("x must be 4-D", lambda: ref.conv2d(X[0], np.zeros((6, 6, 1, 1)))),
    ("weight must be 4-D", lambda: ref.conv2d(X, np.zeros((6, 6)))),
    ("1x1", lambda: ref.pointwise_conv2d(X, np.zeros((6, 6, 3, 3)))),
    ("not divisible by groups", lambda: ref.pointwise_conv2d(X, np.zeros((4, 1, 1, 1)), groups=4)),
    (r"weight.shape\[1\]", lambda: ref.pointwise_conv2d(X, np.zeros((6, 3, 1, 1)), groups=3)),
    ("depthwise weight", lambda: ref.depthwise_conv2d(X, np.zeros((6, 2, 3, 3)))),
    ("depthwise weight", lambda: ref.depthwise_conv2d(X, np.zeros((5, 1, 3, 3)))),
    ("larger than the padded input", lambda: ref.depthwise_conv2d(X, np.zeros((6, 1, 9, 9)))),
    ("bias", lambda: ref.bias_relu(X, np.zeros(3))),
    ("gamma", lambda: ref.batch_norm(X, np.ones(5), np.zeros(6), np.zeros(6), np.ones(6))),
    ("var", lambda: ref.batch_norm(X, np.ones(6), np.zeros(6), np.zeros(6), -np.ones(6))),
    ("not divisible by groups", lambda: ref.channel_shuffle(X, 4)),
    ("convention", lambda: ref.channel_shuffle(X, 2, "caffe")),
    ("not divisible by groups", lambda: ref.shuffle_permutation(6, 4)),
    ("convention", lambda: ref.shuffle_permutation(6, 2, "paper")),
    ("even", lambda: ref.split_channels(X[:, :5])),
    ("convention", lambda: ref.split_channels(X, "thirds")),
    ("at least one", lambda: ref.concat_channels()),
    ("does not match", lambda: ref.concat_channels(X, X[:, :, :4])),
    ("half the kernel", lambda: ref.max_pool2d(X, 3, 2, 2)),
    ("half the kernel", lambda: ref.avg_pool2d(X, 2, 2, 2)),
    ("larger than the padded input", lambda: ref.max_pool2d(X, 7)),
    ("kernel_size", lambda: ref.avg_pool2d(X, 0)),
    ("x must be 4-D", lambda: ref.global_avg_pool(X[0])),
    ("input features", lambda: ref.linear(np.zeros((2, 5)), np.zeros((3, 4)))),
    ("bias", lambda: ref.linear(np.zeros((2, 4)), np.zeros((3, 4)), np.zeros(4))),
    ("1-D", lambda: ref.softmax(np.float32(1.0))),
]


@pytest.mark.parametrize(("match", "call"), BAD_CALLS)
def test_bad_arguments_raise_value_error(match, call):
    with pytest.raises(ValueError, match=match):
        call()


BAD_TYPES = [
    lambda: ref.conv2d(X, np.zeros((6, 6, 1, 1)), stride=1.5),
    lambda: ref.conv2d(X, np.zeros((6, 6, 1, 1)), groups=True),
    lambda: ref.max_pool2d(X, None),
    lambda: ref.channel_shuffle(X, 2.0),
]


@pytest.mark.parametrize("call", BAD_TYPES)
def test_non_integer_arguments_raise_type_error(call):
    with pytest.raises(TypeError, match="must be an integer"):
        call()


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
