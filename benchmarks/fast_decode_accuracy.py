"""Fast decode (issue 14): top-1 on the flower_photos validation split with it off and on, and the
decode + preprocess time per photo.

    python benchmarks/fast_decode_accuracy.py [--model flowers] [--short 3000] [--limit N] [--shared ../shared]

The split is the seed project's (seed 0, 20 % validation: 731 photos), the one the bundled flower
models were evaluated on (``npshuffle.training.datasets.seed_split``). Those photos are small
(~320x240), under twice the resize target, so fast decode leaves them exactly as they are; the
script therefore also evaluates every validation photo upscaled (bilinear) to ``--short`` pixels on
its shorter side (3000: 4000x3000 for a 4:3 photo, a 12 MP phone photo) and saved as JPEG q90 in a
temporary folder, one at a time, and times ``preprocess_image(load_rgb(path[, fast_decode_for]))``
on those files, exact vs fast. Photos are read with ``npshuffle.images.load_rgb`` (EXIF applied)
in every column. Caveat: an upscaled photo has no detail beyond the original's, so it is kinder to
the DCT-domain downscale than a real 12 MP photo would be.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import npshuffle
from npshuffle.images import load_rgb
from npshuffle.preprocess import preprocess_image
from npshuffle.training.datasets import class_of, seed_split


def top1(model, inputs: list[np.ndarray], labels: list[int]) -> tuple[int, np.ndarray]:
    predicted = []
    for start in range(0, len(inputs), 64):
        predicted.extend(model.forward(np.stack(inputs[start:start + 64])).argmax(1).tolist())
    predicted = np.asarray(predicted)
    return int((predicted == np.asarray(labels)).sum()), predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--model", default="flowers")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--short", type=int, default=3000, help="shorter side of the upscaled photos")
    parser.add_argument("--limit", type=int, default=None, help="only the first N validation photos")
    args = parser.parse_args()
    root = Path(args.shared) / "data" / "flower_photos"
    model = npshuffle.load_model(args.model, backend=args.backend)
    recipe, target = model.recipe, model.recipe["resize"]
    index = {name: i for i, name in enumerate(model.class_names)}
    files = seed_split(root).val[:args.limit]
    labels = [index[class_of(p)] for p in files]

    small = {"exact": [], "fast": []}
    big = {"exact": [], "fast": []}
    seconds = {"exact": [], "fast": []}
    sizes = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        big_path = os.path.join(tmp, "big.jpg")
        for n, relpath in enumerate(files):
            path = str(root / relpath)
            small["exact"].append(preprocess_image(load_rgb(path), recipe))
            small["fast"].append(preprocess_image(load_rgb(path, fast_decode_for=target), recipe))
            image = load_rgb(path)
            w, h = image.size
            scale = args.short / min(w, h)
            image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR).save(big_path, quality=90)
            handed = []
            for key, fast in (("exact", None), ("fast", target)):
                t = time.perf_counter()
                decoded = load_rgb(big_path, fast_decode_for=fast)
                big[key].append(preprocess_image(decoded, recipe))
                seconds[key].append(time.perf_counter() - t)
                handed.append(decoded.size)
            sizes.append(tuple(handed))
            if (n + 1) % 100 == 0:
                print(f"  {n + 1}/{len(files)} photos, {time.perf_counter() - started:.0f} s", flush=True)

    count = len(files)
    rows = []
    for name, data in (("val photos as they are (~320x240)", small),
                       (f"upscaled to {args.short} px shorter side, JPEG q90", big)):
        right_exact, p_exact = top1(model, data["exact"], labels)
        right_fast, p_fast = top1(model, data["fast"], labels)
        changed = int((p_exact != p_fast).sum())
        same = all(np.array_equal(a, b) for a, b in zip(data["exact"], data["fast"], strict=True))
        rows.append((name, right_exact, right_fast, changed, same))
    diffs = [float(np.abs(a - b).mean()) for a, b in zip(big["exact"], big["fast"], strict=True)]

    print(f"\nmodel `{args.model}` ({args.backend}), resize {target}, crop {recipe['crop']}; "
          f"{count} validation photos (seed split, seed 0, 20 %)\n")
    print("| photos | top-1 exact | top-1 fast decode | difference | predictions changed | inputs identical |")
    print("|---|---:|---:|---:|---:|---|")
    for name, right_exact, right_fast, changed, same in rows:
        a, b = 100 * right_exact / count, 100 * right_fast / count
        print(f"| {name} | {a:.2f} % ({right_exact}/{count}) | {b:.2f} % ({right_fast}/{count}) | "
              f"{b - a:+.2f} pt | {changed} | {'yes' if same else 'no'} |")
    ms = {k: 1e3 * np.asarray(v) for k, v in seconds.items()}
    call = f"preprocess_image(load_rgb(path[, fast_decode_for={target}]))"
    print(f"\ndecode + preprocess per upscaled photo (`{call}`):\n")
    print("| path | median | mean | p90 | image handed to the resize |")
    print("|---|---:|---:|---:|---|")
    (full_w, full_h), (fast_w, fast_h) = max(set(sizes), key=sizes.count)  # the most common pair
    pixels = np.mean([f[0] * f[1] / (b[0] * b[1]) for b, f in sizes])
    for key, shown in (("exact", f"full size, most often {full_w}x{full_h}"),
                       ("fast", f"most often {fast_w}x{fast_h}; {pixels:.3f} of the pixels on average")):
        v = ms[key]
        print(f"| {key} | {np.median(v):.1f} ms | {v.mean():.1f} ms | {np.percentile(v, 90):.1f} ms | {shown} |")
    print(f"\nspeed-up (median): {np.median(ms['exact']) / np.median(ms['fast']):.1f}x; mean |fast - exact| of the "
          f"network input: {statistics.mean(diffs):.4f} (max over photos {max(diffs):.4f}), "
          f"in the recipe's units (scale {recipe['scale']:g}); total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
