"""npshuffle on the CPU, side by side with torch eager and ONNX Runtime, in one run.

    pip install onnx onnxruntime              # the `bench` extra (torch too)
    python benchmarks/bench_cpu.py --out benchmarks/results_cpu.md [--pause 'runs/*.pid']

For each model (ShuffleNet V2 x0.5 / x1.0 / x2.0 and V1 g3 0.5x, torchvision wiring, 224x224,
float32), the script

1. builds the torch oracle (``npshuffle.training.torch_ref``) with random weights and random BN statistics,
   converts its state_dict for npshuffle (``weights_convert``) and exports it to ONNX, so every
   runtime runs the *same* network;
2. checks that the four runtimes agree (max |difference| / max |logit| against torch);
3. times npshuffle-numba, npshuffle-numpy (the reference backend), torch eager and ONNX Runtime
   (all graph optimisations, ``--threads`` intra-op threads) *interleaved*: rounds of a block of
   calls of each runtime in turn (rotating who goes first), each block preceded by 0.2 s of idle
   time and 0.1 s of untimed calls, so that the previous runtime's worker threads, which keep
   spinning after their last call (ONNX Runtime's for ~50 ms, the NumPy reference's BLAS threads
   for longer), never count against the next. (Without the idle time, a block after the NumPy
   reference's found both cores busy: for V2 x2.0 at batch 1 that made ONNX Runtime 15.9 ms
   instead of 9.3, and npshuffle-numba's batch-1 schedule fall back to one thread, 16.2 ms instead
   of 8.7.) Batch 1 is the
   median of 200 calls in blocks of 10, batch 32 the median of 10 calls in blocks of 2 (the
   NumPy reference is timed at batch 1 only, unless ``--numpy-batch32``). Many small blocks,
   because on a shared (virtual) machine the cores' speed drifts by tens of percent over
   minutes, and every runtime should see the same drift;
4. measures each runtime's peak memory (peak RSS of a fresh process that loads it and runs a
   batch of 1, then one of 32), unless ``--no-memory``;
5. times ``python -m npshuffle predict PHOTO --device numba`` end to end in fresh processes:
   first with an empty Numba cache (compiling), then again (cache warm);
6. measures the machine's SGEMM ceiling (``sgemm_ceiling.py``: NumPy's BLAS, 2048x2048 float32,
   ``--threads`` threads, in a fresh process);

prints a markdown table with every time's ratio to ONNX Runtime, a table of the speed-up over
torch eager with the useful GFLOP/s that 4x torch eager would need as a share of that ceiling,
checks the issue's bars, and
writes the whole report to ``--out``. ``--pause GLOB`` sends SIGSTOP to the processes whose pids
are in the files matching GLOB (e.g. a background training run), and to their children, and
SIGCONT when done.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from sgemm_ceiling import ceiling as sgemm_ceiling
except ImportError:  # imported from elsewhere than benchmarks/
    from benchmarks.sgemm_ceiling import ceiling as sgemm_ceiling

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = {  # name -> (version, width, groups)
    "V2 x0.5": (2, "0.5x", None),
    "V2 x1.0": (2, "1.0x", None),
    "V2 x2.0": (2, "2.0x", None),
    "V1 g3 0.5x": (1, "0.5x", 3),
}
RUNTIMES = ("numba", "numpy", "torch", "onnxruntime")
LABELS = {"numba": "npshuffle-numba", "numpy": "npshuffle-numpy", "torch": "torch eager", "onnxruntime": "ONNX Runtime"}


def spec_for(name: str, classes: int = 1000):
    from npshuffle.archs import v1_spec, v2_spec

    version, width, groups = MODELS[name]
    return v2_spec(width, classes) if version == 2 else v1_spec(groups, width, classes)


# --------------------------------------------------------------------------------------------------
# building the four runtimes for one model


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


class Contestants:
    """One random-weight network, as the four runtimes run it."""

    def __init__(self, name: str, threads: int, seed: int, workdir: Path):
        import onnxruntime as ort
        import torch

        from npshuffle.archs import build_plan
        from npshuffle.backend_numba import NumbaBackend
        from npshuffle.backends import NumpyBackend
        from npshuffle.model_file import save_model_file
        from npshuffle.training.torch_ref import build_torch_model, randomize_
        from weights_convert.convert import convert_state_dict

        self.name = name
        spec = spec_for(name)
        net = randomize_(build_torch_model(spec, "torchvision"), torch.Generator().manual_seed(seed))
        self.net = net.eval()
        converted = convert_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
        plan = build_plan(converted.spec, converted.dialect)
        self.plan = plan
        self.macs = plan.macs(224)
        self.run = {
            "numba": NumbaBackend().prepare(plan, converted.weights),
            "numpy": NumpyBackend().prepare(plan, converted.weights),
            "torch": self._torch,
            "onnxruntime": self._ort,
        }
        buffer = io.BytesIO()
        torch.onnx.export(exportable(net), torch.zeros(1, 3, 224, 224), buffer, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        # files for the memory probes (fresh processes)
        slug = name.replace(" ", "_").replace(".", "_")
        self.files = {
            "npz": workdir / f"{slug}.npz",
            "onnx": workdir / f"{slug}.onnx",
            "pt": workdir / f"{slug}.pt",
        }
        save_model_file(self.files["npz"], converted.spec, converted.dialect, converted.weights)
        self.files["onnx"].write_bytes(buffer.getvalue())
        torch.save(net.state_dict(), self.files["pt"])

    def _torch(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(x)).numpy()

    def _ort(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": x})[0]


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


def agreement(c: Contestants, x: np.ndarray) -> dict[str, float]:
    """max |logits - torch's| / max |torch's logits|, per runtime."""
    expected = c.run["torch"](x)
    scale = float(np.abs(expected).max())
    return {name: float(np.abs(run(x) - expected).max()) / scale for name, run in c.run.items() if name != "torch"}


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


def peak_memory(c: Contestants, runtime: str, threads: int) -> dict | None:
    from npshuffle.archs import spec_to_dict

    path = {"numba": "npz", "numpy": "npz", "onnxruntime": "onnx", "torch": "pt"}[runtime]
    args = [sys.executable, "-c", MEMORY_PROBE, runtime, str(c.files[path]), str(threads),
            json.dumps(spec_to_dict(spec_for(c.name)))]
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=child_env())
    if out.returncode != 0:
        print(f"  memory probe {runtime} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


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
# the report


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


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", required=True, help="markdown file to write the report to")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL",
                        help=f"models to run (default: all of {', '.join(MODELS)})")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every runtime (default: all)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per runtime at batch 1 (default 200)")
    parser.add_argument("--calls32", type=int, default=10, help="timed calls per runtime at batch 32 (default 10)")
    parser.add_argument("--numpy-batch32", action="store_true", help="also time the NumPy reference at batch 32 (slow)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--photo", default="examples/daisy.jpg", help="photo for the `npshuffle predict` timing")
    parser.add_argument("--pause", metavar="GLOB", help="SIGSTOP the pids in these files while benchmarking")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    paused = []
    if args.pause:
        for pid_file in glob.glob(args.pause):
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
        report = run_benchmark(args, paused)
    finally:
        for pid in paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
    Path(args.out).write_text(report)
    print(f"\nwritten to {args.out}")
    return 0


def run_benchmark(args, paused: list[int]) -> str:
    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(args.seed)
    x1 = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    x32 = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
    results, agree, memory, macs = {}, {}, {}, {}
    command = "python benchmarks/bench_cpu.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            print(f"{name}: building, exporting, checking...", file=sys.stderr, flush=True)
            c = Contestants(name, args.threads, args.seed, Path(workdir))
            agree[name] = agreement(c, x1)
            macs[name] = c.macs
            c.run["numba"](x32[:2])  # compile the batch path too
            print(f"{name}: timing batch 1...", file=sys.stderr, flush=True)
            results[(name, 1)] = interleaved(c.run, x1, args.calls, per_block=10)
            runs32 = {k: v for k, v in c.run.items() if k != "numpy" or args.numpy_batch32}
            print(f"{name}: timing batch 32...", file=sys.stderr, flush=True)
            results[(name, 32)] = interleaved(runs32, x32, args.calls32, per_block=2)
            if not args.no_memory:
                print(f"{name}: peak memory...", file=sys.stderr, flush=True)
                memory[name] = {r: peak_memory(c, r, args.threads) for r in RUNTIMES}
            print(f"{name}: {', '.join(f'{r} {fmt_ms(t)}' for r, t in results[(name, 1)].items())}",
                  file=sys.stderr, flush=True)
            del c
    print("npshuffle predict: cold and warm cache...", file=sys.stderr, flush=True)
    predict = predict_timings(args.photo)
    print("SGEMM ceiling...", file=sys.stderr, flush=True)
    ceiling = sgemm_ceiling(args.threads)

    lines = [
        "# npshuffle CPU benchmark",
        "",
        f"Machine: {versions()}.  ",
        f"Threads: {args.threads} for every runtime. Input 224x224 float32, random weights and BN statistics, "
        "torchvision wiring; ONNX Runtime with all graph optimisations.  ",
        f"Command: `{command}`" + (f" (paused pids {paused} meanwhile)" if paused else ""),
        "",
        f"Batch 1: median latency of >= {args.calls} calls; batch 32: median throughput of >= {args.calls32} calls; "
        "(ratio) = that runtime / ONNX Runtime, for latency lower is better, for throughput higher is better."
        ,
        "",
        "| model | batch | " + " | ".join(LABELS[r] for r in RUNTIMES) + " |",
        "|---|---:|" + "---:|" * len(RUNTIMES),
    ]
    for name in args.models:
        for batch in (1, 32):
            row = results[(name, batch)]
            ort_t = row["onnxruntime"]
            cells = []
            for r in RUNTIMES:
                if r not in row:
                    cells.append("—")
                elif batch == 1:
                    cells.append(f"{fmt_ms(row[r])} ({row[r] / ort_t:.2f}x)")
                else:
                    cells.append(f"{32 / row[r]:.0f} img/s ({ort_t / row[r]:.2f}x)")
            lines.append(f"| {name} | {batch} | " + " | ".join(cells) + " |")
    lines += ["", f"Speed-up over torch eager, and what 4x would take: useful GFLOP/s (2 x multiply-adds x images/s) "
              f"of npshuffle-numba, and of a runtime 4x faster than torch eager; against this machine's SGEMM "
              f"ceiling, measured in this run (NumPy's BLAS, 2048x2048 float32, {args.threads} threads): "
              f"**{ceiling:.0f} GFLOP/s**. No runtime computing every multiply-add in float32 can beat the "
              "ceiling, and a whole network (depthwise convs, stem, pools, per-layer overheads) stays below it.",
              "", "| model | batch | npshuffle-numba / torch eager | npshuffle-numba GFLOP/s | 4x torch eager needs | "
              "share of the ceiling |", "|---|---:|---:|---:|---:|---:|"]
    def gflops(key, runtime):  # useful GFLOP/s of one runtime on one row
        return 2 * macs[key[0]] * key[1] / results[key][runtime] / 1e9

    for name in args.models:
        for batch in (1, 32):
            key, row = (name, batch), results[(name, batch)]
            lines.append(f"| {name} | {batch} | {row['torch'] / row['numba']:.1f}x | {gflops(key, 'numba'):.0f} | "
                         f"{4 * gflops(key, 'torch'):.0f} GFLOP/s | {4 * gflops(key, 'torch') / ceiling:.0%} |")
    lines += ["", "Agreement with torch eager (max |logit difference| / max |logit|, batch 1):", "",
              "| model | " + " | ".join(LABELS[r] for r in RUNTIMES if r != "torch") + " |",
              "|---|" + "---:|" * (len(RUNTIMES) - 1)]
    for name in args.models:
        lines.append(f"| {name} | " + " | ".join(f"{agree[name][r]:.1e}" for r in RUNTIMES if r != "torch") + " |")
    if memory:
        lines += ["", "Peak memory (peak RSS of a fresh process that loads the runtime and runs batches of 1 and 32; "
                  "in parentheses: after the imports, before loading the model):", "",
                  "| model | " + " | ".join(LABELS[r] for r in RUNTIMES) + " |", "|---|" + "---:|" * len(RUNTIMES)]
        for name in args.models:
            cells = []
            for r in RUNTIMES:
                m = memory[name].get(r)
                cells.append("?" if m is None else f"{m['peak_kib'] / 1024:.0f} MiB ({m['base_kib'] / 1024:.0f})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"`{predict['command']}` end to end, fresh processes (bundled default model):", ""]
    if "error" in predict:
        lines.append(f"- skipped: the command failed ({predict['error']})")
    else:
        notice = predict["cold stderr"].replace("\n", " / ") or "(nothing)"
        lines += [f"- empty Numba cache (compiles): {predict['cold']:.2f} s wall; stderr: {notice}",
                  f"- warm cache: {predict['warm']:.2f} s, again {predict['warm again']:.2f} s"]

    bars = []

    def bar(text: str, ok: bool, detail: str) -> None:
        bars.append(f"- [{'x' if ok else ' '}] {text}: {detail}")

    for name in ("V2 x1.0", "V2 x0.5"):
        if (name, 1) in results:
            row = results[(name, 1)]
            ratio = row["numba"] / row["onnxruntime"]
            bar(f"{name} batch 1 latency <= 1.0x ONNX Runtime", ratio <= 1.0, f"{ratio:.2f}x")
    if ("V2 x1.0", 32) in results:
        row = results[("V2 x1.0", 32)]
        ratio = row["onnxruntime"] / row["numba"]
        bar("V2 x1.0 batch 32 throughput >= 1.0x ONNX Runtime", ratio >= 1.0, f"{ratio:.2f}x")
    speedups = {key: row["torch"] / row["numba"] for key, row in results.items()}
    worst = min(speedups, key=speedups.get)
    short = sorted(key for key, ratio in speedups.items() if ratio < 4.0)
    bar(">= 4x faster than torch eager on every row", not short,
        f"lowest {speedups[worst]:.1f}x ({worst[0]}, batch {worst[1]})"
        + "".join(f"; {key[0]} batch {key[1]} at {speedups[key]:.1f}x (4x needs "
                  f"{4 * gflops(key, 'torch') / ceiling:.0%} of the SGEMM ceiling)" for key in short))
    if "warm" in predict:
        bar("second `npshuffle predict` process <= 1.5 s wall", predict["warm"] <= 1.5, f"{predict['warm']:.2f} s")
    lines += ["", "Bars (issue 4):", "", *bars, ""]
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    sys.exit(main())
