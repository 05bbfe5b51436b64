"""Where does the Numba backend's time go? One row per kernel launch (step), timed in isolation.

    python benchmarks/profile_layers.py [--arch v2_x1_0] [--size 224] [--repeat 200]

Builds the network with random weights, compiles it for the input size, then times every step
of ``npshuffle.backend_numba`` alone (median of ``--repeat`` runs), on one thread and split
across all threads as a batch-1 forward pass runs it, and prints a table with each step's
multiply-adds and GFLOP/s, and the totals per kind of step.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numba
import numpy as np

from npshuffle.archs import build_plan, v1_spec, v2_spec
from npshuffle.backend_numba import NumbaBackend, cpu  # (kernels.cpu, with npshuffle's kernel cache)

KIND_NAMES = {cpu.PhaseInput: "input", cpu.StemPool: "stem+max_pool", cpu.Gemm: "gemm", cpu.Depthwise: "depthwise",
              cpu.AvgPool: "avg_pool", cpu.GlobalPool: "global_pool"}


def arch(name: str):
    """``v2_x1_0`` -> ShuffleNet V2 1.0x; ``v1_g3_x0_5`` -> V1 groups 3, 0.5x."""
    parts = name.split("_")
    width = f"{parts[-2].lstrip('x')}.{parts[-1]}x"
    if parts[0] == "v2":
        return v2_spec(width)
    return v1_spec(int(parts[1][1:]), width)


def random_model(name: str, rng: np.random.Generator, dialect: str = "torchvision"):
    """(plan, Numba runner) of architecture ``name`` (see :func:`arch`) with random weights."""
    plan = build_plan(arch(name), dialect)
    weights = {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in plan.weight_shapes().items()}
    return plan, NumbaBackend().prepare(plan, weights)


def times(fn, calls: int) -> tuple[float, float]:
    """(median, minimum) seconds of ``calls`` calls of ``fn``, after one untimed call."""
    fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples)), float(np.min(samples))


def median_time(fn, repeat: int) -> float:
    return times(fn, repeat)[0]


def macs(step: cpu.Step) -> int:
    """Multiply-adds of one step record."""
    if isinstance(step, cpu.Gemm):
        g = step.packed
        return step.dst.height * step.dst.width * g.group_in * g.groups * g.group_out
    if isinstance(step, cpu.Depthwise):
        return step.dst.height * step.dst.width * 9 * step.src.channel_stride
    if isinstance(step, cpu.StemPool):  # the conv's output is 4x the pooled pixels
        stem_pixels = ((step.image_height - 1) // 2 + 1) * ((step.image_width - 1) // 2 + 1)
        return stem_pixels * 9 * step.image_channels * step.out_channels
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="v2_x1_0", help="v2_x0_5, v2_x1_0, v2_x1_5, v2_x2_0, v1_g3_x0_5, ...")
    parser.add_argument("--dialect", default="torchvision")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    plan, runner = random_model(args.arch, rng, args.dialect)
    x = rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    runner(x)  # compile
    prog = runner.steps_for(args.size, args.size)
    ws = prog.take_workspace(1)
    features, logits = prog.outputs(1, plan.classifier.num_classes)
    wts, fc = runner.packed.wts, runner.packed.fc_step
    nthreads = numba.get_num_threads()

    def whole(threads):
        return lambda: cpu.forward(ws, wts, prog.itab, prog.steps, prog.rounds, x, features, fc, logits, threads, False)

    no_rounds = np.zeros((1, 2), np.int64)  # one round of no steps: the classifier alone

    def classifier_only(threads):
        return lambda: cpu.forward(ws, wts, prog.itab, prog.steps, no_rounds, x, features, fc, logits, threads, False)

    t_fc1 = median_time(classifier_only(1), args.repeat)
    t_fcn = median_time(classifier_only(nthreads), args.repeat)
    rows, by_kind = [], defaultdict(lambda: [0.0, 0.0, 0])
    one, zero = np.int64(1), np.int64(0)
    for s, label in enumerate(prog.labels):
        step, one_round = prog.steps[s], np.array([[s, s + 1]], np.int64)

        def alone(step=step):
            cpu.run_step(ws[0], wts, prog.itab, step, x[0], features[0], zero, one)

        def split(one_round=one_round):  # as the batch-1 pass runs it (split or not, see its "split" field)
            cpu.forward(ws, wts, prog.itab, prog.steps, one_round, x, features, fc, logits, nthreads, False)

        t1 = median_time(alone, args.repeat)
        tn = median_time(split, args.repeat) - t_fcn
        m = macs(prog.records[s])
        kind = KIND_NAMES[type(prog.records[s])]
        rows.append((label, kind, m, t1, tn))
        by_kind[kind][0] += t1
        by_kind[kind][1] += tn
        by_kind[kind][2] += m
    rows.append(("classifier", "classifier", plan.classifier.in_features * plan.classifier.num_classes, t_fc1, t_fcn))
    by_kind["classifier"] = [t_fc1, t_fcn, rows[-1][2]]
    total1 = median_time(whole(1), args.repeat)
    total = median_time(whole(nthreads), args.repeat)

    print(f"{args.arch} ({args.dialect}) {args.size}x{args.size}, batch 1; threads: 1 and {nthreads} "
          f"(layer {numba.threading_layer()})\n")
    split_names = {cpu.SPLIT_NONE: "-", cpu.SPLIT_PIXELS: "pixels", cpu.SPLIT_COLUMNS: "columns"}
    print(f"| step | kind | MMAC | 1 thread us | GFLOP/s | {nthreads} threads us | split |")
    print("|---|---|---:|---:|---:|---:|---|")
    for (label, kind, m, t1, tn), how in zip(rows, [*prog.splits, None], strict=True):
        gf = f"{2 * m / t1 / 1e9:.0f}" if m else ""
        how = "columns" if how is None else split_names[how]  # (the classifier splits its column tiles)
        print(f"| {label} | {kind} | {m / 1e6:.2f} | {t1 * 1e6:.1f} | {gf} | {tn * 1e6:.1f} | {how} |")
    print(f"\n| kind | MMAC | 1 thread ms | {nthreads} threads ms |")
    print("|---|---:|---:|---:|")
    for kind, (t1, tn, m) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"| {kind} | {m / 1e6:.1f} | {t1 * 1e3:.3f} | {tn * 1e3:.3f} |")
    s1 = sum(r[3] for r in rows)
    sn = sum(r[4] for r in rows)
    print(f"\nsum of steps: {s1 * 1e3:.2f} ms on 1 thread, {sn * 1e3:.2f} ms on {nthreads}; "
          f"whole forward pass: {total1 * 1e3:.2f} ms on 1 thread, {total * 1e3:.2f} ms on {nthreads}")


if __name__ == "__main__":
    main()
