"""Batch-1 latency of every bundled model on the default (Numba) backend, for the README's model table.

    python benchmarks/zoo_latency.py [--calls 200] [--backend numba]

Prints a markdown table: model, file size, median and 90th-percentile latency of one forward pass
(preprocessed 224x224 input already in memory; decoding the JPEG is not included).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from npshuffle.predict import load_model
from npshuffle.preprocess import preprocess_batch
from npshuffle.zoo import available, bundled_path

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "tulip.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--backend", default="numba")
    args = parser.parse_args()
    print(f"| model | size | median ms | p90 ms |  (backend {args.backend}, batch 1, {args.calls} calls)")
    print("|---|---:|---:|---:|")
    for entry in available():
        model = load_model(entry.name, backend=args.backend)
        x = preprocess_batch([EXAMPLE], model.recipe)
        for _ in range(10):
            model.forward(x)
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            model.forward(x)
            times.append(time.perf_counter() - start)
        size = os.path.getsize(bundled_path(entry)) / 2**20
        median, p90 = np.median(times) * 1e3, np.percentile(times, 90) * 1e3
        print(f"| {entry.name} | {size:.1f} MiB | {median:.2f} | {p90:.2f} |")


if __name__ == "__main__":
    main()
