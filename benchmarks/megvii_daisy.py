"""How many flower_photos daisies do the Megvii ImageNet V1 checkpoints call ImageNet "daisy"?

    python benchmarks/megvii_daisy.py [--shared ../shared]

Converts both checkpoints from ../shared/weights, runs every daisy photo through npshuffle and
prints the fraction labelled "daisy" (ImageNet class 985), with the top wrong labels.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

from PIL import Image

from npshuffle.model import Model
from npshuffle.preprocess import preprocess_batch
from weights_convert import convert_file

DAISY = 985


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--backend", default="numpy")
    args = parser.parse_args()
    shared = Path(args.shared)
    photos = sorted((shared / "data" / "flower_photos" / "daisy").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        for groups in (3, 8):
            out = Path(tmp) / f"g{groups}.npz"
            convert_file(shared / "weights" / f"ShuffleNetV1_g{groups}_0.5x.pth.tar", out)
            model = Model.load(out, backend=args.backend)
            labels = []
            for start in range(0, len(photos), 32):
                batch = [Image.open(p) for p in photos[start:start + 32]]
                labels.extend(model.forward(preprocess_batch(batch, model.recipe)).argmax(1).tolist())
            hits = sum(label == DAISY for label in labels)
            wrong = collections.Counter(model.class_names[x] for x in labels if x != DAISY).most_common(3)
            print(f"ShuffleNet V1 g{groups} 0.5x: {hits}/{len(labels)} daisy photos -> 'daisy' "
                  f"({100 * hits / len(labels):.1f} %); most common other labels: {wrong}")


if __name__ == "__main__":
    main()
