"""``benchmarks/gpu_check.py --simulate``: the GPU benchmark script's dry run on the simulator, so
that the script still works when a GPU machine is lent for it (rarely, and by the minute)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO
from tests.cuda.helpers import SIMULATOR


def load_script(monkeypatch):
    """benchmarks/gpu_check.py as a module (benchmarks/ is no package), registered while the test
    runs (its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_end_to_end_on_the_simulator(tmp_path, capsys, monkeypatch):
    """Parity of its network, both batch sizes timed against torch (logits within 1e-4), the
    per-kernel breakdown of the last batch labelling every launch, the tables, the JSON report."""
    if not SIMULATOR:
        pytest.skip("on a GPU, benchmarks/gpu_check.sh runs the script for real")
    pytest.importorskip("torch")
    report_path = tmp_path / "report.json"
    # --timeout 0: no watchdog (faulthandler needs a real stderr; the test run has its own timeout)
    status = load_script(monkeypatch).main(["--simulate", "--json", str(report_path), "--timeout", "0"])
    out = capsys.readouterr().out
    assert status == 0, out
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["failure"] is None, out
    assert [c["group"] for c in report["checks"]] == ["models"] and report["checks"][0]["ok"], report["checks"]
    assert [row["batch"] for row in report["timings"]] == [1, 2]
    assert all(row["torch_rel_diff"] <= 1e-4 for row in report["timings"]), report["timings"]
    breakdown = report["timings"][-1]["breakdown"]
    assert len(breakdown) == report["timings"][-1]["launches"] and all(r["label"] for r in breakdown)
    assert "| batch | npshuffle-cuda ms |" in out
    assert "GPU time by kernel kind" in out
