"""Worst-case numerical agreement between npshuffle and the torch oracle over many random models.

    python benchmarks/parity_sweep.py [--models 200] [--backend numpy]

Each model: a random small V1/V2 spec in a random dialect, random weights and BN statistics, a
random batch (1-4) of random size (32-96 px). Prints the worst max|ours - torch| / max|torch| and
how many top-1 labels differ.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from npshuffle.archs import V1Spec, V2Spec, build_plan
from npshuffle.backends import get_backend
from npshuffle.training.torch_ref import build_torch_model, randomize_
from weights_convert import convert_state_dict


def random_spec(rng: random.Random):
    stages = rng.randint(1, 3)
    repeats = tuple(rng.randint(1, 3) for _ in range(stages))
    classes = rng.randint(2, 50)
    if rng.random() < 0.5:
        g = rng.choice([1, 2, 3, 4, 8])
        stem, widths = g * rng.randint(1, 3), []
        for _ in range(stages):
            widths.append(4 * g * rng.randint((widths[-1] if widths else stem) // (4 * g) + 1,
                                              (widths[-1] if widths else stem) // (4 * g) + 3))
        return V1Spec(g, stem, tuple(widths), repeats, classes)
    stem, widths = rng.randint(3, 24), []
    for _ in range(stages):
        previous = widths[-1] if widths else stem
        widths.append(2 * rng.randint(previous // 2 + 1, previous // 2 + 12))
    return V2Spec(stem, tuple(widths), rng.randint(4, 64), repeats, classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    backend = get_backend(args.backend)
    worst, top1_diff, images = 0.0, 0, 0
    for i in range(args.models):
        spec, dialect = random_spec(rng), rng.choice(["torchvision", "megvii"])
        generator = torch.Generator().manual_seed(i)
        net = randomize_(build_torch_model(spec, dialect), generator)
        converted = convert_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
        run = backend.prepare(build_plan(converted.spec, converted.dialect), converted.weights)
        x = torch.randn(rng.randint(1, 4), 3, rng.randint(32, 96), rng.randint(32, 96), generator=generator)
        with torch.no_grad():
            expected = net(x).numpy()
        ours = run(x.numpy())
        worst = max(worst, float(np.abs(ours - expected).max() / np.abs(expected).max()))
        top1_diff += int((ours.argmax(1) != expected.argmax(1)).sum())
        images += len(x)
    print(f"{args.models} random models, {images} images, backend {args.backend}: worst relative error "
          f"{worst:.2e}, top-1 differences {top1_diff}")


if __name__ == "__main__":
    main()
