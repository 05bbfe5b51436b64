"""Generate tests/data/preprocess_fixtures.npz with REAL torchvision transforms.

torchvision does not import beside this project's torch 2.13, so this ran once in a separate
environment (`pip install torch==2.14.1 torchvision==0.29.1`):

    /tmp/tvenv/bin/python tests/data/make_preprocess_fixtures.py

It stores, per case (synthetic images from tests/preprocess_cases.py, photos from examples/),
torchvision's output of Resize(size) + CenterCrop(224) on the PIL image (uint8 pixels), plus
ToTensor + Normalize for one case.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from preprocess_cases import SIZES, synthetic  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    cases = {}
    for i, (w, h) in enumerate(SIZES):
        cases[f"synthetic_{w}x{h}"] = synthetic(w, h, i)
    for name in ("tulip", "daisy", "sunflower"):
        cases[name] = np.asarray(Image.open(REPO / "examples" / f"{name}.jpg").convert("RGB"))
    out = {}
    for name, pixels in cases.items():
        image = Image.fromarray(pixels)
        for resize in (256, 232) if name.startswith("synthetic") else (256,):
            cropped = T.CenterCrop(224)(T.Resize(resize)(image))
            out[f"{name}/resize{resize}"] = np.asarray(cropped)
    tensor = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])(
        Image.fromarray(cases["tulip"])
    )
    out["tulip/normalized"] = tensor.numpy()
    np.savez_compressed(HERE / "preprocess_fixtures.npz", **out)
    print(f"torch {torch.__version__}, torchvision {T.__name__} -> {len(out)} arrays")


if __name__ == "__main__":
    main()
