#!/usr/bin/env python3
"""npshuffle's CUDA backend on a real NVIDIA GPU: whole-model parity, then speed against torch eager.

    python3 benchmarks/gpu_check.py               # on a GPU machine: about a minute, < 5 min
    python3 benchmarks/gpu_check.py --simulate    # a dry run on numba's CUDA simulator (CPU), tiny model

Needs torch, numba (+ numba-cuda on a GPU), numpy and pillow; run from anywhere in a checkout, no
install needed (the checkout is put on sys.path). The kernels and the backend's behaviour (every
kernel against ``kernels.reference``, tiny networks, staging, graphs, copies) are tested by
``tests/cuda`` (``python -m pytest tests/cuda``: on the GPU where there is one, else on the
simulator via ``tests/test_cuda_simulator.py``; ``benchmarks/gpu_check.sh`` runs both). Steps:

1. whole networks with random weights (a torch model, ``randomize_``, then the converter, as a real
   checkpoint would go): ``backend="cuda"`` against the NumPy backend on the device, first and
   second call, within 1e-4 relative (max |diff| <= 1e-4 * max |logit|): ShuffleNet V2 x1.0 in
   both dialects, V1 g3 x1.0 (megvii), V1 g8 x0.5 (torchvision, 200x256 input);
2. ShuffleNet V2 x1.0 speed at batch 1, 64, 256: npshuffle-cuda against torch CUDA eager (fp32,
   cuDNN with cudnn.benchmark, TF32 off so both really compute in fp32). Each timed call starts from
   a NumPy batch in host memory and ends with the logits in host memory, for both: it includes the
   host->device copy of the input and the device->host copy of the logits. Warm-up calls first,
   then the median of several timed calls.

It prints one markdown table (on a GPU, a second one saying where the time goes: the input copy
alone by each route, the network alone as a CUDA graph and launch by launch, the host's time to
enqueue it, a whole call without graph and pinned staging; and, at the first and last batch, the
GPU time of each kernel timed alone, by kind and by layer shape), exits 0 when every parity
check passes and the logits agree with torch's (whatever the speed ratio), 1 otherwise;
``--json PATH`` also writes every result as JSON. A watchdog (``--timeout``, default 240 s; 0: none) dumps
the stack and exits if anything hangs. ``--simulate`` runs the same steps on the smallest V2 at
16x16, batches 1 and 2 (timings mean nothing): ``tests/cuda/test_gpu_check_script.py`` runs it so
that this script keeps working between the rare runs on a GPU.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4  # relative: max |got - want| <= TOLERANCE * max |want|


@dataclass
class Check:
    group: str  # "models"
    name: str
    error: float | None  # relative error, None when it raised
    ok: bool
    seconds: float
    detail: str = ""


def log(*parts) -> None:
    print(*parts, flush=True)


def relative_error(got, want) -> float:
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shape {got.shape} != expected {want.shape}")
    if not np.isfinite(got).all():
        return float("inf")
    scale = max(float(np.abs(want).max()), 1e-30)
    return float(np.abs(got - want).max()) / scale


def run_check(checks: list[Check], group: str, name: str, fn) -> None:
    """Run ``fn() -> (got, want)`` and record the relative error (or the exception)."""
    start = time.perf_counter()
    try:
        got, want = fn()
        error = relative_error(got, want)
        check = Check(group, name, error, error <= TOLERANCE, time.perf_counter() - start)
    except Exception as exc:  # report and go on: one broken kernel should not hide the others
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-2500:]
        check = Check(group, name, None, False, time.perf_counter() - start, detail)
    checks.append(check)
    status = "ok  " if check.ok else "FAIL"
    error = "raised" if check.error is None else f"{check.error:.2e}"
    log(f"  {status} {group:8s} {name:52s} rel.err {error:>9s}  ({check.seconds:.1f} s)")
    if check.detail:
        log("       " + check.detail.replace("\n", "\n       "))


# --------------------------------------------------------------------------------------------------
# 1. whole networks: backend="cuda" against the NumPy backend


def random_network(spec, dialect: str, seed: int):
    """(plan, folded weights, torch model) for a random-weight network, via the converter."""
    import torch

    from npshuffle.archs import build_plan
    from npshuffle.training.torch_ref import build_torch_model, randomize_
    from weights_convert.convert import convert_state_dict

    net = randomize_(build_torch_model(spec, dialect), torch.Generator().manual_seed(seed))
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    converted = convert_state_dict(state)
    return build_plan(converted.spec, converted.dialect), converted.weights, net


def model_specs(simulate: bool) -> list[tuple]:
    """(label, spec, dialect, input shape) of each whole-network check; the first is the one
    benchmarked: ShuffleNet V2 x1.0 on a GPU, the smallest V2 (one unit) with --simulate, where
    this script only proves that it runs (tests/cuda checks the backend on the simulator)."""
    from npshuffle.archs import V2Spec, v1_spec, v2_spec

    if simulate:
        smallest_v2 = V2Spec(stem_channels=4, stage_channels=(8,), head_channels=8, stage_repeats=(1,), num_classes=3)
        return [("one-unit V2", smallest_v2, "torchvision", (1, 3, 16, 16))]
    return [
        ("V2 x1.0", v2_spec("1.0x"), "torchvision", (2, 3, 224, 224)),
        ("V2 x1.0", v2_spec("1.0x"), "megvii", (2, 3, 224, 224)),
        ("V1 g3 x1.0", v1_spec(3, "1.0x"), "megvii", (2, 3, 224, 224)),
        ("V1 g8 x0.5", v1_spec(8, "0.5x"), "torchvision", (3, 3, 200, 256)),
    ]


def model_checks(checks: list[Check], simulate: bool, cuda_backend, info: dict) -> None:
    """Each network of :func:`model_specs` on ``backend="cuda"`` (first call: launch by launch, then
    a CUDA graph is captured; second call: the graph's replay) against the NumPy backend."""
    import numpy as np

    from npshuffle.backends import NumpyBackend

    graphs: dict = {}
    for i, (label, spec, dialect, shape) in enumerate(model_specs(simulate)):
        def compare(spec=spec, dialect=dialect, shape=shape, seed=i, label=label):
            plan, weights, _ = random_network(spec, dialect, seed)
            x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
            runner = cuda_backend.prepare(plan, weights)  # uploads the weights
            first = runner(x)  # launches one by one, then captures the graph (if any) and checks it
            got = runner(x)  # the steady state: the graph's replay where there is one
            ws = runner.workspaces[tuple(shape)]
            graphs[f"{label} {dialect}"] = "graph" if ws.graph is not None else f"launches ({ws.graph_error})"
            want = NumpyBackend().prepare(plan, weights)(x)
            return np.stack([first, got]), np.stack([want, want])
        run_check(checks, "models", f"{label} {dialect} {shape} vs NumPy backend (1st and 2nd call)", compare)
    info["graphs"] = graphs
    log("  CUDA graphs: " + "; ".join(f"{k}: {v}" for k, v in graphs.items()))


# --------------------------------------------------------------------------------------------------
# 2. speed


def timed(fn, warmup: int, repeats: int, sync=lambda: None):
    """(median milliseconds of ``repeats`` calls after ``warmup`` calls, the last result);
    ``sync()`` waits for the GPU after each call (a no-op where the call already waits)."""
    result = None
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), result


