"""Each ``kernels.cuda`` kernel, through its host launcher, against its ``kernels.reference`` twin on
the same random input, within 1e-4 relative. Tiny shapes on the simulator, ShuffleNet's own layer
shapes added on a GPU (``helpers.SIZES``). The fused channel-map epilogues: test_cuda_channel_maps.py."""

from __future__ import annotations

import pytest

from kernels import cuda as kc
from kernels import reference as ref
from tests.cuda.helpers import SIZES, assert_close, randn, rng

SHAPES = {
    # tiny: C <= 20, H, W <= 12; each still crosses an edge of its kernel's blocking somewhere
    "tiny": dict(
        stem=((2, 3, 8, 8), 12),  # 12 output channels: a full and a partial block of 8 per thread
        depthwise=[((2, 2, 12, 12), 1), ((2, 6, 7, 7), 2)],  # 144 pixels a plane: two blocks of 128
        pointwise=((2, 12, 5, 7), 16),  # 70 columns: two tiles of 64
        grouped=((2, 12, 4, 4), 6, 3),
        pool=(2, 8, 8, 8),
        gap=(2, 16, 7, 7),
        fc=(2, 16, 10),
    ),
    "real": dict(
        stem=((4, 3, 224, 224), 24),
        depthwise=[((8, 116, 28, 28), 1), ((8, 232, 28, 28), 2)],
        pointwise=((8, 116, 28, 28), 116),
        grouped=((8, 240, 28, 28), 60, 3),
        pool=(8, 24, 112, 112),
        gap=(8, 1024, 7, 7),
        fc=(8, 1024, 1000),
    ),
}


@pytest.fixture(params=SIZES)
def shapes(request) -> dict:
    return SHAPES[request.param]


def test_conv2d_3x3_stride2_relu_stem_matches_reference(shapes):
    (x_shape, out), g = shapes["stem"], rng(1)
    x, w, b = randn(g, *x_shape), randn(g, out, 3, 3, 3), randn(g, out)
    got = kc.conv2d(x, w, b, stride=2, padding=1, relu=True)
    assert_close(got, ref.conv2d(x, w, b, stride=2, padding=1, relu=True), f"conv2d {x_shape} -> {out}")


def test_grouped_conv2d_3x3_matches_reference():
    g = rng(2)
    x, w, b = randn(g, 2, 6, 7, 7), randn(g, 9, 2, 3, 3), randn(g, 9)
    got = kc.conv2d(x, w, b, stride=1, padding=1, groups=3)
    assert_close(got, ref.conv2d(x, w, b, stride=1, padding=1, groups=3), "conv2d groups=3")


@pytest.mark.parametrize("case", [0, 1], ids=["stride1", "stride2"])
def test_depthwise_conv2d_3x3_matches_reference(shapes, case):
    (x_shape, stride), g = shapes["depthwise"][case], rng(3 + case)
    x, w, b = randn(g, *x_shape), randn(g, x_shape[1], 1, 3, 3), randn(g, x_shape[1])
    got = kc.depthwise_conv2d(x, w, b, stride=stride, padding=1)
    assert_close(got, ref.depthwise_conv2d(x, w, b, stride=stride, padding=1), f"depthwise s{stride} {x_shape}")


def test_pointwise_conv2d_relu_matches_reference(shapes):
    (x_shape, out), g = shapes["pointwise"], rng(5)
    x, w, b = randn(g, *x_shape), randn(g, out, x_shape[1], 1, 1), randn(g, out)
    got = kc.pointwise_conv2d(x, w, b, relu=True)
    assert_close(got, ref.pointwise_conv2d(x, w, b, relu=True), f"pointwise {x_shape} -> {out}")


def test_pointwise_conv2d_across_channel_tiles_matches_reference():
    """20 input channels (a full and a partial step of 16 through shared memory) into 66 output
    channels (a full and a partial tile of 64 rows), no bias: the reference's zero bias."""
    g = rng(6)
    x, w = randn(g, 1, 20, 3, 3), randn(g, 66, 20, 1, 1)
    assert_close(kc.pointwise_conv2d(x, w), ref.pointwise_conv2d(x, w), "pointwise 20 -> 66")


def test_grouped_pointwise_conv2d_matches_reference(shapes):
    (x_shape, out, groups), g = shapes["grouped"], rng(7)
    x, w, b = randn(g, *x_shape), randn(g, out, x_shape[1] // groups, 1, 1), randn(g, out)
    got = kc.pointwise_conv2d(x, w, b, groups=groups)
    assert_close(got, ref.pointwise_conv2d(x, w, b, groups=groups), f"pointwise groups={groups} {x_shape} -> {out}")


def test_max_pool2d_3x3_stride2_pad1_matches_reference(shapes):
    x = randn(rng(8), *shapes["pool"])
    assert_close(kc.max_pool2d(x, 3, 2, 1), ref.max_pool2d(x, 3, 2, 1), f"max_pool {x.shape}")


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_3x3_stride2_pad1_matches_reference(shapes, count_include_pad):
    x = randn(rng(9), *shapes["pool"])
    got = kc.avg_pool2d(x, 3, 2, 1, count_include_pad)
    assert_close(got, ref.avg_pool2d(x, 3, 2, 1, count_include_pad), f"avg_pool {count_include_pad=}")


def test_global_avg_pool_matches_reference(shapes):
    x = randn(rng(10), *shapes["gap"])
    assert_close(kc.global_avg_pool(x), ref.global_avg_pool(x), f"global_avg_pool {x.shape}")


def test_linear_matches_reference(shapes):
    (n, features, classes), g = shapes["fc"], rng(11)
    x, w, b = randn(g, n, features), randn(g, classes, features), randn(g, classes)
    assert_close(kc.linear(x, w, b), ref.linear(x, w, b), f"linear {features} -> {classes}")


def test_global_avg_pool_then_linear_matches_reference(shapes):
    """The classifier's input is the pooled features, as at the end of every ShuffleNet."""
    (n, channels, h, w), (_, _, classes), g = shapes["gap"], shapes["fc"], rng(12)
    x, weight, b = randn(g, n, channels, h, w), randn(g, classes, channels), randn(g, classes)
    got = kc.linear(kc.global_avg_pool(x), weight, b)
    assert_close(got, ref.linear(ref.global_avg_pool(x), weight, b), "global_avg_pool + linear")
