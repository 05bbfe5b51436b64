"""The BLAS on a network's own product shapes: the ceiling that a speed bar really faces.

    python benchmarks/shape_ceiling.py [--rows "V2 x0.5:32" "V2 x1.0:1"] [--threads 2] [--out FILE]

``sgemm_ceiling.py`` measures the BLAS on one large square product (2048x2048x2048). A ShuffleNet's
1x1 convolutions are products of another shape: pixels x input channels times input channels x
output channels, with 24 to 464 channels, so every product is short in K and N and the whole
network is dozens of them, each paying its own start-up. This script takes the products one row of
``bench_cpu.py`` computes (a model at a batch size: for each 1x1 conv M = batch x output pixels,
K = input channels per group, N = output channels per group; the stem conv as its im2col product,
K = 27) and times NumPy's BLAS on each, in a fresh process without ``OPENBLAS_CORETYPE`` /
``OPENBLAS_L2_SIZE`` (its AVX-512 kernel, as ``sgemm_ceiling.py`` runs it), two ways, keeping the
faster: one tall product of all the batch's pixels, and one product per image (whose operands stay
in cache where the tall ones stream from memory).

In the same run it times npshuffle-numba and ONNX Runtime on the whole network (as ``bench_cpu.py``
does, interleaved) and states the time the row's ONNX Runtime bar allows (half of ONNX Runtime's
time per call: a 2x speed-up) beside the time the BLAS needs for the products alone. Where the
products alone take longer than the bar allows the whole network (depthwise convolutions, pools,
the classifier and the data movement between steps still to come), the bar asks for GEMMs faster
than the vendor BLAS on these shapes, not only for a better use of the machine.

The BLAS times are per call from Python (``np.matmul`` with ``out=``); the report also gives the
totals less the measured cost of a 1x1x1 call, once per product, so Python's dispatch is not counted
against the BLAS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_common import MODELS, interleaved, publish, versions
from sgemm_ceiling import KERNEL_PROBE, probe_env

# Reads [[label, M, K, N, groups, batch], ...] on stdin; prints per product the median seconds of one
# tall product (M rows) and of `batch` products of M / batch rows (one per image, one after another),
# then the median seconds of a 1x1x1 product (Python's dispatch), then the OpenBLAS kernel's name.
SHAPE_PROBE = """
import json, sys, time
import numpy as np
shapes = json.loads(sys.stdin.read())
rng = np.random.default_rng(0)

def seconds(a, b, c, calls):
    for _ in range(3):
        np.matmul(a, b, out=c)
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))

out = []
for label, m, k, n, groups, batch in shapes:
    # a grouped 1x1 conv is `groups` products of this shape: timed as one, counted `groups` times
    a = rng.random((m, k), dtype=np.float32)
    b = rng.random((k, n), dtype=np.float32)
    c = np.empty((m, n), np.float32)
    tall = seconds(a, b, c, {calls})
    rows = m // batch
    per_image = batch * seconds(a[:rows], b, c[:rows], {calls}) if batch > 1 else tall
    out.append([tall, per_image])