def diagnostics(cuda_backend, runner, plan, weights, x, net, device, numba_sync, torch_sync) -> dict:
    """Where a call's time goes, at one batch size (a real GPU only): the input copy by each route,
    the network alone (graph and launch by launch, and the host's time to enqueue either), and the
    whole call without graph or pinned staging (the previous design)."""
    import torch

    from npshuffle.backend_cuda import CudaRunner

    ws = runner.workspaces[x.shape]
    row = {}

    def pinned_copy(threads):
        saved, runner.copy_threads = runner.copy_threads, threads
        try:
            runner.copy_in(x, ws)
            ws.stream.synchronize()
        finally:
            runner.copy_threads = saved

    row["npshuffle_copy_in_ms"] = timed(lambda: ws.input.copy_to_device(x), 1, 5, numba_sync)[0]
    row["pinned_copy_in_1t_ms"] = timed(lambda: pinned_copy(1), 1, 5)[0]
    row["pinned_copy_in_ms"] = timed(lambda: pinned_copy(runner.copy_threads), 1, 5)[0]
    row["torch_copy_in_ms"] = timed(lambda: torch.from_numpy(x).to(device), 1, 5, torch_sync)[0]

    def network(graph: bool):
        if graph and ws.graph is not None:
            ws.graph.launch()
        else:
            for launch in ws.launches:
                launch()
        ws.stream.synchronize()

    row["npshuffle_gpu_ms"] = timed(lambda: network(True), 2, 10)[0]
    row["npshuffle_launches_ms"] = timed(lambda: network(False), 2, 10)[0]

    def enqueue(graph: bool):  # host time only: returns before the GPU is done
        start = time.perf_counter()
        network_start = ws.graph.launch if graph and ws.graph is not None else None
        if network_start is not None:
            network_start()
        else:
            for launch in ws.launches:
                launch()
        elapsed = time.perf_counter() - start
        ws.stream.synchronize()
        return elapsed

    row["enqueue_launches_ms"] = 1000 * statistics.median(enqueue(False) for _ in range(5))
    row["enqueue_launch_us"] = 1000 * row["enqueue_launches_ms"] / len(ws.launches)
    row["enqueue_graph_ms"] = 1000 * statistics.median(enqueue(True) for _ in range(5))
    x_gpu = torch.from_numpy(x).to(device)
    with torch.inference_mode():
        row["torch_gpu_ms"] = timed(lambda: net(x_gpu), 2, 10, torch_sync)[0]
    plain = CudaRunner(plan, weights, graphs=False, pinned=False)
    row["npshuffle_plain_ms"] = timed(lambda: plain(x), 2, 5)[0]
    return row


