"""Launch geometry of the CUDA kernels: block shapes and tile sizes (plain Python, no numba)."""

from __future__ import annotations

# --------------------------------------------------------------------------
# Launch geometry
# --------------------------------------------------------------------------

# Pointwise (1x1) conv = matrix product out[o, col] = sum_k w[o, k] * x[k, col]. A block of
# 16 x 16 threads computes a TILE_M x TILE_N tile of out; each thread a MICRO x MICRO piece of it,
# rows ty, ty + 16, ty + 32, ty + 48 and columns tx, tx + 16, ... (so that neighbouring threads
# store neighbouring columns). The K dimension is walked TILE_K channels at a time through
# shared memory: each weight read from global memory serves TILE_N columns and each activation
# TILE_M output channels, and each value a thread reads from shared memory serves MICRO FMAs.
THREADS_X = 16
THREADS_Y = 16
THREADS = THREADS_X * THREADS_Y
MICRO = 4
TILE_M = THREADS_Y * MICRO  # 64 output channels per block
TILE_N = THREADS_X * MICRO  # 64 columns (image, pixel) per block
TILE_K = 16  # input channels per shared-memory step
A_LOADS = TILE_K * TILE_M // THREADS  # weights each thread loads per step (4)
B_LOADS = TILE_K * TILE_N // THREADS  # activations each thread loads per step (4)

# Per-element kernels: blocks of up to 128 threads along one (image, channel) plane's pixels;
# blockIdx.x picks the plane (that grid axis has room for ~2e9 of them), blockIdx.y the pixel block.
PLANE_THREADS = 128
# conv2d_kernel: output channels per thread
CONV_CHANNELS = 8

# pointwise_kernel's side input
SIDE_NONE = 0  # none
SIDE_RESIDUAL = 1  # v += side[n, dst, p] before the ReLU (ShuffleNet V1 stride 1)
# also copy side[n, side_map(o), p] to out[n, carry_map(o), p] (a V2 unit's kept half, or its projection)
SIDE_CARRY = 2


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _plane_geometry(planes: int, pixels: int) -> tuple[tuple[int, int], int]:
    """(grid, block) for one thread per output pixel, blockIdx.x = plane."""
    threads = min(PLANE_THREADS, 32 * _cdiv(pixels, 32))
    blocks = _cdiv(pixels, threads)
    if blocks > 65535:  # CUDA's limit for gridDim.y
        raise ValueError(f"{pixels} output pixels per plane is more than this launch layout handles")
    return (planes, blocks), threads
