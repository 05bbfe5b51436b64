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
