"""Preprocessing per photo: PIL's resize + crop + the one-pass normalisation, against the Numba
one-pass resize + crop + normalise (``kernels/cpu/resample.py``), on the same decoded photos.

    python benchmarks/preprocess_time.py [--photos ../shared/data/flower_photos] [--every 5] [--rounds 5]
    python benchmarks/preprocess_time.py --photos ~/.cache/npshuffle/bench_e2e --glob "*.jpg" --every 10

Decodes every ``--every``-th photo of the folder once (decoding is not timed), then times
``preprocess_image`` over all of them with each path, the two alternating for ``--rounds`` rounds,
and prints the median ms per photo of each and checks that both give identical arrays. One thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from npshuffle import backend_numba
from npshuffle.images import load_rgb
from npshuffle.model_file import DEFAULT_RECIPES, check_recipe
from npshuffle.preprocess import preprocess_image

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=str(HERE.parent.parent / "shared" / "data" / "flower_photos"))
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--glob", default="*/*.jpg",
                        help="which files of --photos (default */*.jpg: a class-per-folder set; *.jpg for a flat "
                             "folder such as bench_e2e's 12 MP cache)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recipe", default="torchvision", choices=sorted(DEFAULT_RECIPES))
    args = parser.parse_args()
    recipe = check_recipe(DEFAULT_RECIPES[args.recipe])
    paths = sorted(Path(args.photos).glob(args.glob))[:: args.every]
    images = [load_rgb(p) for p in paths]
    backend_numba.ensure_kernels()
    resampler = backend_numba.exact_resampler()
    options_by_name = {"PIL resize + crop, then normalise": {}, "one-pass kernel": {"resampler": resampler}}
    for options in options_by_name.values():  # (one untimed pass each)
        [preprocess_image(im, recipe, **options) for im in images[:20]]
    seconds: dict[str, list[float]] = {name: [] for name in options_by_name}
    for _ in range(args.rounds):
        for name, options in options_by_name.items():
            start = time.perf_counter()
            for im in images:
                preprocess_image(im, recipe, **options)
            seconds[name].append(time.perf_counter() - start)
    same = all(np.array_equal(preprocess_image(im, recipe), preprocess_image(im, recipe, resampler=resampler))
               for im in images)
    sizes = {}
    for im in images:
        sizes[im.size] = sizes.get(im.size, 0) + 1
    common = ", ".join(f"{w}x{h}" for (w, h), _ in sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
    print(f"{len(images)} photos from {args.photos} (most common sizes {common}); recipe {args.recipe}; "
          f"median of {args.rounds} rounds, one thread")
    base = None
    for name, s in seconds.items():
        ms = float(np.median(s)) / len(images) * 1e3
        base = base or ms
        print(f"  {name:36s} {ms:6.3f} ms/photo  ({base / ms:.2f}x)")
    print(f"  identical arrays: {same}")


if __name__ == "__main__":
    main()