def kernel_breakdown(cuda, runner, ws, repeats: int, warmup: bool = True) -> list[dict]:
    """GPU time of each launch of one forward pass: each launch alone, ``repeats`` times back to
    back between two CUDA events (no launch writes a buffer it reads, so repeating one is
    harmless). Where graphs work, the repeats are one captured graph, so that launch overhead
    does not hide small kernels; otherwise they are plain launches. ``warmup``: run each once
    first, untimed (the simulator's timings mean nothing: no need)."""
    from kernels import cuda as kc

    rows = []
    for index, launch in enumerate(ws.launches):
        run = None
        if ws.graph is not None:
            try:
                run = kc.CudaGraph([launch] * repeats, ws.stream).launch
            except kc.GraphUnavailable:
                run = None
        if run is None:
            def run(launch=launch):
                for _ in range(repeats):
                    launch()
        if warmup:
            run()
        start, end = cuda.event(), cuda.event()
        start.record(ws.stream)
        run()
        end.record(ws.stream)
        end.synchronize()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the simulator: "timings are bogus"
            ms = start.elapsed_time(end) / repeats
        rows.append(dict(index=index, kind=launch.name, label=launch.label, grid=str(launch.grid), ms=ms))
    return rows


def _shape_class(label: str) -> str:
    """'pointwise 58->58 @28x28' -> 'pointwise @28x28'; 'depthwise 3x3 s2 58ch @56x56' -> 'depthwise s2 @56x56'."""
    words = label.split()
    kind = words[0]
    at = next((w for w in words if w.startswith("@")), "")
    stride = next((w for w in words if w in ("s1", "s2")), "")
    if kind in ("depthwise", "avg_pool", "max_pool"):
        return f"{kind} {stride} {at}".replace("  ", " ").strip()
    if kind == "conv2d":
        return f"stem conv2d {at}"
    return f"{kind} {at}".strip()


