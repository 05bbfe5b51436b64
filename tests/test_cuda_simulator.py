"""The CUDA backend on numba's CUDA simulator, and its errors where no GPU can be used.

``NUMBA_ENABLE_CUDASIM=1`` only works if it is set before numba is first imported, and this pytest
process imports numba elsewhere, so the simulated runs happen in a child process:
``benchmarks/gpu_check.py --simulate``, the very script that checks a real GPU, on tiny sizes
(C <= 16, H, W <= 8 for the kernels; V1 g2 and V2 networks in both dialects on 2 images of 32x32).
It writes every result to a JSON report, which the tests below read, one test per group, each
listing the checks that failed and why. The simulator runs a Python thread per CUDA thread, so
the child takes about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
TIMEOUT = 600


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """(completed process, JSON report) of ``gpu_check.py --simulate``."""
    report = tmp_path_factory.mktemp("gpu_check") / "report.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--simulate", "--json", str(report), "--timeout", str(TIMEOUT - 30)],
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if not report.exists():
        pytest.fail(f"gpu_check.py --simulate wrote no report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc, json.loads(report.read_text())


def assert_group_passed(report: dict, group: str, at_least: int) -> None:
    checks = [c for c in report["checks"] if c["group"] == group]
    assert len(checks) >= at_least, f"only {len(checks)} {group} checks ran: {[c['name'] for c in checks]}"
    failed = [c for c in checks if not c["ok"]]
    assert not failed, "\n".join(
        f"{c['name']}: relative error {c['error']}\n{c['detail']}" for c in failed
    )


def test_every_kernel_matches_its_reference_twin(simulated):
    """conv2d (stem, grouped), depthwise s1/s2, pointwise (dense, grouped), max/avg pool, global
    pool, linear: each against kernels.reference on the same random input."""
    assert_group_passed(simulated[1], "kernels", at_least=12)


def test_fused_split_concat_shuffle_epilogues_match_the_reference(simulated):
    """The 1x1 conv's mapped loads and stores = reference split / concat / channel_shuffle / residual."""
    assert_group_passed(simulated[1], "fused", at_least=10)


def test_tiny_networks_match_the_numpy_backend(simulated):
    """V2 (halves + shuffle / interleaved) and V1 g2 (torchvision / megvii shuffle), batch 2, first
    and second call; a call makes one host->device copy (the input, in chunks of its pinned staging
    buffer) and one device->host copy (the logits); chunked, threaded staging = a pageable copy."""
    assert_group_passed(simulated[1], "models", at_least=6)


def test_gpu_check_script_runs_end_to_end(simulated):
    proc, report = simulated
    assert proc.returncode == 0 and report["ok"], proc.stdout + proc.stderr
    assert [row["batch"] for row in report["timings"]] == [1, 2]
    assert "| batch | npshuffle-cuda ms |" in proc.stdout
    assert all(row["torch_rel_diff"] <= 1e-4 for row in report["timings"]), report["timings"]
    # the per-kernel breakdown ran and labelled every launch of the last batch
    breakdown = report["timings"][-1]["breakdown"]
    assert len(breakdown) == report["timings"][-1]["launches"]
    assert "GPU time by kernel kind" in proc.stdout


def _backend_error_without_gpu(prelude: str = "") -> str:
    """What get_backend('cuda') says in a fresh process without the simulator."""
    code = (
        prelude
        + "from npshuffle.backends import BackendError, get_backend\n"
        + "try:\n    get_backend('cuda')\nexcept BackendError as exc:\n    print('BackendError:', exc)\n"
        + "else:\n    print('GPU AVAILABLE')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_cuda_backend_without_a_gpu_raises_backend_error():
    out = _backend_error_without_gpu()
    if "GPU AVAILABLE" in out:
        pytest.skip("this machine has a usable CUDA GPU")
    assert "BackendError: no CUDA GPU found" in out, out


def test_cuda_backend_without_numba_cuda_says_how_to_install_it():
    out = _backend_error_without_gpu("import sys\nsys.modules['numba.cuda'] = None  # as if not installed\n")
    assert "BackendError: numba-cuda is not installed: pip install npshuffle[gpu]" in out, out