tiny = np.ones((1, 1), np.float32)
print(json.dumps(out))
print(json.dumps(seconds(tiny, tiny, np.empty((1, 1), np.float32), 200)))
"""


@dataclass
class Product:
    """One convolution of a row as a matrix product: ``groups`` products of (M, K) x (K, N), M
    covering ``batch`` images."""

    label: str
    m: int
    k: int
    n: int
    groups: int
    batch: int = 1  # images in M
    blas_s: float = 0.0  # median seconds of the BLAS on all ``groups`` products, the faster way of:
    blas_how: str = ""  # "tall" (one product of M rows) or "per image" (batch products of M / batch rows)
    step: int = -1  # the Numba program's step that computes it
    ours_s: float = 0.0  # that step's seconds for the batch (see :func:`time_steps`)

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n * self.groups


def gemm_products(runner, batch: int, size: int = 224) -> list[Product]:
    """The products of a compiled Numba ``runner`` at ``batch`` images of ``size`` x ``size``: each
    1x1 conv (``Gemm`` step: M = batch x the step's output pixels, for the fused head+pool step its
    conv's pixels; K and N per group), and the stem conv as the product it is after im2col (M = batch
    x its output pixels, K = 3 x 3 x image channels, N = its channels; the im2col copy itself, and the
    max-pool fused with it, not counted)."""
    from npshuffle.backend_numba import cpu

    prog = runner.steps_for(size, size)
    products = []
    for step, (label, record) in enumerate(zip(prog.labels, prog.records, strict=True)):
        if isinstance(record, cpu.StemPool):
            pixels = ((record.image_height - 1) // 2 + 1) * ((record.image_width - 1) // 2 + 1)
            products.append(Product("stem conv (im2col)", batch * pixels, 9 * record.image_channels,
                                    record.out_channels, 1, batch, step=step))
        elif isinstance(record, cpu.Gemm):
            packed = record.packed
            products.append(Product(label, batch * record.dst.height * record.dst.width, packed.group_in,
                                    packed.group_out, packed.groups, batch, step=step))
    return products


def time_steps(runner, classes: int, products: list[Product], batch: int, threads: int, repeat: int,
               size: int = 224) -> None:
    """Fills in each product's ``ours_s``: its Numba step's median seconds for the batch, timed as
    ``profile_layers.py`` times steps. Batch 1: the step split across ``threads`` as the batch-1 pass
    runs it. Larger batches run image by image, each thread through every step on its own images, so
    there: one image's time on one thread x batch / threads (the stem step includes its max-pool)."""
    from profile_layers import median_time

    from npshuffle.backend_numba import cpu

    prog = runner.steps_for(size, size)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    ws = prog.take_workspace(1)
    features, logits = prog.outputs(1, classes)
    wts, fc = runner.packed.wts, runner.packed.fc_step
    no_rounds = np.zeros((1, 2), np.int64)  # one round of no steps: the classifier alone
    classifier = median_time(lambda: cpu.forward(ws, wts, prog.itab, prog.steps, no_rounds, x, features, fc, logits,
                                                 threads, False), repeat)
    cpu.forward(ws, wts, prog.itab, prog.steps, prog.rounds, x, features, fc, logits, threads, False)
    one, zero = np.int64(1), np.int64(0)
    for product in products:
        step = prog.steps[product.step]
        if batch == 1:
            one_round = np.array([[product.step, product.step + 1]], np.int64)
            product.ours_s = median_time(lambda r=one_round: cpu.forward(
                ws, wts, prog.itab, prog.steps, r, x, features, fc, logits, threads, False), repeat) - classifier
        else:
            product.ours_s = median_time(lambda s=step: cpu.run_step(ws[0], wts, prog.itab, s, x[0], features[0],
                                                                     zero, one), repeat) * batch / threads


def time_products(products: list[Product], threads: int, calls: int) -> tuple[float, str]:
    """Times the BLAS on each product in a fresh process (see :data:`SHAPE_PROBE`), both as one tall
    product and as one per image, filling in ``blas_s`` with the faster and ``blas_how`` with which;
    returns (seconds of a 1x1x1 call, the OpenBLAS kernel's name)."""
    shapes = [[p.label, p.m, p.k, p.n, p.groups, p.batch] for p in products]
    out = subprocess.run([sys.executable, "-c", SHAPE_PROBE.format(calls=calls) + KERNEL_PROBE],
                         input=json.dumps(shapes), env=probe_env(threads), capture_output=True, text=True,
                         check=True)
    per_product, dispatch, kernel = out.stdout.splitlines()
    for product, (tall, per_image) in zip(products, json.loads(per_product), strict=True):
        product.blas_s = min(tall, per_image) * product.groups
        product.blas_how = "tall" if tall <= per_image else "per image"
    return float(json.loads(dispatch)), kernel


@dataclass
class Row:
    """One row: a model at a batch size, the whole network's times and its products."""

    model: str
    batch: int
    macs_per_image: int
    numba_s: float  # npshuffle-numba, median seconds per call
    ort_s: float  # ONNX Runtime, median seconds per call
    products: list[Product]
    dispatch_s: float  # a 1x1x1 np.matmul call: Python's share of each BLAS time

    @property
    def allowed_s(self) -> float:
        """Seconds per call the bar allows the whole network: half of ONNX Runtime's (a 2x speed-up;
        at batch 1 the bar is latency <= 0.5x, at batch 32 throughput >= 2x: the same time)."""
        return self.ort_s / 2

    @property
    def blas_total_s(self) -> float:
        return sum(p.blas_s for p in self.products)

    @property
    def ours_s(self) -> float:
        return sum(p.ours_s for p in self.products)

    @property
    def blas_net_s(self) -> float:
        """The BLAS total less Python's dispatch (one 1x1x1 call per call made: per group, and per
        image where the products went image by image)."""
        calls = sum(p.groups * (p.batch if p.blas_how == "per image" else 1) for p in self.products)
        return self.blas_total_s - self.dispatch_s * calls


