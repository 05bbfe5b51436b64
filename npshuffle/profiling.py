"""``npshuffle profile``: where a model's time goes, layer by layer, beside what each layer costs on paper.

For each op of the lowered program (``npshuffle.lowering``; on the Numba backend each *step*, which
may fuse several ops: the stem conv and its max-pool, the head conv and the global pool) one row:

* **params**: weights and biases (batch norm folded in);
* **MACs**: multiply-adds for one image (what FLOP counts count; FLOPs = 2 x MACs);
* **memory access cost** (the ShuffleNet V2 paper's "MAC", here ``mem``): the floats a layer must
  read and write for one image: its inputs, its outputs and its weights. For a 1x1 conv with c1
  inputs, c2 outputs and g groups over h x w pixels that is ``h*w*(c1 + c2) + c1*c2/g`` (+ c2
  biases here); an element-wise epilogue adds what it reads (a residual, a passthrough copy);
* **time**: measured for one image on one thread (Numba: the step's kernel alone; NumPy: the op
  alone), its share of the sum, and GFLOP/s.

Below the rows: the whole forward pass at ``--batch`` on the model's threads, and NumPy's SGEMM in
this process for scale. Where the MACs and the time disagree is the paper's lesson (guidelines G1-G4):
FLOPs do not tell speed.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from .lowering import AvgPool, Conv, Depthwise, GlobalPool, Linear, MaxPool, Op, Pointwise, Program
from .model import Model


@dataclass
class Row:
    """One row of a profile: a layer (or a fused step), its costs for one image, its time."""

    name: str
    kind: str
    in_shape: tuple[int, int, int]  # (channels, height, width) of its main input
    out_shape: tuple[int, int, int]
    params: int
    macs: int
    mem: int  # memory access cost in floats (see the module docstring)
    seconds: float = 0.0
    share: float = 0.0  # of the sum of the rows' seconds

    @property
    def gflops(self) -> float:
        return 2 * self.macs / self.seconds / 1e9 if self.seconds > 0 and self.macs else 0.0


def op_row(op: Op, shapes: dict) -> Row:
    """The paper costs of one op of a program, for one image (``shapes``: ``Program.shapes``)."""
    c_in, h_in, w_in = shapes[op.src]
    c_out, h_out, w_out = shapes[op.dst]
    pixels_in, pixels_out = h_in * w_in, h_out * w_out
    if isinstance(op, Conv):
        params = op.weight.size + op.bias.size
        macs = pixels_out * op.weight.size
        return Row(op.name, "conv", (c_in, h_in, w_in), (c_out, h_out, w_out), params, macs,
                   pixels_in * c_in + pixels_out * c_out + params)
    if isinstance(op, Pointwise):
        params = op.weight.size + op.bias.size
        out_c = op.out_channels
        macs = pixels_in * op.weight.size  # (weight: (out, in / groups))
        written = 0 if op.pool else pixels_in * out_c
        extra = 0
        if op.residual is not None:
            extra += pixels_in * out_c  # the residual read
        if op.carry is not None:
            extra += 2 * pixels_in * out_c  # the passthrough half read and written beside the output
        kind = "pointwise" if op.groups == 1 else f"pointwise g{op.groups}"
        return Row(op.name, kind + ("+pool" if op.pool else ""), (op.in_channels, h_in, w_in),
                   (out_c, 1 if op.pool else h_in, 1 if op.pool else w_in), params, macs,
                   pixels_in * op.in_channels + written + extra + params + (out_c if op.pool else 0))
    if isinstance(op, Depthwise):
        params = op.weight.size + op.bias.size
        return Row(op.name, "depthwise", (c_in, h_in, w_in), (c_out, h_out, w_out), params,
                   pixels_out * op.weight.size, pixels_in * c_in + pixels_out * c_out + params)
    if isinstance(op, (MaxPool, AvgPool)):
        channels = c_in
        return Row(op.name, "max_pool" if isinstance(op, MaxPool) else "avg_pool", (c_in, h_in, w_in),
                   (channels, h_out, w_out), 0, 0, pixels_in * c_in + pixels_out * channels)
    if isinstance(op, GlobalPool):
        return Row(op.name, "global_pool", (c_in, h_in, w_in), (c_in, 1, 1), 0, 0, pixels_in * c_in + c_in)
    if isinstance(op, Linear):
        params = op.weight.size + op.bias.size
        return Row(op.name, "linear", (c_in, 1, 1), (c_out, 1, 1), params, op.weight.size, c_in + c_out + params)
    raise TypeError(f"no costs for {type(op).__name__}")


def op_rows(program: Program, height: int, width: int) -> list[Row]:
    """One :class:`Row` per op of ``program`` for an image of ``height`` x ``width``, untimed."""
    shapes = program.shapes(height, width)
    return [op_row(op, shapes) for op in program.ops]


def merged(name: str, rows: list[Row]) -> Row:
    """Several ops computed by one fused step, as one row (costs summed; the memory access cost of
    the values passed between them inside the step is not counted: they never leave the kernel)."""
    if len(rows) == 1:
        return Row(**{**asdict(rows[0]), "name": name})
    inner = sum(r.out_shape[0] * r.out_shape[1] * r.out_shape[2] for r in rows[:-1])
    return Row(name, "+".join(r.kind for r in rows), rows[0].in_shape, rows[-1].out_shape,
               sum(r.params for r in rows), sum(r.macs for r in rows), sum(r.mem for r in rows) - 2 * inner)


def seconds(call) -> float:
    """Wall seconds of one ``call()``."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _median_seconds(fn, repeat: int) -> float:
    fn()  # (untimed: caches, the first call's allocations)
    return float(np.median([seconds(fn) for _ in range(repeat)]))


