"""``npshuffle profile``: the paper costs of each layer (checked by hand on small models), the fused
Numba steps covering every op once, and the command's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import npshuffle
from npshuffle.archs import V2Spec, build_plan, v1_spec
from npshuffle.cli import main
from npshuffle.lowering import lower
from npshuffle.profiling import merged, op_rows, profile


def rows_by_name(plan, size=32):
    weights = {k: np.zeros(s, np.float32) for k, s in plan.weight_shapes().items()}
    return {r.name: r for r in op_rows(lower(plan, weights), size, size)}


def test_costs_of_a_small_v2_by_hand():
    rows = rows_by_name(build_plan(V2Spec(12, (24, 48), 64, (2, 2), 10), "torchvision"))
    stem = rows["stem"]  # 3x3 / 2 conv, 3 -> 12 channels, 32x32 -> 16x16
    assert (stem.params, stem.macs) == (12 * 3 * 9 + 12, 16 * 16 * 12 * 3 * 9)
    assert stem.mem == 32 * 32 * 3 + 16 * 16 * 12 + stem.params
    assert rows["max_pool"].mem == 16 * 16 * 12 + 8 * 8 * 12 and rows["max_pool"].macs == 0
    pw1 = rows["units.0.pw1"]  # 1x1, c1 = c2 = 12, 8x8: the paper's MAC h*w*(c1 + c2) + c1*c2, + 12 biases
    assert (pw1.macs, pw1.mem) == (8 * 8 * 12 * 12, 8 * 8 * (12 + 12) + 12 * 12 + 12)
    dw = rows["units.0.dw"]  # 3x3 depthwise, stride 2, 12 channels, 8x8 -> 4x4
    assert (dw.macs, dw.mem) == (4 * 4 * 12 * 9, 8 * 8 * 12 + 4 * 4 * 12 + 12 * 9 + 12)
    pw2 = rows["units.0.pw2"]  # + the passthrough half (the projection) read and written beside it
    assert pw2.mem == 4 * 4 * (12 + 12) + 12 * 12 + 12 + 2 * 4 * 4 * 12
    head = rows["head"]  # 1x1 48 -> 64 at 2x2, its global average pool fused: only the 64 means written
    assert (head.macs, head.mem) == (2 * 2 * 48 * 64, 2 * 2 * 48 + 48 * 64 + 64 + 64)
    fc = rows["classifier"]
    assert (fc.params, fc.macs, fc.mem) == (64 * 10 + 10, 64 * 10, 64 + 10 + 650)


def test_costs_of_a_v1_group_conv_by_hand():
    rows = rows_by_name(build_plan(v1_spec(3, "0.5x", 5), "megvii"))
    pw2 = rows["units.0.pw2"]  # 1x1, 3 groups, 30 -> 108 channels at 4x4: h*w*(c1 + c2) + c1*c2/g, + biases
    assert (pw2.params, pw2.macs) == (108 * 10 + 108, 4 * 4 * 108 * 10)
    assert pw2.mem == 4 * 4 * (30 + 108) + 30 * 108 // 3 + 108
    pool = rows["units.0.avg_pool"]  # the stride-2 shortcut: 12 channels, 8x8 -> 4x4
    assert (pool.macs, pool.mem) == (0, 8 * 8 * 12 + 4 * 4 * 12)


def test_a_fused_step_sums_its_ops_without_the_value_passed_inside():
    rows = rows_by_name(build_plan(V2Spec(12, (24, 48), 64, (2, 2), 10), "torchvision"))
    stem = merged("stem+max_pool", [rows["stem"], rows["max_pool"]])
    inner = 12 * 16 * 16  # the conv's output, written and read back inside the kernel: never in memory
    assert stem.macs == rows["stem"].macs and stem.mem == rows["stem"].mem + rows["max_pool"].mem - 2 * inner
    assert (stem.in_shape, stem.out_shape) == ((3, 32, 32), (12, 8, 8))


@pytest.mark.parametrize("device", ["numba", "numpy"])
def test_the_rows_cover_every_op_once_and_are_timed(device):
    model = npshuffle.load_model("flowers", backend=device)
    result = profile(model, batch=2, repeat=2)
    weights = model.file.weights
    expected = op_rows(lower(model.file.plan, weights), 224, 224)
    assert sum(r.macs for r in result.rows) == sum(r.macs for r in expected)
    params = sum(w.size for w in weights.values())  # (batch norm folded: weights and biases only)
    assert sum(r.params for r in result.rows) == sum(r.params for r in expected) == params
    assert all(r.seconds > 0 for r in result.rows) and abs(sum(r.share for r in result.rows) - 1) < 1e-9
    assert result.forward_s > 0 and result.sgemm_gflops > 0 and result.backend == device
    if device == "numpy":
        assert [r.name for r in result.rows] == [r.name for r in expected]


def test_the_command_writes_json_and_a_chart(tmp_path, capsys):
    png = tmp_path / "layers.png"
    assert main(["profile", "flowers_v2", "--repeat", "2", "--format", "json", "--png", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "numba" and report["size"] == 192
    assert report["totals"]["macs"] == sum(r["macs"] for r in report["rows"])
    with Image.open(png) as chart:
        assert chart.format == "PNG" and chart.height > 20 * len(report["rows"]) // 2


@pytest.mark.parametrize("args, message", [(["--batch", "0"], "--batch must be at least 1"),
                                           (["--size", "8"], "--size must be at least")])
def test_bad_settings_get_one_line(capsys, args, message):
    assert main(["profile", "flowers_v2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
