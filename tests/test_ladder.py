"""benchmarks/ladder.py: every rung of the optimisation ladder computes NumPy's result.

The kernels are called directly, on small random layers whose sizes are not multiples of the
tiles (4 pixels, 16 or 64 channels), so the edges of every rung are exercised; each output array
has a guard row of NaNs after it, which a store past the end would overwrite.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

LADDER_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "ladder.py"


def _load_ladder():
    spec = importlib.util.spec_from_file_location("ladder", LADDER_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks itself up there)
    spec.loader.exec_module(module)
    return module


ladder = _load_ladder()
ladder.compile_all()

TOL = ladder.TOLERANCE
# (pixels, K, N): odd pixel counts (tiles of 4 past the last pixel), N off the 16 / 64 grid, tiny and
# one-tile-exact layers, and the benchmark's own layer
SHAPES = [(13, 29, 70), (1, 1, 1), (3, 5, 17), (4, 16, 64), (7, 64, 129), (21, 40, 200), (196, 232, 232)]


def layer(shape, seed=0):
    p, k, n = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return x, w, b


def guarded(rows, cols):
    """A (rows, cols) float32 output, zeros, whose memory is followed by a row of NaNs; and that row."""
    block = np.zeros((rows + 1, cols), np.float32)
    block[rows] = np.nan
    return block[:rows], block[rows]


def assert_close(got, expected):
    assert got.shape == expected.shape
    err = ladder.relative_error(got, expected)
    assert err < TOL, f"relative error {err:.2e}"


@pytest.mark.parametrize("shape", SHAPES)
def test_rung1_nchw(shape):
    x, w, b = layer(shape)
    out, guard = guarded(shape[2], shape[0])
    ladder.gemm1_nchw(np.ascontiguousarray(x.T), np.ascontiguousarray(w.T), out)
    assert_close(out.T, x @ w)
    ladder.bias_relu_nchw(out, b)
    assert_close(out.T, np.maximum(x @ w + b, 0))
    assert np.isnan(guard).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_rung2_nhwc_and_its_scalar_twin(shape):
    x, w, b = layer(shape)
    for kernel in (ladder.gemm2_nhwc, ladder.gemm2_scalar):
        out, guard = guarded(shape[0], shape[2])
        kernel(x, w, out)
        assert_close(out, x @ w)
        ladder.bias_relu_nhwc(out, b)
        assert_close(out, np.maximum(x @ w + b, 0))
        assert np.isnan(guard).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", ["gemm3_lanes", "gemm4_register_tile"])
def test_rungs_3_4_padded_channels(shape, kernel):
    x, w, b = layer(shape)
    n = shape[2]
    wide = ladder.padded(n)
    out, guard = guarded(shape[0], wide)
    getattr(ladder, kernel)(x, ladder.pad_columns(w, wide), out)
    assert_close(out[:, :n], x @ w)
    assert not out[:, n:].any(), "the padding channels (zero weights) must come out zero"
    assert np.isnan(guard).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_rungs_5_6_panels(shape, relu):
    x, w, b = layer(shape)
    n = shape[2]
    panels, tiles = ladder.pack_panels(w, b)
    assert sum(int(t[1]) for t in tiles) == ladder.padded(n)
    out, guard = guarded(shape[0], ladder.padded(n))
    ladder.gemm_panels(x, panels, tiles, out, relu)
    expected = x @ w + b
    assert_close(out[:, :n], np.maximum(expected, 0) if relu else expected)
    assert np.isnan(guard).all()


def test_panel_layout():
    """Rung 5's panels: row 0 the bias, row 1 + k the weights of input k, zeros past N."""
    x, w, b = layer((2, 3, 70))
    panels, tiles = ladder.pack_panels(w, b)
    assert [tuple(t[:2]) for t in tiles] == [(0, 64), (64, 16)]
    second = panels[tiles[1, 2]: tiles[1, 2] + 4 * 16].reshape(4, 16)
    np.testing.assert_array_equal(second[0, :6], b[64:])
    np.testing.assert_array_equal(second[1:, :6], w[:, 64:])
    assert not second[:, 6:].any()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_rung_of_the_benchmark(shape):
    """The rows the benchmark times (each with its own layout and output) pass its own check."""
    x, w, b = layer(shape, seed=1)
    rungs = ladder.build_rungs(x, w, b, side_rows=True)
    assert [r.label for r in rungs] == ["1", "2", "(2)", "3", "4", "5", "6", "(6)"]
    for rung in rungs:
        assert ladder.check_rung(rung, x, w, b) == [], rung.label
        rung.layer()
        assert_close(rung.result(), np.maximum(x @ w + b, 0))


def test_the_check_catches_a_wrong_rung():
    """check_rung reports a kernel that gets a single output wrong (the check can fail)."""
    x, w, b = layer((13, 29, 70))
    rung = ladder.build_rungs(x, w, b)[4]  # rung 4
    right = rung.gemm

    def off_by_one_output():
        right()
        rung.result()[12, 69] += 1.0

    rung.gemm = off_by_one_output
    problems = ladder.check_rung(rung, x, w, b)
    assert problems and "matrix product" in problems[0]