def _numba_rows(runner, size: int, image: np.ndarray, repeat: int) -> list[Row]:
    """Per step of the Numba backend: its ops' costs and its kernel's time alone, one image, one thread."""
    from .backend_numba import cpu, ensure_kernels

    ensure_kernels()
    program = runner.packed.program
    by_name = {row.name: row for row in op_rows(program, size, size)}
    table = runner.steps_for(size, size)
    ws = table.take_workspace(1)
    features, logits = table.outputs(1, program.logits.channels)
    one, zero = np.int64(1), np.int64(0)
    wts, itab = runner.packed.wts, table.itab
    rows = []
    for step, label, names in zip(table.steps, table.labels, table.op_names, strict=True):
        if names:
            row = merged(label, [by_name[n] for n in names])
        else:  # the input copied into the stem's column phases: data movement only
            c, h, w = program.shapes(size, size)[program.image]
            row = Row(label, "input copy", (c, h, w), (c, h, w), 0, 0, 2 * c * h * w)
        row.seconds = _median_seconds(
            lambda step=step: cpu.run_step(ws[0], wts, itab, step, image[0], features[0], zero, one), repeat)
        rows.append(row)
    no_steps = np.zeros((1, 2), np.int64)  # one round of no steps: the classifier alone
    classifier = by_name[program.ops[-1].name]
    classifier.seconds = _median_seconds(
        lambda: cpu.forward(ws, runner.packed.wts, table.itab, table.steps, no_steps, image, features,
                            runner.packed.fc_step, logits, 1, False), repeat)
    table.give_back(ws)
    return [*rows, classifier]


def _numpy_rows(runner, size: int, image: np.ndarray, repeat: int) -> list[Row]:
    """Per op of the NumPy backend: its costs and its time alone, one image."""
    program = runner.program
    rows = op_rows(program, size, size)
    samples: list[list[float]] = [[] for _ in rows]
    for round_ in range(repeat + 1):  # (round 0 untimed)
        values = {program.image: np.ascontiguousarray(image[0])}
        for i, step in enumerate(runner.steps):
            start = time.perf_counter()
            step(values)
            if round_:
                samples[i].append(time.perf_counter() - start)
    for row, times in zip(rows, samples, strict=True):
        row.seconds = float(np.median(times))
    return rows


@dataclass
class Profile:
    """``npshuffle profile``'s result: the rows and the whole-network figures."""

    model: str
    backend: str
    size: int
    batch: int
    rows: list[Row]
    forward_s: float  # one forward pass of ``batch`` images, the model's threads
    sgemm_gflops: float  # NumPy's SGEMM (1024 x 1024, float32) in this process

    @property
    def totals(self) -> dict:
        return {"params": sum(r.params for r in self.rows), "macs": sum(r.macs for r in self.rows),
                "mem": sum(r.mem for r in self.rows), "seconds": sum(r.seconds for r in self.rows)}

    def to_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "size": self.size, "batch": self.batch,
                "rows": [{**asdict(r), "gflops": r.gflops} for r in self.rows], "totals": self.totals,
                "forward_s": self.forward_s, "images_per_s": self.batch / self.forward_s,
                "sgemm_gflops": self.sgemm_gflops}


