"""Run hostile checkpoints in a child process (tests/hostile_worker.py) under memory and time limits.

Anything that could crash, hang or eat memory on a regression is loaded or converted by the child,
with an address-space cap and a time limit, so it fails the test instead of the machine.
:func:`assert_refused_cleanly` checks what the child reports.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

MESSAGE_LIMIT = 500  # characters an error message may have
WORKER_MEMORY_MB = 1024  # the child's address-space cap (it needs ~170 MB to start)
PEAK_RSS_LIMIT_MB = 400  # what no hostile file may make it use
TIMEOUT_S = 30  # per file; a good small checkpoint converts in well under a second


# --------------------------------------------------------------------------
# the child process
# --------------------------------------------------------------------------


class Worker:
    """tests/hostile_worker.py, restarted after a crash, a time-out or a request that used too much memory."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return subprocess.Popen([sys.executable, "-m", "tests.hostile_worker", str(WORKER_MEMORY_MB)], cwd=REPO,
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def ask(self, mode: str, checkpoint: Path, output: Path | None = None, classes: Path | None = None) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        request = {"mode": mode, "checkpoint": str(checkpoint), "output": str(output), "classes": classes}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            return {"outcome": "timed out" if not ready else "crashed"}
        result = json.loads(line)
        if result["peak_rss_mb"] > PEAK_RSS_LIMIT_MB:
            self.stop()  # the next request starts from a fresh process
        return result


def worker_for_module() -> Iterator[Worker]:
    """The body of a test module's ``worker`` fixture: one child for the module, stopped at its end."""
    child = Worker()
    yield child
    child.stop()


def assert_refused_cleanly(result: dict, match: str | None = None) -> None:
    """A CheckpointError/ConversionError with a short one-line message, in bounded time and memory."""
    assert result["outcome"] == "refused", result
    assert result["length"] < MESSAGE_LIMIT and "\n" not in result["message"], result
    assert "MemoryError" not in result["message"], result
    assert result["peak_rss_mb"] < PEAK_RSS_LIMIT_MB, result
    if match is not None:
        assert match in result["message"], result