def breakdown_tables(rows: list[dict], batch: int) -> str:
    """Markdown: GPU time by kind of kernel and shape class, then by distinct layer shape."""
    total = sum(r["ms"] for r in rows) or float("nan")

    def table(key, title):
        groups: dict[str, list] = {}
        for r in rows:
            groups.setdefault(key(r), []).append(r["ms"])
        lines = [f"\n{title} (batch {batch}; sum {total:.2f} ms over {len(rows)} launches, each timed alone):", "",
                 "| kernel | launches | ms | % |", "|---|---:|---:|---:|"]
        for name, times in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
            lines.append(f"| {name} | {len(times)} | {sum(times):.3f} | {100 * sum(times) / total:.1f} |")
        return lines

    lines = table(lambda r: _shape_class(r["label"]), "GPU time by kernel kind")
    lines += table(lambda r: r["label"], "GPU time by layer shape")
    return "\n".join(lines)


def benchmark(simulate: bool, cuda_backend, batches: list[int], info: dict) -> list[dict]:
    import numpy as np
    import torch

    label, spec, dialect, (_, _, size, _) = model_specs(simulate)[0]
    plan, weights, net = random_network(spec, dialect, seed=123)
    runner = cuda_backend.prepare(plan, weights)

    device = "cpu" if simulate else "cuda"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    net = net.to(device).eval()
    if simulate:
        numba_sync = torch_sync = lambda: None  # noqa: E731
    else:
        numba_sync, torch_sync = cuda_backend.cuda.synchronize, torch.cuda.synchronize

    def torch_forward(x):  # NumPy batch in host memory -> logits in host memory
        with torch.inference_mode():
            return net(torch.from_numpy(x).to(device)).cpu().numpy()

    rows = []
    info["benchmark_model"] = f"{label} {dialect} {size}x{size}"
    # per-kernel GPU times at 1 and 256 by default (only the last batch in the slow simulator)
    breakdown_batches = {batches[-1]} if simulate else {batches[0], batches[-1]}
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, size, size), dtype=np.float32)
        warmup, repeats = (0, 1) if simulate else (3, 30 if batch == 1 else 10)
        ours, logits = timed(lambda x=x: runner(x), warmup, repeats, numba_sync)
        theirs, torch_logits = timed(lambda x=x: torch_forward(x), warmup, repeats, torch_sync)
        diff = relative_error(logits, torch_logits)
        row = dict(batch=batch, npshuffle_ms=ours, torch_ms=theirs, ratio=theirs / ours, torch_rel_diff=diff,
                   launches=len(runner.workspaces[x.shape].launches))
        line = (f"  batch {batch:4d}: npshuffle-cuda {ours:9.2f} ms, torch {device} eager {theirs:9.2f} ms, "
                f"ratio {theirs / ours:5.2f}x (logits differ by {diff:.1e} relative)")
        ws = runner.workspaces[x.shape]
        row["graph"] = ws.graph is not None
        if not simulate:  # where the time goes: the input copy alone, the network alone
            row.update(diagnostics(cuda_backend, runner, plan, weights, x, net, device, numba_sync, torch_sync))
            line += (f"\n              input copy alone: pageable {row['npshuffle_copy_in_ms']:.2f} ms, pinned staging "
                     f"1 thread {row['pinned_copy_in_1t_ms']:.2f} ms, {runner.copy_threads} threads "
                     f"{row['pinned_copy_in_ms']:.2f} ms, torch {row['torch_copy_in_ms']:.2f} ms"
                     f"\n              network alone (data on the GPU): npshuffle graph "
                     f"{row['npshuffle_gpu_ms']:.2f} ms, {row['launches']} launches "
                     f"{row['npshuffle_launches_ms']:.2f} ms"
                     f" (host enqueue {row['enqueue_launches_ms']:.2f} ms, graph {row['enqueue_graph_ms']:.3f} ms), "
                     f"torch {row['torch_gpu_ms']:.2f} ms; whole call without graph and pinned staging "
                     f"{row['npshuffle_plain_ms']:.2f} ms")
        if batch in breakdown_batches:
            row["breakdown"] = kernel_breakdown(cuda_backend.cuda, runner, ws, repeats=1 if simulate else 10,
                                                warmup=not simulate)
            log(breakdown_tables(row["breakdown"], batch))
        rows.append(row)
        log(line)
    return rows


