"""``npshuffle lab g1|g2|g3|g4|all``: the ShuffleNet V2 paper's four guidelines, measured here.

The paper (Ma et al., 2018, section 2) timed small benchmark networks at *equal FLOPs* on a GPU and
an ARM CPU and found four rules that FLOPs do not show. Each experiment here rebuilds its networks
at 56 x 56, ten blocks deep as the paper's were, from this project's kernels (the ops of
``npshuffle.lowering``, run by the Numba backend's step kernels), and from torch eager ops beside
them; both are timed on one thread, one image:

* **G1** equal channel widths minimise memory access cost: blocks of two 1x1 convs, c1 -> c2 -> c1,
  with c1:c2 = 1:1, 1:2, 1:6, 1:12 (the paper's widths, FLOPs within 5 %);
* **G2** many groups raise memory access cost: a 1x1 group conv with g = 1, 2, 4, 8, its width
  raised to keep c*c/g;
* **G3** fragmentation lowers parallelism: one 1x1 conv against 2 and 4 smaller ones in series
  (the same FLOPs) and 2 and 4 in parallel (one conv's output channels split into fragments);
* **G4** element-wise ops are not free: a bottleneck unit (1x1, 3x3 depthwise, 1x1; this project
  has no dense 3x3 kernel) with and without its ReLUs and its shortcut.

The networks run inside a scaffold the Numba backend needs (an image, the fused stem and max-pool
making the 56 x 56 input, a global pool and a one-class classifier), and only the experiment's
steps are timed. Where this CPU and these fused kernels tell a different story from the paper's
GPU and ARM results, the table says so: that is the finding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kernels.channel_map import ChannelMap

from .lowering import Conv, Depthwise, GlobalPool, Linear, MaxPool, Op, Pointwise, Program, Value
from .profiling import op_rows, seconds

SIZE = 56  # the experiments' feature maps, as the paper's
BLOCKS = 10


# -- building the networks -------------------------------------------------------------------------


class _Builder:
    """Ops of one benchmark network, with random He-scaled weights (values stay O(1) at any depth)."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.ops: list[Op] = []
        self.count = 0

    def value(self, channels: int) -> Value:
        self.count += 1
        return Value(f"v{self.count}", channels)

    def weights(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        fan_in = int(np.prod(shape[1:]))
        weight = (self.rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        return weight, (self.rng.standard_normal(shape[0]) * 0.01).astype(np.float32)

    def pointwise(self, src: Value, out: int, groups: int = 1, relu: bool = True, dst: Value | None = None,
                  first: int = 0, residual: Value | None = None) -> Value:
        """A 1x1 conv of ``src`` to ``out`` channels, written at channel ``first`` of ``dst`` (new by default)."""
        dst = dst or self.value(out)
        weight, bias = self.weights((out, src.channels // groups))
        self.ops.append(Pointwise(f"pw{len(self.ops)}", src, dst, weight, bias, groups, relu,
                                  writes=ChannelMap(offset=first), residual=residual))
        return dst

    def depthwise(self, src: Value, relu: bool = False) -> Value:
        dst = self.value(src.channels)
        weight, bias = self.weights((src.channels, 1, 3, 3))
        self.ops.append(Depthwise(f"dw{len(self.ops)}", src, dst, weight, bias, 3, 1, 1, relu))
        return dst


def _program(body: Callable[[_Builder, Value], Value], channels: int) -> tuple[Program, set[str]]:
    """The scaffold around ``body`` (image 4*SIZE square -> stem + max-pool -> ``channels`` x SIZE x
    SIZE -> body -> global pool -> one class), and the names of the body's ops."""
    b = _Builder()
    image, stem_out, pooled = Value("image", 3), b.value(channels), b.value(channels)
    weight, bias = b.weights((channels, 3, 3, 3))
    scaffold = [Conv("stem", image, stem_out, weight, bias, 3, 2, 1, 1, True), MaxPool("max_pool", stem_out, pooled)]
    out = body(b, pooled)
    names = {op.name for op in b.ops}
    features, logits = Value("features", out.channels), Value("logits", 1)
    weight, bias = b.weights((1, out.channels))
    ops = (*scaffold, *b.ops, GlobalPool("global_pool", out, features), Linear("classifier", features, logits,
                                                                                 weight, bias))
    return Program(image, ops, features, logits), names


def _g1(c1: int, c2: int):
    def body(b: _Builder, x: Value) -> Value:
        for _ in range(BLOCKS):
            x = b.pointwise(b.pointwise(x, c2), c1)
        return x
    return body, c1


def _g2(c: int, groups: int):
    def body(b: _Builder, x: Value) -> Value:
        for _ in range(BLOCKS):
            x = b.pointwise(x, c, groups=groups)
        return x
    return body, c


def _g3(c: int, fragments: int, parallel: bool):
    def body(b: _Builder, x: Value) -> Value:
        for _ in range(BLOCKS):
            if parallel:  # one conv's output channels computed by `fragments` convs, side by side
                out = b.value(c)
                for f in range(fragments):
                    b.pointwise(x, c // fragments, dst=out, first=f * c // fragments)
                x = out
            else:
                for _ in range(fragments):
                    x = b.pointwise(x, c)
        return x
    return body, c


def _g4(c: int, relu: bool, shortcut: bool):
    def body(b: _Builder, x: Value) -> Value:
        for _ in range(BLOCKS):
            y = b.depthwise(b.pointwise(x, c, relu=relu))
            x = b.pointwise(y, c, relu=relu, residual=x if shortcut else None)
        return x
    return body, c


def _series_width(c: int, fragments: int) -> int:
    """Channels of each of ``fragments`` 1x1 convs in series with the FLOPs of one c -> c conv."""
    return int(round(c / math.sqrt(fragments)))


# the experiments: (guideline, what it says, [(variant, (body, channels))])
EXPERIMENTS = {
    "g1": ("G1", "equal channel widths minimise memory access cost",
           [("c1:c2 = 1:1 (128, 128)", _g1(128, 128)), ("1:2 (90, 180)", _g1(90, 180)),
            ("1:6 (52, 312)", _g1(52, 312)), ("1:12 (36, 432)", _g1(36, 432))]),
    "g2": ("G2", "many groups raise memory access cost",
           [("g = 1 (c = 128)", _g2(128, 1)), ("g = 2 (c = 180)", _g2(180, 2)),
            ("g = 4 (c = 256)", _g2(256, 4)), ("g = 8 (c = 360)", _g2(360, 8))]),
    "g3": ("G3", "fragmentation lowers parallelism",
           [("1 fragment (c = 128)", _g3(128, 1, False)),
            (f"2 in series (c = {_series_width(128, 2)})", _g3(_series_width(128, 2), 2, False)),
            (f"4 in series (c = {_series_width(128, 4)})", _g3(_series_width(128, 4), 4, False)),
            ("2 in parallel (c = 128)", _g3(128, 2, True)), ("4 in parallel (c = 128)", _g3(128, 4, True))]),
    "g4": ("G4", "element-wise ops are not free",
           [("ReLU and shortcut", _g4(128, True, True)), ("no ReLU", _g4(128, False, True)),
            ("no shortcut", _g4(128, True, False)), ("neither", _g4(128, False, False))]),
}


# -- timing ----------------------------------------------------------------------------------------


def numba_body(program: Program, body: set[str]) -> Callable[[], None]:
    """A call that runs the body's steps on the Numba kernels, one image, one thread (the scaffold
    ran once before, so that the body reads the stem's output)."""
    from .backend_numba import ensure_kernels
    from .numba_steps import PackedWeights, StepTable, cpu

    ensure_kernels()
    packed = PackedWeights(program)
    table = StepTable(packed, 4 * SIZE, 4 * SIZE)
    inside = [i for i, ops in enumerate(table.op_names) if ops and set(ops) <= body]
    first, last = inside[0], inside[-1] + 1
    assert inside == list(range(first, last)), "the body's steps are not contiguous"
    image = np.random.default_rng(1).standard_normal((1, 3, 4 * SIZE, 4 * SIZE)).astype(np.float32)
    ws = table.take_workspace(1)
    features, logits = table.outputs(1, 1)

    def run(rounds):
        cpu.forward(ws, packed.wts, table.itab, table.steps, rounds, image, features, packed.fc_step, logits, 1, False)

    run(np.array([[0, len(table.steps)]], np.int64))  # (the whole network once: the body's input filled)
    only_body = np.array([[first, last]], np.int64)
    return lambda: run(only_body)


def torch_module(program: Program, body: set[str]):
    """The body as torch eager ops (one nn.Module): the same convs, ReLUs, adds and concats."""
    import torch
    from torch import nn

    ops = [op for op in program.ops if op.name in body]

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList()
            for op in ops:
                if isinstance(op, Pointwise):
                    layer = nn.Conv2d(op.in_channels, op.out_channels, 1, groups=op.groups)
                else:
                    layer = nn.Conv2d(op.src.channels, op.src.channels, 3, padding=1, groups=op.src.channels)
                with torch.no_grad():
                    layer.weight.copy_(torch.from_numpy(op.weight.reshape(layer.weight.shape)))
                    layer.bias.copy_(torch.from_numpy(op.bias))
                self.layers.append(layer)

        def forward(self, x):
            values = {ops[0].src: x}
            parts: dict = {}  # the fragments of an output written in slices, concatenated once all are there
            for op, layer in zip(ops, self.layers, strict=True):
                y = layer(values[op.src])
                if getattr(op, "residual", None) is not None:
                    y = y + values[op.residual]
                if op.relu:
                    y = torch.relu(y)
                if y.shape[1] < op.dst.channels:
                    parts.setdefault(op.dst, []).append(y)
                    if sum(t.shape[1] for t in parts[op.dst]) == op.dst.channels:
                        values[op.dst] = torch.cat(parts.pop(op.dst), dim=1)
                else:
                    values[op.dst] = y
            return values[ops[-1].dst]

    return Body().eval()


def torch_body(program: Program, body: set[str], channels: int) -> Callable[[], object]:
    """A call that runs the body in torch eager on one image (torch's threads as set by the caller)."""
    import torch

    module = torch_module(program, body)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((1, channels, SIZE, SIZE)).astype(np.float32))

    def run():
        with torch.inference_mode():
            return module(x)

    return run


@dataclass
class Result:
    """One variant of an experiment: its FLOPs (multiply-adds) and times."""

    variant: str
    macs: int
    numba_s: float
    torch_s: float | None


@dataclass
class Report:
    key: str
    guideline: str
    claim: str
    results: list[Result] = field(default_factory=list)

    def verdict(self) -> str:
        """Does the guideline hold here, on each side, and by how much."""
        return "; ".join(f"{side}: {_verdict(self.key, [getattr(r, attr) for r in self.results])}"
                         for side, attr in (("npshuffle", "numba_s"), ("torch eager", "torch_s"))
                         if all(getattr(r, attr) is not None for r in self.results))


def _verdict(key: str, times: list[float]) -> str:
    base = times[0]
    if key in ("g1", "g3"):  # the first variant (equal widths, one fragment) should be the fastest
        worst = max(times[1:]) / base
        slower = min(times[1:]) / base
        holds = slower > 1.02
        return (f"{'holds' if holds else 'does not hold'} (the others take {slower:.2f}x-{worst:.2f}x the time "
                f"of the first)")
    if key == "g2":  # time should grow with the groups: never falling by more than the 2 % noise, g = 8 above g = 1
        rising = times[-1] > base * 1.02 and all(b > a * 0.98 for a, b in zip(times, times[1:], strict=False))
        return f"{'holds' if rising else 'does not hold'} (g = 8 takes {times[-1] / base:.2f}x g = 1)"
    saving = 1 - times[-1] / base  # g4: dropping the ReLUs and the shortcut should save time
    return (f"{'holds' if saving > 0.05 else 'does not hold'} (without ReLU and shortcut: {100 * saving:+.0f} % "
            "time saved)")


def run(key: str, repeat: int = 20, with_torch: bool = True) -> Report:
    """Build the experiment's variants, then time them in interleaved rounds (each round runs every
    variant once, on each side), so that a machine whose speed drifts slows them all alike; the
    median of ``repeat`` rounds. One thread for both sides."""
    import numba

    guideline, claim, variants = EXPERIMENTS[key]
    calls, macs = [], []
    for _, (body, channels) in variants:
        program, names = _program(body, channels)
        macs.append(sum(r.macs for r in op_rows(program, 4 * SIZE, 4 * SIZE) if r.name in names))
        calls.append((numba_body(program, names), torch_body(program, names, channels) if with_torch else None))
    samples = [([], []) for _ in variants]
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    torch_threads = _set_torch_threads(1) if with_torch else None
    try:
        for _ in range(repeat + 1):  # (round 0 untimed: first calls)
            for (numba_call, torch_call), (numba_times, torch_times) in zip(calls, samples, strict=True):
                numba_times.append(seconds(numba_call))
                if torch_call is not None:
                    torch_times.append(seconds(torch_call))
    finally:
        numba.set_num_threads(threads)
        if torch_threads is not None:
            _set_torch_threads(torch_threads)
    report = Report(key, guideline, claim)
    for (label, _), m, (numba_times, torch_times) in zip(variants, macs, samples, strict=True):
        report.results.append(Result(label, m, float(np.median(numba_times[1:])),
                                     float(np.median(torch_times[1:])) if torch_times else None))
    return report


def _set_torch_threads(threads: int) -> int:
    """Set torch's intra-op threads; returns the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def as_table(report: Report) -> str:
    lines = [f"{report.guideline}: {report.claim} ({BLOCKS} blocks at {SIZE}x{SIZE}, one image, one thread)", "",
             "| variant | MMACs | npshuffle us | x first | torch eager us | x first |",
             "|---|---:|---:|---:|---:|---:|"]
    first = report.results[0]
    for r in report.results:
        torch_cells = (f"{r.torch_s * 1e6:.0f} | {r.torch_s / first.torch_s:.2f}" if r.torch_s is not None
                       else "n/a (no torch) | ")
        lines.append(f"| {r.variant} | {r.macs / 1e6:.0f} | {r.numba_s * 1e6:.0f} | {r.numba_s / first.numba_s:.2f} | "
                     f"{torch_cells} |")
    lines += ["", f"{report.guideline} here: {report.verdict()}"]
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------


def add_lab_arguments(parser) -> None:
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all"], help="which guideline's experiment to run")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per variant, the median kept (default 20)")
    parser.add_argument("--no-torch", action="store_true", help="npshuffle's kernels only")
    parser.add_argument("--png", metavar="FILE", help="also draw the times as bars (one chart for all experiments run)")


def run_lab(args) -> int:
    from .cli import EXIT_OK, fail

    if args.repeat < 1:
        return fail("--repeat must be at least 1")
    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("npshuffle lab: torch is not installed, so the torch eager column is left out "
                  "(pip install torch==2.13.0 for it)")
            with_torch = False
    reports = []
    for key in EXPERIMENTS if args.experiment == "all" else [args.experiment]:
        reports.append(run(key, args.repeat, with_torch))
        print(as_table(reports[-1]) + "\n", flush=True)
    if args.png:
        from .lab_chart import save

        try:
            save(reports, args.png)
        except OSError as exc:
            return fail(f"{args.png}: cannot write the chart ({exc.strerror or exc})")
    return EXIT_OK
