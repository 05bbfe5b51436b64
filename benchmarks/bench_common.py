"""What the CPU benchmarks share: the models, the interleaved timing loop, fresh-process probes, the machine.

* :data:`MODELS` and :func:`spec_for`: the architectures ``bench_cpu.py`` compares, and
  :func:`exportable`, a copy of a torch oracle network that ONNX can export;
* :func:`interleaved_samples` (and its median, :func:`interleaved`): every runtime timed in
  rounds of blocks of calls, each block after a pause, so one runtime's spinning worker threads
  never count against the next and every runtime sees the same drift of a shared machine;
* :func:`peak_memory` and :func:`predict_timings`: measurements in fresh processes
  (:func:`child_env` is their environment);
* :func:`versions` (the machine and the libraries, for a report's header), :func:`fmt_ms`,
  :func:`paused_processes`, which stops a background job (e.g. a training run) while timing, and
  :func:`publish`, which prints a report and writes it to its file atomically.

Importing this module puts the repository on ``sys.path``, so a script run from ``benchmarks/``
imports ``npshuffle`` without installing it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = {  # name -> (version, width, groups)
    "V2 x0.5": (2, "0.5x", None),
    "V2 x1.0": (2, "1.0x", None),
    "V2 x2.0": (2, "2.0x", None),
    "V1 g3 0.5x": (1, "0.5x", 3),
}


def spec_for(name: str, classes: int = 1000):
    from npshuffle.archs import v1_spec, v2_spec

    version, width, groups = MODELS[name]
    return v2_spec(width, classes) if version == 2 else v1_spec(groups, width, classes)


def exportable(net):
    """A copy of ``net`` that ONNX can export: ``nn.ChannelShuffle`` (V1) has no ONNX symbol, so
    it becomes the same reshape-transpose-reshape written out."""
    import copy

    from torch import nn

    from npshuffle.training.torch_ref import shuffle_torchvision

    class Shuffle(nn.Module):
        def __init__(self, groups: int):
            super().__init__()
            self.groups = groups

        def forward(self, x):
            return shuffle_torchvision(x, self.groups)

    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ChannelShuffle):
                setattr(module, name, Shuffle(child.groups))
    return net


def onnx_bytes(net) -> bytes:
    """``net`` (a torch oracle) exported to ONNX in memory, input (N, 3, 224, 224) with a dynamic
    batch, through torch's legacy exporter (its deprecation warning silenced)."""
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(exportable(net), torch.zeros(1, 3, 224, 224), buffer, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# timing


def interleaved(runs: dict, x: np.ndarray, calls: int, per_block: int, lead_s: float = 0.1,
                settle_s: float = 0.2) -> dict[str, float]:
    """Median seconds per call of each runtime (see :func:`interleaved_samples`)."""
    samples = interleaved_samples(runs, x, calls, per_block, lead_s, settle_s)
    return {name: statistics.median(t) for name, t in samples.items()}


def interleaved_samples(runs: dict, x: np.ndarray, calls: int, per_block: int, lead_s: float = 0.1,
                        settle_s: float = 0.2) -> dict[str, list[float]]:
    """Every call's seconds, per runtime, timed in interleaved blocks of ``per_block`` calls, each
    block preceded by ``settle_s`` seconds of sleep and ``lead_s`` seconds (at least one call) of
    untimed calls."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    rounds = -(-calls // per_block)
    for r in range(rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
            run = runs[name]
            time.sleep(settle_s)  # the previous runtime's spinning threads go to sleep
            start = time.perf_counter()
            run(x)
            while time.perf_counter() - start < lead_s:
                run(x)
            for _ in range(per_block):
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
    return times


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


# --------------------------------------------------------------------------------------------------
# measurements in fresh processes


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


MEMORY_PROBE = r"""
import json, resource, sys, time
import numpy as np
runtime, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
x32 = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
if runtime in ("numba", "numpy"):
    from npshuffle.model import Model
    run = Model.load(path, backend=runtime).forward
elif runtime == "onnxruntime":
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    run = lambda x: s.run(None, {"input": x})[0]
else:
    import torch
    from npshuffle.archs import spec_from_dict
    from npshuffle.training.torch_ref import build_torch_model
    torch.set_num_threads(threads)
    spec = spec_from_dict(json.loads(sys.argv[4]))
    net = build_torch_model(spec, "torchvision"); net.load_state_dict(torch.load(path)); net.eval()
    def run(x):
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()
def peak_kib():  # VmHWM: this process's peak RSS (ru_maxrss would include the parent's, kept across exec)
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("VmHWM")))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = peak_kib()
run(x32[:1]); run(x32)
print(json.dumps({"base_kib": base, "peak_kib": peak_kib()}))
"""


def peak_memory(c, runtime: str, threads: int) -> dict | None:
    """Peak RSS of a fresh process that loads ``runtime`` and runs batches of 1 and 32:
    ``{"base_kib", "peak_kib"}``, or None if the probe failed. ``c`` is a ``bench_cpu.Contestants``
    (its model ``name`` and its saved ``files``)."""
    from npshuffle.archs import spec_to_dict

    path = {"numba": "npz", "numpy": "npz", "onnxruntime": "onnx", "torch": "pt"}[runtime]
    args = [sys.executable, "-c", MEMORY_PROBE, runtime, str(c.files[path]), str(threads),
            json.dumps(spec_to_dict(spec_for(c.name)))]
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=child_env())
    if out.returncode != 0:
        print(f"  memory probe {runtime} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def predict_timings(photo: str) -> dict:
    """Wall time of fresh ``npshuffle predict`` processes: empty Numba cache, then warm."""
    command = [sys.executable, "-m", "npshuffle", "predict", photo, "--device", "numba"]
    result = {"command": " ".join(["python", *command[1:]])}
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold", "warm", "warm again"):
            start = time.perf_counter()
            env = child_env(NUMBA_CACHE_DIR=cache)
            out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
            wall = time.perf_counter() - start
            if out.returncode != 0:
                result["error"] = (out.stderr.strip().splitlines() or ["?"])[-1]
                return result
            result[label] = wall
            result[label + " stderr"] = out.stderr.strip()
    return result


# --------------------------------------------------------------------------------------------------
# the machine


def versions() -> str:
    import numba
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = "AVX-512" if "avx512f" in f.read() else ""
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores {flags}; Python {platform.python_version()}, NumPy {np.__version__}, "
            f"Numba {numba.__version__} (threading layer {numba.threading_layer()}), torch {torch.__version__}, "
            f"ONNX Runtime {onnxruntime.__version__}")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; e.g. a training run's data-loader workers)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(Path(stat).parent.name))
    return found


@contextlib.contextmanager
def paused_processes(pattern: str | None) -> Iterator[list[int]]:
    """SIGSTOP the processes whose pids are in the files matching ``pattern`` (a glob), and their
    children, for the duration of the block; yields the stopped pids and SIGCONTs them at the end."""
    paused = []
    if pattern:
        for pid_file in glob.glob(pattern):
            try:
                pid = int(Path(pid_file).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            for p in [pid, *children(pid)]:
                try:
                    os.kill(p, signal.SIGSTOP)
                    paused.append(p)
                except OSError:
                    pass
    try:
        yield paused
    finally:
        for pid in paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass


def publish(report: str, out: str | os.PathLike | None) -> None:
    """Print a benchmark's markdown report and, with ``out``, write it there atomically (a temporary
    file beside it, then renamed over it: an interrupted run never leaves half a report)."""
    print(report)
    if out:
        path = Path(out)
        with tempfile.NamedTemporaryFile("w", dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False, encoding="utf-8") as tmp:
            tmp.write(report)
        os.replace(tmp.name, path)
