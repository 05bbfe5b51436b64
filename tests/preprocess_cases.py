"""Deterministic synthetic images for the preprocessing parity fixtures (no randomness, no I/O)."""

import numpy as np

SIZES = [(300, 200), (200, 300), (255, 257), (100, 80), (520, 257), (224, 224), (225, 223), (257, 256)]


def synthetic(width: int, height: int, index: int) -> np.ndarray:
    """A smooth but non-trivial RGB pattern (H, W, 3) uint8 that exercises the interpolation."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    a, b, c = 0.03 + 0.011 * index, 0.05 + 0.007 * index, 0.02 + 0.013 * index
    r = 127.5 * (1 + np.sin(a * x + b * y))
    g = 255.0 * x / max(width - 1, 1)
    blue = 127.5 * (1 + np.cos(c * (x - y)))
    return np.clip(np.stack([r, g, blue], axis=-1), 0, 255).astype(np.uint8)
