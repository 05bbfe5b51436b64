"""kernels.reference refuses bad arguments: a ValueError or TypeError that says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import reference as ref

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
