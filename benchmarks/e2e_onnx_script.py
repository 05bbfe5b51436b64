"""The straightforward user's script that ``bench_e2e.py`` compares npshuffle with: PIL + ONNX Runtime.

What a user who exported a ShuffleNet to ONNX would write, no tricks: PIL opens each photo and
converts it to RGB, resizes the shorter side with bilinear filtering (PIL's resize antialiases, as
torchvision's ``Resize`` does on PIL images), crops the centre, normalises per the model's recipe
(torchvision: RGB, /255, ImageNet mean/std; Megvii: BGR, 0..255 as is), stacks batches and calls
``InferenceSession.run`` with the default session options::

    python benchmarks/e2e_onnx_script.py model.onnx PHOTO_DIR [--megvii] [--batch-size 16]

prints one ``path,class_index`` line per photo.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

TORCHVISION = {"resize": 256, "crop": 224, "bgr": False, "scale": 1 / 255,
               "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
MEGVII = {"resize": 256, "crop": 224, "bgr": True, "scale": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def preprocess(path: str, recipe: dict) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    size = recipe["resize"]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    crop = recipe["crop"]
    left, top = int(round((new_w - crop) / 2)), int(round((new_h - crop) / 2))
    image = image.crop((left, top, left + crop, top + crop))
    x = np.asarray(image, dtype=np.float32)
    if recipe["bgr"]:
        x = x[:, :, ::-1]
    x = (x * recipe["scale"] - np.array(recipe["mean"], np.float32)) / np.array(recipe["std"], np.float32)
    return x.transpose(2, 0, 1)


def classify(paths: list[str], session, recipe: dict, batch_size: int = 16) -> list[int]:
    """Top-1 class index of each photo."""
    name = session.get_inputs()[0].name
    out: list[int] = []
    for i in range(0, len(paths), batch_size):
        batch = np.stack([preprocess(p, recipe) for p in paths[i:i + batch_size]]).astype(np.float32)
        logits = session.run(None, {name: batch})[0]
        out.extend(int(k) for k in logits.argmax(axis=1))
    return out


def main() -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help=".onnx file")
    parser.add_argument("folder", help="folder of photos (searched recursively)")
    parser.add_argument("--megvii", action="store_true", help="Megvii recipe (BGR, 0..255) instead of torchvision's")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(args.folder) for f in files
                   if f.lower().endswith((".jpg", ".jpeg", ".png")))
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    for path, k in zip(paths, classify(paths, session, MEGVII if args.megvii else TORCHVISION, args.batch_size),
                       strict=True):
        print(f"{path},{k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