def sgemm_gflops(n: int = 1024, repeat: int = 5) -> float:
    """NumPy's float32 matrix product (n x n) in GFLOP/s, best of ``repeat``: the machine's BLAS as
    this process has it (an environment such as OPENBLAS_CORETYPE may hold it back)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # (untimed: BLAS's threads started, the pages touched)
    return 2 * n**3 / min(seconds(lambda: a @ b) for _ in range(repeat)) / 1e9


def profile(model: Model, batch: int = 1, size: int | None = None, repeat: int = 20) -> Profile:
    """Profile ``model`` (its backend: ``numba`` or ``numpy``; ``auto`` profiles NumPy, where it
    starts) on random inputs of ``size`` (default: the recipe's crop)."""
    runner = model._run
    runner = getattr(runner, "numba_runner", None) or getattr(runner, "numpy_runner", None) or runner
    size = size or model.recipe["crop"]
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    if hasattr(runner, "packed"):
        backend, rows = "numba", _numba_rows(runner, size, image, repeat)
    elif hasattr(runner, "steps") and hasattr(runner, "program"):
        backend, rows = "numpy", _numpy_rows(runner, size, image, repeat)
    else:
        raise ValueError(f"backend {model.backend.name!r} cannot be profiled layer by layer: use numba or numpy")
    total = sum(r.seconds for r in rows) or 1.0
    for row in rows:
        row.share = row.seconds / total
    batch_input = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    forward_s = _median_seconds(lambda: runner(batch_input), max(3, repeat // 4))
    return Profile(model.name, backend, size, batch, rows, forward_s, sgemm_gflops())


# -- output --------------------------------------------------------------------------------------

COLUMNS = ("layer", "kind", "in", "out", "params", "MMACs", "mem Mfloats", "us", "GFLOP/s", "share")


def _cells(row: Row) -> list[str]:
    shape = "x".join
    return [row.name, row.kind, shape(map(str, row.in_shape)), shape(map(str, row.out_shape)), f"{row.params:,}",
            f"{row.macs / 1e6:.2f}", f"{row.mem / 1e6:.3f}", f"{row.seconds * 1e6:.1f}",
            f"{row.gflops:.0f}" if row.macs else "", f"{100 * row.share:.1f}%"]


def as_table(p: Profile) -> str:
    """Aligned text: the rows, the totals, and the whole-network and SGEMM figures."""
    t = p.totals
    cells = [list(COLUMNS)] + [_cells(r) for r in p.rows]
    cells.append(["total", "", "", "", f"{t['params']:,}", f"{t['macs'] / 1e6:.2f}", f"{t['mem'] / 1e6:.3f}",
                  f"{t['seconds'] * 1e6:.1f}", f"{2 * t['macs'] / t['seconds'] / 1e9:.0f}", "100%"])
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    right = {4, 5, 6, 7, 8, 9}
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(-1, lines[1])
    lines += [
        "",
        f"{p.model} on {p.backend}, {p.size}x{p.size}: rows are one image on one thread, each layer alone",
        f"whole forward pass, batch {p.batch}: {p.forward_s * 1e3:.2f} ms ({p.batch / p.forward_s:.0f} images/s)",
        f"for scale, NumPy's SGEMM in this process: {p.sgemm_gflops:.0f} GFLOP/s",
    ]
    return "\n".join(lines)


def as_csv(p: Profile) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["layer", "kind", "in_shape", "out_shape", "params", "macs", "mem", "seconds", "gflops", "share"])
    for r in p.rows:
        writer.writerow([r.name, r.kind, "x".join(map(str, r.in_shape)), "x".join(map(str, r.out_shape)), r.params,
                         r.macs, r.mem, f"{r.seconds:.9f}", f"{r.gflops:.3f}", f"{r.share:.6f}"])
    return out.getvalue()


def as_json(p: Profile) -> str:
    return json.dumps(p.to_dict(), indent=1)


# -- the command ---------------------------------------------------------------------------------

FORMATS = {"table": as_table, "json": as_json, "csv": as_csv}


def add_profile_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", help="bundled model name (see `npshuffle list`) or a model file "
                                                 "(.npz or .safetensors) "
                                                 "(default: the default model)")
    parser.add_argument("--device", choices=["numba", "numpy"], default="numba",
                        help="the backend to time (default numba: its fused steps; numpy: op by op)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the whole-network timing (default 1)")
    parser.add_argument("--size", type=int, help="input height and width (default: the model's crop)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per layer, the median kept (default 20)")
    parser.add_argument("--format", "-f", choices=sorted(FORMATS), default="table")
    parser.add_argument("--png", metavar="FILE", help="also draw each layer's share of MACs beside its share of time")


def run_profile(args) -> int:
    from .cli import EXIT_OK, fail
    from .model_file import MIN_INPUT_SIZE
    from .predict import load_model

    for name, value, least in (("--batch", args.batch, 1), ("--repeat", args.repeat, 1),
                               ("--size", args.size, MIN_INPUT_SIZE)):
        if value is not None and value < least:
            return fail(f"{name} must be at least {least}")
    model = load_model(args.model, backend=args.device)
    result = profile(model, batch=args.batch, size=args.size, repeat=args.repeat)
    print(FORMATS[args.format](result), end="" if args.format == "csv" else "\n")
    if args.png:
        from .profile_chart import save

        try:
            save(result, args.png)
        except OSError as exc:
            return fail(f"{args.png}: cannot write the chart ({exc.strerror or exc})")
        print(f"wrote {args.png}", file=sys.stderr)
    return EXIT_OK
