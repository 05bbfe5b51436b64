"""Channel split, concat and shuffle as ``kernels.cuda.ChannelMap`` index arithmetic: what the maps
mean on the host (against ``kernels.reference``), then the 1x1 conv's mapped loads and stores, its
residual and its carried half, each against the reference ops the backend fuses away."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import cuda as kc
from kernels import reference as ref
from tests.cuda.helpers import SIZES, assert_close, randn, rng

SHAPES = {
    "tiny": dict(
        n=2,
        # (in channels, out channels, size, groups, convention) of a V1 pw1 storing shuffled
        shuffle=[(12, 6, 4, 3, "torchvision"), (16, 8, 4, 2, "megvii"), (16, 8, 4, 4, "megvii")],
        unit=(12, 4, 3),  # V1 unit: channels, size, groups
        split=(2, 16, 4, 4),  # V2 unit input
    ),
    "real": dict(
        n=8,
        shuffle=[(240, 60, 28, 3, "torchvision"), (240, 60, 28, 3, "megvii"), (384, 96, 14, 8, "megvii")],
        unit=(240, 28, 3),
        split=(8, 232, 14, 14),
    ),
}


@pytest.fixture(params=SIZES)
def shapes(request) -> dict:
    return SHAPES[request.param]


# --------------------------------------------------------------------------------------------------
# The maps themselves (host only)


@pytest.mark.parametrize("convention", ["torchvision", "megvii"])
@pytest.mark.parametrize("channels, groups", [(12, 3), (12, 4), (16, 2), (240, 3), (384, 8)])
def test_shuffle_map_inverts_the_reference_shuffle_permutation(channels, groups, convention):
    """Storing channel k at shuffle_map(k) = channel_shuffle: dest[perm] is the identity."""
    perm = ref.shuffle_permutation(channels, groups, convention)
    dest = kc.shuffle_map(channels, groups, convention)(np.arange(channels))
    np.testing.assert_array_equal(dest[perm], np.arange(channels))


def test_shuffle_map_stores_what_channel_shuffle_computes():
    x = randn(rng(20), 1, 12, 2, 2)
    for convention in ("torchvision", "megvii"):
        stored = np.empty_like(x)
        stored[:, kc.shuffle_map(12, 3, convention)(np.arange(12))] = x
        np.testing.assert_array_equal(stored, ref.channel_shuffle(x, 3, convention))


def test_shuffle_map_refuses_an_unknown_convention_or_partial_groups():
    with pytest.raises(ValueError, match="convention"):
        kc.shuffle_map(12, 3, "caffe")
    with pytest.raises(ValueError, match="divisible"):
        kc.shuffle_map(12, 5)


def test_channel_maps_name_the_split_concat_and_shuffle_channels():
    """The maps the backend uses for a V2 unit, against the reference split / concat / shuffle."""
    c = 8
    channels = np.arange(c)
    x = np.arange(c, dtype=np.float32).reshape(1, c, 1, 1)
    assert kc.IDENTITY == kc.ChannelMap() and list(kc.IDENTITY(channels)) == list(channels)
    for convention, kept, branch in (("halves", kc.IDENTITY, kc.ChannelMap(offset=c // 2)),
                                     ("interleaved", kc.ChannelMap(step=2), kc.ChannelMap(offset=1, step=2))):
        first, second = ref.split_channels(x, convention)
        assert list(kept(np.arange(c // 2))) == list(first.ravel()), convention
        assert list(branch(np.arange(c // 2))) == list(second.ravel()), convention
    a, b = x[:, :3], x[:, 3:]
    joined = ref.concat_channels(a, b).ravel()
    assert list(joined[kc.ChannelMap(offset=3)(np.arange(5))]) == list(b.ravel())
    shuffled = ref.channel_shuffle(x, 2, "torchvision").ravel()  # concat(first half, second half), then shuffle(2)
    assert list(shuffled[kc.ChannelMap(step=2)(np.arange(4))]) == list(x.ravel()[:4])
    assert list(shuffled[kc.ChannelMap(offset=1, step=2)(np.arange(4))]) == list(x.ravel()[4:])


# --------------------------------------------------------------------------------------------------
# The 1x1 conv's fused epilogues on the device


@pytest.mark.parametrize("case", [0, 1, 2])
def test_grouped_pointwise_stores_straight_into_shuffled_channels(shapes, case):
    """V1 pw1: a grouped 1x1 conv (+ReLU) whose output channel k lands at shuffle_map(k)."""
    (c, o, size, groups, convention), n, g = shapes["shuffle"][case], shapes["n"], rng(21 + case)
    x, w, b = randn(g, n, c, size, size), randn(g, o, c // groups, 1, 1), randn(g, o)
    got = kc.pointwise_conv2d(x, w, b, groups=groups, relu=True, out_map=kc.shuffle_map(o, groups, convention))
    want = ref.channel_shuffle(ref.pointwise_conv2d(x, w, b, groups=groups, relu=True), groups, convention)
    assert_close(got, want, f"pointwise g{groups} -> channel_shuffle {convention} ({n}, {c}, {size}, {size}) -> {o}")


@pytest.mark.parametrize("convention", ["torchvision", "megvii"])
def test_grouped_pointwise_reads_through_a_shuffle(convention):
    """V1 pw2 reading pw1's output back in shuffled order: in_map(i) = the shuffle's source channel."""
    c, groups, g = 8, 2, rng(24)
    per_group = c // groups
    read = (kc.ChannelMap(step=per_group, period=groups, jump=1) if convention == "torchvision"
            else kc.ChannelMap(step=groups, period=per_group, jump=1))
    np.testing.assert_array_equal(read(np.arange(c)), ref.shuffle_permutation(c, groups, convention))
    x, w, b = randn(g, 2, c, 3, 3), randn(g, 6, per_group, 1, 1), randn(g, 6)
    got = kc.pointwise_conv2d(x, w, b, groups=groups, in_map=read)
    assert_close(got, ref.pointwise_conv2d(ref.channel_shuffle(x, groups, convention), w, b, groups=groups),
                 f"shuffle({groups}, {convention}) -> grouped pointwise")


def test_pointwise_plus_residual_then_relu_is_the_v1_stride1_tail(shapes):
    """relu(x + pw2(y)) in the 1x1 conv's epilogue."""
    (c, size, groups), n, g = shapes["unit"], shapes["n"], rng(25)
    x, y = randn(g, n, c, size, size), randn(g, n, c // 4, size, size)
    w, b = randn(g, c, c // 4 // groups, 1, 1), randn(g, c)
    got = kc.pointwise_conv2d(y, w, b, groups=groups, relu=True, residual=x)
    want = ref.bias_relu(x + ref.pointwise_conv2d(y, w, b, groups=groups), None, relu=True)
    assert_close(got, want, f"pointwise + residual + ReLU ({n}, {c}, {size}, {size})")


def test_avg_pool_and_pointwise_store_into_their_concat_slots_the_v1_stride2_tail(shapes):
    """concat(avg_pool(x), relu(pw2(y))): each kernel writes its own channel range of one tensor
    and leaves the other's at zero."""
    (c, size, _), n, g = shapes["unit"], shapes["n"], rng(26)
    x, y = randn(g, n, c, 2 * size, 2 * size), randn(g, n, c // 2, size, size)
    w, b = randn(g, c, c // 2, 1, 1), randn(g, c)
    pooled = kc.avg_pool2d(x, 3, 2, 1, True, out_offset=0, out_channels=2 * c)
    branch = kc.pointwise_conv2d(y, w, b, relu=True, out_map=kc.ChannelMap(offset=c), out_channels=2 * c)
    assert not pooled[:, c:].any() and not branch[:, :c].any(), "a kernel wrote outside its slot"
    want = ref.concat_channels(ref.avg_pool2d(x, 3, 2, 1, True), ref.pointwise_conv2d(y, w, b, relu=True))
    assert_close(pooled + branch, want, f"avg_pool | pointwise -> concat slots ({n}, {c}, ..)")


@pytest.mark.parametrize("split", ["halves", "interleaved"])
def test_pointwise_reads_its_half_of_a_v2_split_in_place(shapes, split):
    """V2 pw1: the branch half of x, read through in_map, no copy."""
    shape, g = shapes["split"], rng(27)
    half = shape[1] // 2
    x, w, b = randn(g, *shape), randn(g, half, half, 1, 1), randn(g, half)
    in_map = kc.ChannelMap(offset=half) if split == "halves" else kc.ChannelMap(offset=1, step=2)
    got = kc.pointwise_conv2d(x, w, b, relu=True, in_map=in_map)
    assert_close(got, ref.pointwise_conv2d(ref.split_channels(x, split)[1], w, b, relu=True),
                 f"split {split} -> pointwise {shape}")


@pytest.mark.parametrize("dialect", ["torchvision", "megvii"])
def test_pointwise_stores_the_branch_and_carries_the_kept_half_the_v2_stride1_tail(shapes, dialect):
    """V2 stride 1, the last 1x1 conv: stores the branch into its final channels and carries the
    untouched half of x to its own = concat(kept, pw2(y)) [then shuffle(2), torchvision]."""
    shape, g = shapes["split"], rng(28)
    half = shape[1] // 2
    x, y = randn(g, *shape), randn(g, shape[0], half, shape[2], shape[3])
    w, b = randn(g, half, half, 1, 1), randn(g, half)
    if dialect == "torchvision":
        kept, kept_dst, branch_dst = kc.ChannelMap(), kc.ChannelMap(step=2), kc.ChannelMap(offset=1, step=2)
    else:
        kept, kept_dst, branch_dst = kc.ChannelMap(step=2), kc.ChannelMap(), kc.ChannelMap(offset=half)
    got = kc.pointwise_conv2d(y, w, b, relu=True, out_map=branch_dst, out_channels=shape[1],
                              carry=(x, kept, kept_dst))
    split = "halves" if dialect == "torchvision" else "interleaved"
    want = ref.concat_channels(ref.split_channels(x, split)[0], ref.pointwise_conv2d(y, w, b, relu=True))
    if dialect == "torchvision":
        want = ref.channel_shuffle(want, 2, "torchvision")
    assert_close(got, want, f"V2 unit tail, {dialect}: concat(+shuffle) with carried half {shape}")
