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
   ``--threads`` threads, in a fresh process without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which
   would pin OpenBLAS to its AVX2 kernel), and states the CPU's arithmetic peak beside it;

prints a markdown table with every time's ratio to ONNX Runtime, a table of the speed-up over
torch eager with the useful GFLOP/s that 4x torch eager would need as a share of that ceiling,
checks the issue's bars, and
writes the whole report to ``--out``. ``--pause GLOB`` sends SIGSTOP to the processes whose pids
are in the files matching GLOB (e.g. a background training run), and to their children, and
SIGCONT when done.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its helpers beside it, however it is run
from bench_common import (  # noqa: E402
    MODELS,
    fmt_ms,
    interleaved,
    onnx_bytes,
    paused_processes,
    peak_memory,
    predict_timings,
    spec_for,
    versions,
)
from sgemm_ceiling import arithmetic_peak, ceiling_and_kernel  # noqa: E402

RUNTIMES = ("numba", "numpy", "torch", "onnxruntime")
LABELS = {"numba": "npshuffle-numba", "numpy": "npshuffle-numpy", "torch": "torch eager", "onnxruntime": "ONNX Runtime"}


# --------------------------------------------------------------------------------------------------
# the four runtimes for one model


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
        onnx = onnx_bytes(net)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        # files for the memory probes (fresh processes)
        slug = name.replace(" ", "_").replace(".", "_")
        self.files = {
            "npz": workdir / f"{slug}.npz",
            "onnx": workdir / f"{slug}.onnx",
            "pt": workdir / f"{slug}.pt",
        }
        save_model_file(self.files["npz"], converted.spec, converted.dialect, converted.weights)
        self.files["onnx"].write_bytes(onnx)
        torch.save(net.state_dict(), self.files["pt"])

    def _torch(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(x)).numpy()

    def _ort(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": x})[0]


def agreement(c: Contestants, x: np.ndarray) -> dict[str, float]:
    """max |logits - torch's| / max |torch's logits|, per runtime."""
    expected = c.run["torch"](x)
    scale = float(np.abs(expected).max())
    return {name: float(np.abs(run(x) - expected).max()) / scale for name, run in c.run.items() if name != "torch"}


# --------------------------------------------------------------------------------------------------
# the run


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

    with paused_processes(args.pause) as paused:
        report = run_benchmark(args, paused)
    Path(args.out).write_text(report)
    print(f"\nwritten to {args.out}")
    return 0


def run_benchmark(args, paused: list[int]) -> str:
    report = "\n".join(report_lines(args, paused, measure(args)))
    print(report)
    return report


@dataclass
class Measurements:
    """What one run measured."""

    results: dict  # (model, batch) -> {runtime: median seconds per call}
    agree: dict  # model -> {runtime: max |logit difference| / max |logit| against torch eager}
    memory: dict  # model -> {runtime: peak_memory(...)}; empty with --no-memory
    macs: dict  # model -> multiply-adds per image
    predict: dict  # predict_timings(...)
    ceiling: float  # the SGEMM ceiling, GFLOP/s
    ceiling_kernel: str  # the OpenBLAS kernel that measured it

    def gflops(self, key, runtime):
        """Useful GFLOP/s of ``runtime`` on row ``key`` (model, batch): 2 x multiply-adds x images/s."""
        return 2 * self.macs[key[0]] * key[1] / self.results[key][runtime] / 1e9


def measure(args) -> Measurements:
    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(args.seed)
    x1 = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    x32 = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
    results, agree, memory, macs = {}, {}, {}, {}
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
    ceiling, kernel = ceiling_and_kernel(args.threads)
    return Measurements(results, agree, memory, macs, predict, ceiling, kernel)


# --------------------------------------------------------------------------------------------------
# the report


def peak_note(threads: int, ceiling: float) -> str:
    """The CPU's arithmetic peak for scale (``sgemm_ceiling.arithmetic_peak``), as a parenthesis."""
    peak, ghz, lanes = arithmetic_peak(threads)
    if not peak:
        return ""
    above = ": the cores run above the clock the kernel reports" if ceiling > peak else ""
    return (f" (the arithmetic peak, {threads} cores x 2 FMA units x {lanes} lanes x 2 flops at the {ghz:.2f} GHz "
            f"the kernel reports, is {peak:.0f} GFLOP/s: the SGEMM reaches {ceiling / peak:.0%} of it{above})")


def report_lines(args, paused: list[int], measured: Measurements) -> list[str]:
    results, agree, memory, predict = measured.results, measured.agree, measured.memory, measured.predict
    ceiling, gflops = measured.ceiling, measured.gflops
    command = "python benchmarks/bench_cpu.py " + " ".join(sys.argv[1:])
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
              f"ceiling, measured in this run (NumPy's BLAS, 2048x2048 float32, {args.threads} threads, OpenBLAS "
              f"kernel {measured.ceiling_kernel}, without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE): "
              f"**{ceiling:.0f} GFLOP/s**{peak_note(args.threads, ceiling)}. "
              "No runtime computing every multiply-add in float32 can beat the "
              "ceiling, and a whole network (depthwise convs, stem, pools, per-layer overheads) stays below it.",
              "", "| model | batch | npshuffle-numba / torch eager | npshuffle-numba GFLOP/s | 4x torch eager needs | "
              "share of the ceiling |", "|---|---:|---:|---:|---:|---:|"]
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
    return lines + ["", "Bars (issue 15; each with the GFLOP/s it needs as a share of this run's SGEMM ceiling):", "",
                    *speed_bar_lines(measured), "", "Bars (issue 4):", "", *bar_lines(measured), ""]