def table(rows: list[dict], info: dict, simulate: bool) -> str:
    torch_name = "torch CPU eager" if simulate else "torch CUDA eager fp32"
    lines = [
        f"ShuffleNet {info['benchmark_model']}, {info['device']}" + (": timings mean nothing" if simulate else ""),
        "",
        f"| batch | npshuffle-cuda ms | npshuffle-cuda img/s | {torch_name} ms | torch img/s | npshuffle / torch |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['npshuffle_ms']:.2f} | {1000 * r['batch'] / r['npshuffle_ms']:,.0f} | "
            f"{r['torch_ms']:.2f} | {1000 * r['batch'] / r['torch_ms']:,.0f} | {r['ratio']:.2f}x |"
        )
    if not simulate and all("npshuffle_gpu_ms" in r for r in rows):
        lines += [
            "",
            "Where the time goes (ms): the input's host->device copy alone (npshuffle: pageable as before, "
            "pinned staging with 1 thread, with the threads a call uses), and the network alone on data "
            "already on the GPU (npshuffle: CUDA graph replay, and launch by launch), then the host's "
            "time to enqueue the launches, and a whole call as before (no graph, pageable copy):",
            "",
            "| batch | copy in pageable | pinned 1 thread | pinned threaded | torch copy in | network graph "
            "| network launches | torch network | enqueue launches (per launch) | enqueue graph | call as before |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['batch']} | {r['npshuffle_copy_in_ms']:.2f} | {r['pinned_copy_in_1t_ms']:.2f} | "
            f"{r['pinned_copy_in_ms']:.2f} | {r['torch_copy_in_ms']:.2f} | "
            f"{r['npshuffle_gpu_ms'] if r['graph'] else float('nan'):.2f} | {r['npshuffle_launches_ms']:.2f} | "
            f"{r['torch_gpu_ms']:.2f} | {r['enqueue_launches_ms']:.2f} ({r['enqueue_launch_us']:.0f} us) | "
            f"{r['enqueue_graph_ms']:.3f} | {r['npshuffle_plain_ms']:.2f} |"
            for r in rows
        ]
    lines += [
        "",
        "Each call: NumPy batch in host memory -> logits in host memory (host->device copy of the input "
        "and device->host copy of the logits included, for both); median of timed calls after warm-up."
        + ("" if simulate else " torch: cudnn.benchmark on, TF32 off (true fp32 on both sides)."),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulate", action="store_true", help="tiny sizes on numba's CUDA simulator (no GPU)")
    parser.add_argument("--json", metavar="PATH", help="also write every result to PATH as JSON")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="watchdog: give up after this many seconds (0: no watchdog)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,64,256; 1,2 simulated)")
    parser.add_argument("--skip-benchmark", action="store_true", help="parity checks only")
    args = parser.parse_args(argv)

    if args.simulate and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # read when numba is first imported
        if "numba" in sys.modules:  # too late for this process: start again
            os.execv(sys.executable, [sys.executable, os.path.abspath(__file__),
                                      *(sys.argv[1:] if argv is None else argv)])
    os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")
    warnings.filterwarnings("ignore", message=r"(?s).*(under-utilization|low occupancy|will likely result in GPU)")
    warnings.filterwarnings("ignore", message=r"(?s).*Host array used in CUDA kernel")
    if args.timeout > 0:
        faulthandler.dump_traceback_later(args.timeout, exit=True)
    try:
        return run(args)
    finally:
        faulthandler.cancel_dump_traceback_later()


