"""Are two versions of npshuffle bitwise the same? Dump one backend's logits, then compare dumps.

    (cd /tmp/old && PYTHONPATH=/tmp/old python /path/to/benchmarks/dump_logits.py dump old.npz --root /tmp/old)
    python benchmarks/dump_logits.py dump new.npz
    python benchmarks/dump_logits.py compare old.npz new.npz

``dump`` runs the bundled models (a 224x224 batch of 1 and a 97x131 batch of 3) and random-weight
V1 g1 / g3 / g8, V2 x0.5 / x1.0 and a small V1, in both dialects, on ``--backend`` (default numba),
and saves every logits array. ``compare`` prints how many are bitwise equal (and the largest
difference of any that is not). For a refactoring that must not change a single bit.
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np


def dump(out: str, root: str, backend: str) -> None:
    import npshuffle
    from npshuffle.archs import V1Spec, build_plan, v1_spec, v2_spec
    from npshuffle.backends import get_backend

    logits = {}
    rng = np.random.default_rng(0)
    inputs = {"b1": rng.standard_normal((1, 3, 224, 224)).astype(np.float32),
              "b3": rng.standard_normal((3, 3, 97, 131)).astype(np.float32)}
    for path in sorted(glob.glob(os.path.join(root, "npshuffle", "models", "*.npz"))):
        model = npshuffle.load_model(path, backend=backend)
        for key, x in inputs.items():
            logits[f"{os.path.basename(path)}/{key}"] = model.forward(x)
    specs = {"v1g3": v1_spec(3, "0.5x", 10), "v1g1": v1_spec(1, "0.5x", 10), "v1g8": v1_spec(8, "1.0x", 10),
             "v2x05": v2_spec("0.5x", 10), "v2x10": v2_spec("1.0x", 10), "v1small": V1Spec(2, 8, (16, 32), (2, 1), 5)}
    for name, spec in specs.items():
        for dialect in ("torchvision", "megvii"):
            plan = build_plan(spec, dialect)
            weights_rng = np.random.default_rng(1)
            weights = {k: (weights_rng.standard_normal(s) * 0.3).astype(np.float32)
                       for k, s in plan.weight_shapes().items()}
            run = get_backend(backend).prepare(plan, weights)
            for key, x in inputs.items():
                logits[f"{name}/{dialect}/{key}"] = run(x)
    np.savez(out, **logits)
    print(f"{len(logits)} logits arrays from {npshuffle.__file__} ({backend}) -> {out}")


def compare(first: str, second: str) -> int:
    a, b = np.load(first), np.load(second)
    if sorted(a.files) != sorted(b.files):
        print(f"the dumps hold different cases: {sorted(set(a.files) ^ set(b.files))}")
        return 1
    differ = [k for k in a.files if not np.array_equal(a[k], b[k])]
    for k in differ:
        print(f"{k}: max |difference| {np.abs(a[k] - b[k]).max():.3g}")
    print(f"{len(a.files) - len(differ)} of {len(a.files)} bitwise equal")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dump")
    p.add_argument("out")
    p.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                   help="the checkout whose bundled models to run (default: this one)")
    p.add_argument("--backend", default="numba", choices=["numba", "numpy"])
    p = sub.add_parser("compare")
    p.add_argument("first")
    p.add_argument("second")
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.out, args.root, args.backend)
        return 0
    return compare(args.first, args.second)


if __name__ == "__main__":
    raise SystemExit(main())
