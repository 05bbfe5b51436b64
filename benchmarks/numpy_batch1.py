"""Batch-1 latency of the NumPy backend on every bundled model, beside ONNX Runtime and torch eager.

    python benchmarks/numpy_batch1.py [--calls 200] [--threads N] [--models flowers ...] [--plain]
    OPENBLAS_NUM_THREADS=1 python benchmarks/numpy_batch1.py --threads 1     # everything on one thread

For each bundled model, the NumPy backend runs the model file itself (``load_model(name,
backend="numpy")``, real weights) on a random ``(1, 3, crop, crop)`` input, crop = the model's
recipe crop. torch eager and ONNX Runtime run the same architecture and wiring (the file's spec and
dialect, built by the torch oracle ``npshuffle.training.torch_ref`` with random weights and BN statistics:
a forward pass costs the same whatever the values; V1's channel shuffle made exportable by
``bench_common.exportable``). The three are timed interleaved, as ``bench_cpu.py`` does: rounds of a
block of ``--per-block`` calls of each runtime in turn (rotating who goes first), each block after
0.2 s of sleep and 0.1 s of untimed calls, so that one runtime's spinning worker threads never
count against the next and every runtime sees the same drift of a shared machine.

Prints a markdown table: per model, the NumPy backend's median and minimum milliseconds, and ONNX
Runtime's and torch eager's median with the NumPy backend's median as a multiple of theirs.
``--plain`` adds the backend's plain op-by-op walk (``NumpyBackend.prepare_reference``, which is
what the backend ran before its single-image fast path) to the same interleaved rounds.

Threads: ``--threads`` sets torch's and ONNX Runtime's intra-op threads (default: all cores). NumPy's
BLAS reads its thread count once, when NumPy is imported: set ``OPENBLAS_NUM_THREADS`` (or
``OMP_NUM_THREADS``) in the environment to change it; the table's header says what was set.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys

import numpy as np

try:
    from bench_common import exportable, fmt_ms, interleaved_samples
except ImportError:  # imported from elsewhere than benchmarks/
    from benchmarks.bench_common import exportable, fmt_ms, interleaved_samples



def runtimes(name: str, threads: int, seed: int, plain: bool = False) -> tuple[dict, int]:
    """({runtime: fn(x) -> logits}, crop) for bundled model ``name``; with ``plain``, also the NumPy
    backend's op-by-op walk as "numpy-plain"."""
    import onnxruntime as ort
    import torch

    from npshuffle.backends import NumpyBackend
    from npshuffle.predict import load_model
    from npshuffle.training.torch_ref import build_torch_model, randomize_

    model = load_model(name, backend="numpy")
    crop = model.recipe["crop"]
    spec, dialect = model.file.spec, model.file.dialect
    net = randomize_(build_torch_model(spec, dialect), torch.Generator().manual_seed(seed)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(exportable(net), torch.zeros(1, 3, crop, crop), buffer, input_names=["input"],
                      output_names=["logits"], dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run_torch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    runs = {
        "numpy": model.forward,
        "onnxruntime": lambda x: session.run(None, {"input": x})[0],
        "torch": run_torch,
    }
    if plain:
        runs["numpy-plain"] = NumpyBackend().prepare_reference(model.file.plan, model.file.weights)
    return runs, crop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    from npshuffle.zoo import available

    names = [entry.name for entry in available()]
    parser.add_argument("--models", nargs="+", default=names, choices=names, metavar="MODEL",
                        help=f"bundled models to run (default: all of {', '.join(names)})")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per runtime and model (default 200)")
    parser.add_argument("--per-block", type=int, default=10, help="calls per interleaved block (default 10)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch and ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--plain", action="store_true", help="also time the plain op-by-op walk (the old backend)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    blas = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    lines = [
        f"Batch 1: median and min of {args.calls} calls per runtime, interleaved in blocks of {args.per_block}; "
        f"{os.cpu_count()} cores; torch / ONNX Runtime threads: {args.threads}; NumPy {np.__version__}, BLAS threads: "
        + (", ".join(f"{k}={v}" for k, v in blas.items()) or "NumPy's default (no *_NUM_THREADS set)") + ".  ",
        f"Command: `python benchmarks/numpy_batch1.py {' '.join(sys.argv[1:])}`",
        "",
        "| model | input | npshuffle-numpy median | min | ONNX Runtime median | numpy / ORT | torch eager median "
        "| numpy / torch |" + (" plain walk median | min |" if args.plain else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.plain else ""),
    ]
    for name in args.models:
        print(f"{name}: building, exporting...", file=sys.stderr, flush=True)
        runs, crop = runtimes(name, args.threads, args.seed, args.plain)
        x = rng.standard_normal((1, 3, crop, crop)).astype(np.float32)
        print(f"{name}: timing...", file=sys.stderr, flush=True)
        samples = interleaved_samples(runs, x, args.calls, args.per_block)
        med = {r: statistics.median(t) for r, t in samples.items()}
        plain = f" {fmt_ms(med['numpy-plain'])} | {fmt_ms(min(samples['numpy-plain']))} |" if args.plain else ""
        lines.append(f"| {name} | {crop}x{crop} | {fmt_ms(med['numpy'])} | {fmt_ms(min(samples['numpy']))} | "
                     f"{fmt_ms(med['onnxruntime'])} | {med['numpy'] / med['onnxruntime']:.2f}x | "
                     f"{fmt_ms(med['torch'])} | {med['numpy'] / med['torch']:.2f}x |" + plain)
        print(f"{name}: " + ", ".join(f"{r} {fmt_ms(t)}" for r, t in med.items()), file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