# issue 15's bars: (runtime, lower bound on npshuffle-numba's speed as a multiple of that runtime's)
TORCH_SPEEDUP = {1: 4.0, 32: 3.5}
ORT_SPEEDUP = {("V2 x1.0", 1): 2.0, ("V2 x2.0", 32): 1.5}  # batch 1: latency <= 0.5x ONNX Runtime's
ORT_SPEEDUP_BATCH32 = 2.0


def speed_bar_lines(measured: Measurements) -> list[str]:
    """Issue 15's speed bars, one line per row and bar: met ([x]) or not, the measured speed-up, and
    what the bar needs in useful GFLOP/s and as a share of the SGEMM ceiling (above 100 %: out of
    reach of any runtime computing every multiply-add in float32 on this machine)."""
    results, ceiling, gflops = measured.results, measured.ceiling, measured.gflops
    lines = []
    for key in sorted(results):
        name, batch = key
        targets = [("torch eager", "torch", TORCH_SPEEDUP[batch])]
        if key in ORT_SPEEDUP or batch == 32:
            targets.append(("ONNX Runtime", "onnxruntime", ORT_SPEEDUP.get(key, ORT_SPEEDUP_BATCH32)))
        for label, runtime, factor in targets:
            speedup = results[key][runtime] / results[key]["numba"]
            needs = factor * gflops(key, runtime)
            bar = f">= {factor:g}x {label}" if batch == 32 or runtime == "torch" else \
                f"latency <= {1 / factor:g}x {label}'s (a {factor:g}x speed-up)"
            lines.append(f"- [{'x' if speedup >= factor else ' '}] {name} batch {batch} {bar}: "
                         f"{speedup:.2f}x ({gflops(key, 'numba'):.0f} GFLOP/s; {factor:g}x needs {needs:.0f} "
                         f"GFLOP/s, {needs / ceiling:.0%} of the ceiling)")
    return lines


def bar_lines(measured: Measurements) -> list[str]:
    """The issue's bars, each checked ([x]) or not, with the number behind it."""
    results, predict, ceiling, gflops = measured.results, measured.predict, measured.ceiling, measured.gflops
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
    return bars


if __name__ == "__main__":
    sys.exit(main())
