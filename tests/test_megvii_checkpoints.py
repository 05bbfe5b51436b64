"""The real Megvii ShuffleNet V1 0.5x ImageNet checkpoints, end to end on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from npshuffle.model import Model
from npshuffle.preprocess import preprocess_batch
from npshuffle.training.torch_ref import build_torch_model
from tests.conftest import FLOWERS, WEIGHTS, require
from weights_convert import convert_file

DAISY = 985  # ImageNet-1k class index of "daisy"
PHOTOS_PER_CLASS = 8
DAISY_SAMPLE = 48


@pytest.fixture(scope="module", params=[3, 8], ids=["g3", "g8"])
def converted(request, tmp_path_factory):
    groups = request.param
    checkpoint = require(WEIGHTS / f"ShuffleNetV1_g{groups}_0.5x.pth.tar")
    out = tmp_path_factory.mktemp("models") / f"g{groups}.npz"
    meta = convert_file(checkpoint, out)
    model = Model.load(out)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    oracle = build_torch_model(model.file.spec, "megvii")
    oracle.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    return meta, model, oracle.eval()


def photos(folder: str, count: int) -> list[Image.Image]:
    files = sorted(require(FLOWERS / folder).glob("*.jpg"))[:count]
    return [Image.open(f) for f in files]


def test_metadata_describes_the_checkpoint(converted):
    meta, model, _ = converted
    assert meta["dialect"] == "megvii" and meta["num_classes"] == 1000
    assert meta["variant"] in ("shufflenet_v1_g3_x0_5", "shufflenet_v1_g8_x0_5")
    assert model.class_names[DAISY] == "daisy"
    assert meta["preprocess"]["channel_order"] == "BGR" and meta["preprocess"]["scale"] == 1.0
    assert len(meta["source"]["sha256"]) == 64


def test_matches_the_torch_oracle_on_real_photos(converted):
    _, model, oracle = converted
    classes = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
    images = [image for name in classes for image in photos(name, PHOTOS_PER_CLASS)]
    x = preprocess_batch(images, model.recipe)
    with torch.no_grad():
        expected = oracle(torch.from_numpy(x)).numpy()
    ours = model.forward(x)
    scale = np.abs(expected).max(axis=1, keepdims=True)
    assert (np.abs(ours - expected) <= 1e-4 * scale).all()
    assert (ours.argmax(1) == expected.argmax(1)).all()


def test_most_daisies_are_imagenet_daisies(converted):
    _, model, _ = converted
    logits = model.forward(preprocess_batch(photos("daisy", DAISY_SAMPLE), model.recipe))
    fraction = float((logits.argmax(1) == DAISY).mean())
    # over all 633 daisy photos: g3 77.1 %, g8 78.2 % (benchmarks/megvii_daisy.py)
    assert fraction >= 0.6, f"only {fraction:.0%} of daisy photos classified as ImageNet 'daisy'"
