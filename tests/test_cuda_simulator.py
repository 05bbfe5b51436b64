"""The CUDA tests (``tests/cuda``) on numba's CUDA simulator, and the CUDA backend's errors where no
GPU can be used.

``NUMBA_ENABLE_CUDASIM=1`` only works if it is set before numba is first imported, and this pytest
process imports numba elsewhere, so in a normal run ``tests/cuda`` is collected but skipped (see
``tests/cuda/conftest.py``) and the test below runs it in child processes that have the variable
set: ``python -m pytest tests/cuda`` with ``NUMBA_ENABLE_CUDASIM=1``. It fails with their output
if any of them fails. The simulator runs a Python thread per CUDA thread on one core, so the
children split the tests between them (``NPSHUFFLE_CUDA_SHARD=i/n``, one per core, up to
``SHARDS``) and run side by side: about 30 s on two cores. On a machine with a GPU, a plain
``pytest`` also runs ``tests/cuda`` in this process, on the device.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

TIMEOUT = 600  # seconds, for all the children together
SHARDS = 2  # at most: more children than cores only share the cores


def run_cuda_tests_simulated(shards: int) -> list[tuple[str, int, str]]:
    """(shard, exit status, output) of ``pytest tests/cuda`` in ``shards`` simulated children at once."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "NPSHUFFLE_CUDA_REQUIRED": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda"]
    children = []
    for index in range(shards):
        shard = f"{index}/{shards}"
        child = subprocess.Popen(command, env={**env, "NPSHUFFLE_CUDA_SHARD": shard}, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        children.append((shard, child))
    deadline = time.monotonic() + TIMEOUT
    results = []
    try:
        for shard, child in children:
            try:
                out, _ = child.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                out, _ = child.communicate()
                out += f"\n[killed after {TIMEOUT} s]"
            results.append((shard, child.returncode, out))
    finally:
        for _, child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return results


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                    reason="this process is simulated: tests/cuda runs in it directly")
def test_cuda_tests_pass_on_the_simulator():
    shards = max(1, min(SHARDS, os.cpu_count() or 1))
    results = run_cuda_tests_simulated(shards)
    report = "\n\n".join(f"---- pytest tests/cuda, shard {shard} (exit {status}) ----\n{out}"
                         for shard, status, out in results)
    assert all(status == 0 for _, status, _ in results), report
    passed = sum(int(m) for _, _, out in results for m in re.findall(r"(\d+) passed", out))
    assert passed >= 40, f"only {passed} CUDA tests passed:\n{report}"


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
