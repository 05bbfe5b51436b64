"""benchmarks/sgemm_ceiling.py and bench_cpu.py: the arithmetic peak's lanes per CPU, and the
report's speed bars with what each needs of the measured ceiling (pure functions, no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(BENCHMARKS))  # (the scripts import each other by plain name)
    try:
        import bench_cpu
        import sgemm_ceiling
        yield sgemm_ceiling, bench_cpu
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("vendor, family, flags, lanes", [
    ("GenuineIntel", "6", "fma avx2 avx512f", 16),  # Ice Lake server, Sapphire / Emerald Rapids
    ("AuthenticAMD", "26", "fma avx2 avx512f", 16),  # Zen 5: 512-bit FMA units
    ("AuthenticAMD", "25", "fma avx2 avx512f", 8),  # Zen 4: AVX-512 on 256-bit units
    ("AuthenticAMD", "25", "fma avx2", 8),  # Zen 3
    ("GenuineIntel", "6", "sse4_2", 4),
])
def test_fma_lanes_follow_the_datapath_not_the_instruction_set(modules, vendor, family, flags, lanes):
    sgemm_ceiling, _ = modules
    assert sgemm_ceiling.fma_lanes({"vendor_id": vendor, "cpu family": family, "flags": flags}) == lanes


def test_speed_bars_state_what_they_need_of_the_ceiling(modules):
    _, bench_cpu = modules
    macs = {"V2 x2.0": 591e6, "V2 x1.0": 146e6}
    results = {  # seconds per call
        ("V2 x2.0", 32): {"numba": 32 / 150, "torch": 32 / 60, "onnxruntime": 32 / 118},
        ("V2 x1.0", 1): {"numba": 2.0e-3, "torch": 10.0e-3, "onnxruntime": 4.2e-3},
    }
    measured = bench_cpu.Measurements(results, {}, {}, macs, {}, 200.0, "SkylakeX")
    lines = bench_cpu.speed_bar_lines(measured)
    # V2 x1.0 batch 1: 5x torch (met), 2.1x ONNX Runtime (met); V2 x2.0 batch 32: 2.5x torch, 1.27x ORT (unmet)
    assert lines == [
        "- [x] V2 x1.0 batch 1 >= 4x torch eager: 5.00x (146 GFLOP/s; 4x needs 117 GFLOP/s, 58% of the ceiling)",
        "- [x] V2 x1.0 batch 1 latency <= 0.5x ONNX Runtime's (a 2x speed-up): 2.10x (146 GFLOP/s; 2x needs "
        "139 GFLOP/s, 70% of the ceiling)",
        "- [ ] V2 x2.0 batch 32 >= 3.5x torch eager: 2.50x (177 GFLOP/s; 3.5x needs 248 GFLOP/s, 124% of the ceiling)",
        "- [ ] V2 x2.0 batch 32 >= 1.5x ONNX Runtime: 1.27x (177 GFLOP/s; 1.5x needs 209 GFLOP/s, 105% of the "
        "ceiling)",
    ]


@pytest.fixture(scope="module")
def shape_ceiling():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import shape_ceiling
        yield shape_ceiling
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_shape_ceiling_rows_are_model_and_batch(shape_ceiling):
    assert shape_ceiling.parse_row("V2 x0.5:32") == ("V2 x0.5", 32)
    for bad in ("V2 x0.5", "V2 x0.7:1", "V2 x1.0:0", "V2 x1.0:-1", "V2 x1.0:one"):
        with pytest.raises(Exception, match="MODEL:BATCH"):
            shape_ceiling.parse_row(bad)


def _row(shape_ceiling, blas_s: float):
    product = shape_ceiling.Product("units.0.pw1", 784, 58, 58, 1, blas_s=blas_s, blas_how="tall", ours_s=1.1e-3)
    return shape_ceiling.Row("V2 x1.0", 1, 146_000_000, numba_s=2.4e-3, ort_s=3.4e-3, products=[product],
                             dispatch_s=1e-6)


@pytest.mark.parametrize("blas_s, verdict", [
    (1.0e-3, "leaving 0.701 ms for everything else"),  # 1.0 - 0.001 ms dispatch of 1.7 ms allowed
    (1.8e-3, "the bar needs GEMMs faster than the vendor BLAS on these shapes"),
])
def test_shape_ceiling_says_whether_the_products_alone_exceed_the_bar(shape_ceiling, blas_s, verdict):
    row = _row(shape_ceiling, blas_s)
    assert row.allowed_s == pytest.approx(1.7e-3)
    assert row.blas_net_s == pytest.approx(blas_s - 1e-6)
    report = "\n".join(shape_ceiling.report_lines([row], "machine", 2, "SkylakeX", 200.0, "cmd"))
    assert verdict in report
    assert "| units.0.pw1 | 784 | 58 | 58 | 1 |" in report and report.rstrip().endswith("| tall | 1100.0 | 5 |")


def test_shape_ceiling_takes_every_product_of_the_network(shape_ceiling):
    """The stem's im2col product, then one per 1x1 conv: as many multiply-adds as the plan's stem and
    1x1 layers at that size and batch."""
    import numpy as np

    from npshuffle.archs import build_plan, v2_spec
    from npshuffle.backend_numba import NumbaBackend
    from npshuffle.plan import pooled_size

    plan = build_plan(v2_spec("0.5x"), "torchvision")
    rng = np.random.default_rng(0)
    runner = NumbaBackend().prepare(plan, {k: rng.standard_normal(s).astype(np.float32)
                                           for k, s in plan.weight_shapes().items()})
    runner(np.zeros((1, 3, 64, 64), np.float32))
    products = shape_ceiling.gemm_products(runner, batch=2, size=64)

    def conv(layer, size):  # multiply-adds of one image
        return layer.out_channels * layer.in_channels // layer.groups * layer.kernel ** 2 * size * size

    size = plan.stem.output_size(64)
    expected = [conv(plan.stem, size)]
    size = pooled_size(size)
    for unit in plan.units:
        out = unit.dw.output_size(size)
        if unit.stride == 2:
            expected.append(conv(unit.proj_pw, out))
        expected += [conv(unit.pw1, size), conv(unit.pw2, out)]
        size = out
    expected.append(conv(plan.head, size))
    assert (products[0].label, products[0].m, products[0].k, products[0].n) == ("stem conv (im2col)", 2 * 32 * 32,
                                                                                 27, 24)
    assert products[1].m == 2 * 16 * 16  # units.0's first 1x1, before its stride-2 depthwise
    assert len(products) == len(expected)
    assert sum(p.macs for p in products) == 2 * sum(expected)
