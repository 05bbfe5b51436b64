"""``npshuffle lab``: each experiment's variants have the FLOPs the paper held fixed, the torch
twin of each network computes what the project's ops compute, and the command runs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from npshuffle.backend_numpy import NumpyRunner
from npshuffle.cli import main
from npshuffle.lab import EXPERIMENTS, _program, torch_module
from npshuffle.profiling import op_rows

SIZE = 56


@pytest.mark.parametrize("key", sorted(EXPERIMENTS))
def test_the_variants_of_an_experiment_have_equal_flops(key):
    macs = []
    for _, (body, channels) in EXPERIMENTS[key][2]:
        program, names = _program(body, channels)
        macs.append(sum(r.macs for r in op_rows(program, 4 * SIZE, 4 * SIZE) if r.name in names))
    assert max(macs) / min(macs) < 1.06, macs  # (the paper's widths are rounded: within 6 %)


@pytest.mark.parametrize("key", sorted(EXPERIMENTS))
def test_the_torch_twin_computes_the_same_network(key):
    torch = pytest.importorskip("torch")
    for label, (body, channels) in EXPERIMENTS[key][2]:
        program, names = _program(body, channels)
        runner = NumpyRunner(program)
        ops = [op for op in program.ops if op.name in names]
        values = {program.image: np.random.default_rng(3).standard_normal((3, 4 * SIZE, 4 * SIZE)).astype(np.float32)}
        for op, step in zip(program.ops, runner.steps, strict=True):
            step(values)
            if op is ops[-1]:
                break
        with torch.inference_mode():
            got = torch_module(program, names)(torch.from_numpy(values[ops[0].src][None])).numpy()[0]
        expected = values[ops[-1].dst]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max(), err_msg=label)


def test_the_command_prints_the_table_and_the_verdict_and_draws(tmp_path, capsys):
    png = tmp_path / "g2.png"
    assert main(["lab", "g2", "--repeat", "1", "--no-torch", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| g = 8 (c = 360) |" in out and "G2 here: npshuffle: " in out
    with Image.open(png) as chart:
        assert chart.format == "PNG"


def test_a_bad_repeat_is_one_line(capsys):
    assert main(["lab", "g1", "--repeat", "0"]) == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err


def test_the_verdicts_follow_the_numbers():
    from npshuffle.lab import _verdict

    assert _verdict("g2", [1.0, 1.37, 1.39, 1.92]).startswith("holds")  # (rising, one step within noise)
    assert _verdict("g2", [1.0, 1.37, 1.20, 1.92]).startswith("does not hold")  # (g = 4 faster than g = 2)
    assert _verdict("g2", [1.0, 0.99, 1.01, 1.0]).startswith("does not hold")  # (flat)
    assert _verdict("g1", [1.0, 1.15, 1.26]).startswith("holds") and _verdict("g3", [1.0, 0.9, 1.2]).startswith("does")
    assert "+9 %" in _verdict("g4", [1.0, 0.95, 0.93, 0.91])