def run(args) -> int:
    """The steps of :func:`main`, once the environment is set up; the exit status."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    started = time.perf_counter()

    import numba
    import numpy as np
    import torch

    try:
        from numba.core.errors import NumbaPerformanceWarning

        warnings.simplefilter("ignore", NumbaPerformanceWarning)
    except ImportError:
        pass

    info = {"mode": "simulate" if args.simulate else "gpu", "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "torch": torch.__version__}
    try:
        from importlib.metadata import version

        info["numba-cuda"] = version("numba-cuda")
    except Exception:
        info["numba-cuda"] = "not installed"
    checks: list[Check] = []
    rows: list[dict] = []
    failure = None

    from npshuffle.backends import BackendError, get_backend

    try:
        cuda_backend = get_backend("cuda")
        if args.simulate:
            info["device"] = "numba CUDA simulator"
        else:
            from numba import cuda

            name = cuda.get_current_device().name
            info["device"] = name.decode() if isinstance(name, bytes) else str(name)
    except BackendError as exc:
        cuda_backend, failure = None, f"the CUDA backend is not usable here: {exc}"
        info["device"] = "none"
    log(f"gpu_check ({info['mode']}): device {info['device']}; " + ", ".join(
        f"{k} {info[k]}" for k in ("python", "numpy", "numba", "numba-cuda", "torch")))
    if not args.simulate:
        log(f"  torch sees CUDA: {torch.cuda.is_available()}"
            + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))

    if cuda_backend is not None:
        log(f"[1/2] whole networks vs the NumPy backend (+{time.perf_counter() - started:.0f} s)")
        model_checks(checks, args.simulate, cuda_backend, info)
        if not args.skip_benchmark:
            if not args.simulate and not torch.cuda.is_available():
                failure = "torch does not see a CUDA device: no speed comparison"
            else:
                log(f"[2/2] speed (+{time.perf_counter() - started:.0f} s)")
                batches = [int(b) for b in (args.batches or ("1,2" if args.simulate else "1,64,256")).split(",")]
                try:
                    rows = benchmark(args.simulate, cuda_backend, batches, info)
                except Exception:
                    failure = "benchmark failed:\n" + traceback.format_exc()
                apart = [f"batch {r['batch']}: {r['torch_rel_diff']:.1e}" for r in rows
                         if not r["torch_rel_diff"] <= TOLERANCE]
                if apart and failure is None:
                    failure = f"npshuffle-cuda's logits differ from torch's by over {TOLERANCE:g}: {', '.join(apart)}"

    passed = sum(c.ok for c in checks)
    log("")
    log(f"parity: {passed}/{len(checks)} checks within {TOLERANCE:g} relative"
        + ("" if passed == len(checks) else "; FAILED: " + ", ".join(c.name for c in checks if not c.ok)))
    if rows:
        log("")
        log(table(rows, info, args.simulate))
        ratio = rows[-1]["ratio"]
        log(f"\nbatch {rows[-1]['batch']}: npshuffle-cuda / torch throughput = {ratio:.2f}x "
            + ("(>= 1.0x)" if ratio >= 1.0 else "(below 1.0x)"))
    if failure:
        log("\n" + failure)
    ok = failure is None and len(checks) > 0 and passed == len(checks)
    log(f"\ntotal {time.perf_counter() - started:.0f} s: {'OK' if ok else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"ok": ok, "info": info, "checks": [asdict(c) for c in checks], "timings": rows, "failure": failure},
            indent=1,
        ))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