def report_lines(rows: list[Row], machine: str, threads: int, kernel: str, ceiling: float | None,
                 command: str) -> list[str]:
    """The markdown report: per row, the whole-network times, the bar, the products' totals and a
    verdict, then each product's BLAS time. ``machine``: :func:`bench_common.versions`."""
    lines = ["# The BLAS on the networks' own product shapes", "", machine + "  ",
             f"Threads: {threads} for every runtime; NumPy's BLAS: OpenBLAS kernel {kernel}, without "
             "OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE" + (f"; its 2048x2048 SGEMM ceiling in this run: "
                                                      f"{ceiling:.0f} GFLOP/s" if ceiling else "") + ".  ",
             f"Command: `{command}`", ""]
    for row in rows:
        gemm_macs = sum(p.macs for p in row.products)
        lines += [f"## {row.model}, batch {row.batch}", "",
                  "| runtime or part | ms per call | GFLOP/s |", "|---|---:|---:|"]

        def line(name, seconds, macs):
            return f"| {name} | {seconds * 1e3:.3f} | {2 * macs / seconds / 1e9:.0f} |"

        net_macs = row.macs_per_image * row.batch
        lines += [line("ONNX Runtime, whole network", row.ort_s, net_macs),
                  line("npshuffle-numba, whole network", row.numba_s, net_macs),
                  line("**the bar: 2x ONNX Runtime, whole network**", row.allowed_s, net_macs),
                  line(f"BLAS, the {len(row.products)} products alone", row.blas_total_s, gemm_macs),
                  line("BLAS, the same less Python's dispatch", row.blas_net_s, gemm_macs),
                  line("npshuffle-numba's steps for the same products", row.ours_s, gemm_macs), ""]
        share = row.blas_net_s / row.allowed_s
        lines.append(f"The products (the stem conv and the {len(row.products) - 1} 1x1 convs) are "
                     f"{gemm_macs / net_macs:.0%} of the network's multiply-adds. At the "
                     f"BLAS's speed they alone take {share:.0%} of the time the bar allows the whole network"
                     + (": the bar needs GEMMs faster than the vendor BLAS on these shapes." if share >= 1 else
                        f", leaving {(row.allowed_s - row.blas_net_s) * 1e3:.3f} ms for everything else."))
        how = "split across the threads" if row.batch == 1 else "one image on one thread x batch / threads"
        lines += ["", f"npshuffle-numba's step times: {how}; the stem step includes its max-pool.", "",
                  "| step | M | K | N | groups | BLAS us | GFLOP/s | BLAS faster as | npshuffle us | GFLOP/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        lines += [f"| {p.label} | {p.m} | {p.k} | {p.n} | {p.groups} | {p.blas_s * 1e6:.1f} | "
                  f"{2 * p.macs / p.blas_s / 1e9:.0f} | {p.blas_how} | {p.ours_s * 1e6:.1f} | "
                  f"{2 * p.macs / p.ours_s / 1e9:.0f} |" for p in row.products]
        lines.append("")
    return lines


def parse_row(text: str) -> tuple[str, int]:
    """``"V2 x0.5:32"`` -> ("V2 x0.5", 32)."""
    model, _, batch = text.rpartition(":")
    if model not in MODELS or not batch.isdigit() or int(batch) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MODEL:BATCH with MODEL one of {', '.join(MODELS)}")
    return model, int(batch)


def measure_row(model: str, batch: int, threads: int, calls: int, workdir: Path) -> Row:
    from bench_cpu import Contestants

    contestants = Contestants(model, threads, 0, workdir)
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    runner = contestants.run["numba"]
    runner(x)  # compile for this batch
    runs = {"numba": runner, "onnxruntime": contestants.run["onnxruntime"]}
    per_block = 10 if batch == 1 else 2
    times = interleaved(runs, x, calls if batch == 1 else max(10, calls // 10), per_block)
    products = gemm_products(runner, batch)
    time_steps(runner, contestants.plan.classifier.num_classes, products, batch, threads, repeat=calls)
    dispatch, _ = time_products(products, threads, calls=31 if batch == 1 else 9)
    return Row(model, batch, contestants.macs, times["numba"], times["onnxruntime"], products, dispatch)


def main() -> int:
    import numba

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rows", nargs="+", type=parse_row, default=[("V2 x0.5", 32), ("V2 x1.0", 1)],
                        metavar="MODEL:BATCH", help='rows to measure (default: "V2 x0.5:32" "V2 x1.0:1", the '
                                                   "two ONNX Runtime bars of issue 15 not yet met)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every runtime (default: all)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per runtime at batch 1 (default 200)")
    parser.add_argument("--out", help="markdown file to write the report to")
    args = parser.parse_args()

    import torch
    from sgemm_ceiling import ceiling_and_kernel

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for model, batch in args.rows:
            print(f"{model}, batch {batch}...", file=sys.stderr, flush=True)
            rows.append(measure_row(model, batch, args.threads, args.calls, Path(workdir)))
    ceiling, kernel = ceiling_and_kernel(args.threads)
    command = "python benchmarks/shape_ceiling.py " + " ".join(sys.argv[1:])
    report = report_lines(rows, versions(), args.threads, kernel, ceiling, command.strip())
    publish("\n".join(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
