"""numba.cuda kernels for every op of a ShuffleNet: the GPU twins of ``kernels.reference``.

Each op comes in three layers, so that it can be read, tested and run, one file each:

* ``device.py``: the ``@cuda.jit`` **kernel** (``*_kernel``), what one GPU thread computes
  (block and tile sizes in ``geometry.py``);
* ``launches.py``: the **launch factory** (``*_launch``), which picks the grid and block for
  device arrays and returns a :class:`Launch` (``graphs.py``), a kernel with all its arguments
  bound. ``npshuffle.backend_cuda`` builds the whole network as a list of these once per input
  shape and then just calls them, or replays them as one :class:`CudaGraph`;
* ``host.py``: the **host launcher** with the same name and shape contract as its
  ``kernels.reference`` twin (``conv2d``, ``depthwise_conv2d``, ``pointwise_conv2d``,
  ``max_pool2d``, ``avg_pool2d``, ``global_avg_pool``, ``linear``): NumPy in, NumPy out, for
  tests. Stride and padding are ints here (ShuffleNet only uses square ones), and the output is
  always float32.

Layout: NCHW, as in the reference. Within one (image, channel) plane the pixels are contiguous, so
the threads of a warp, which take consecutive pixels, load and store consecutive addresses
(coalesced) in every kernel. The 1x1 convolutions, which hold almost all of ShuffleNet's
multiply-adds, do not care about the image boundary: :func:`pointwise_kernel` treats every
(image, pixel) pair of the batch as one column of a matrix product and splits a column number into
(image, pixel) once per thread. Channel split, concat and shuffle only permute channels, so they
are index arithmetic on the channel number (``kernels.channel_map.ChannelMap``), done where a kernel loads its
input or stores its output: no kernel ever just copies data.

Kernels:

==========================  ===================================================================
``conv2d_kernel``           dense/grouped KxK conv (the stem), one thread per output pixel and
                            8 output channels
``depthwise_kernel``        depthwise KxK conv (ShuffleNet: 3x3), one thread per output element
``pointwise_kernel``        1x1 (grouped) conv as a shared-memory tiled matrix product, with a
                            fused epilogue: + bias, [+ residual], [ReLU], store to a mapped
                            channel, [carry the untouched half of a V2 split to its slot]
``max_pool_kernel``         max pool (padding never wins), one thread per output element
``avg_pool_kernel``         avg pool (count_include_pad either way), can store into a channel
                            slice of a wider tensor (ShuffleNet V1's stride-2 concat)
``global_avg_pool_kernel``  mean over the pixels, one thread per (image, channel)
==========================  ===================================================================

The classifier (``linear``) is :func:`pointwise_kernel` on a 1x1 "image" per sample.

Every kernel computes in float32: constants are ``np.float32`` so that nothing is promoted to
float64 (which GPUs run many times slower). Plain FMA on CUDA cores, no tensor cores (TF32 would
round the inputs to 10 mantissa bits and lose the 1e-4 parity with the NumPy reference).

Why NCHW rather than NHWC: the 1x1 convs read a TILE_K x TILE_N slice (channels x pixels) of the
input per step, and in NCHW each of its rows is contiguous pixels, so loads are coalesced and so
are the stores of every output row; depthwise convs and pools run on whole planes, which NCHW
keeps contiguous; and the batch arrives and the reference works in NCHW, so nothing is transposed.
"""

from __future__ import annotations

from numba import cuda  # (numba.cuda, also reachable as kernels.cuda.cuda)

from ..channel_map import IDENTITY, ChannelMap, shuffle_destination
from .device import (
    avg_pool_kernel,
    conv2d_kernel,
    depthwise_kernel,
    global_avg_pool_kernel,
    max_pool_kernel,
    pointwise_kernel,
)
from .graphs import SIMULATOR, CudaGraph, GraphUnavailable, Launch
from .host import (
    avg_pool2d,
    conv2d,
    depthwise_conv2d,
    global_avg_pool,
    linear,
    max_pool2d,
    pointwise_conv2d,
)
from .launches import (
    avg_pool_launch,
    conv2d_launch,
    depthwise_launch,
    global_avg_pool_launch,
    max_pool_launch,
    pack_pointwise_weight,
    pointwise_launch,
)

# A kernel that *stores* channel k at shuffle_map(...)(k) has shuffled its output
# (kernels.channel_map.shuffle_destination, under the name this package has always used)
shuffle_map = shuffle_destination

__all__ = [
    "IDENTITY",
    "SIMULATOR",
    "ChannelMap",
    "CudaGraph",
    "GraphUnavailable",
    "Launch",
    "avg_pool2d",
    "avg_pool_kernel",
    "avg_pool_launch",
    "conv2d",
    "conv2d_kernel",
    "conv2d_launch",
    "cuda",
    "depthwise_conv2d",
    "depthwise_kernel",
    "depthwise_launch",
    "global_avg_pool",
    "global_avg_pool_kernel",
    "global_avg_pool_launch",
    "linear",
    "max_pool2d",
    "max_pool_kernel",
    "max_pool_launch",
    "pack_pointwise_weight",
    "pointwise_conv2d",
    "pointwise_kernel",
    "pointwise_launch",
    "shuffle_map",
]
