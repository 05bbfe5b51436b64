"""Property tests: kernels.reference's channel shuffle, split, concat and pooling against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from kernels import reference as ref
from tests.reference_cases import SETTINGS, assert_close, randn, seeds, spatial, t

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
