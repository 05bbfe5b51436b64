"""AugMix (npshuffle/training/augmix.py): seeded, shape-keeping, and a blend of the crop with its chains."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from npshuffle.training import augmix as A


def random_crop(seed: int, height: int = 32, width: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_augmix_is_seeded_keeps_size_and_mode_and_changes_most_crops():
    crop = random_crop(1)
    torch.manual_seed(3)
    first = [A.augmix(crop) for _ in range(20)]
    torch.manual_seed(3)
    again = [A.augmix(crop) for _ in range(20)]
    for a, b in zip(first, again, strict=True):
        assert a.size == crop.size and a.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sum(not np.array_equal(np.asarray(a), np.asarray(crop)) for a in first) >= 15


@pytest.mark.parametrize("operation", A.OPERATIONS)
def test_each_operation_keeps_size_and_mode_and_acts_on_a_photo_like_crop(operation):
    # a smooth low-contrast gradient: autocontrast and equalize stretch it, the others move or recode it
    ramp = np.linspace(60, 140, 40, dtype=np.float32)
    pixels = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[::-1], (32, 1)), np.full((32, 40), 200.0)], axis=-1)
    pixels[8:20, 10:18] = (255, 255, 0)  # something for rotate, shear and translate to move
    crop = Image.fromarray(pixels.astype(np.uint8))
    torch.manual_seed(0)
    out = operation(crop, A.SEVERITY)
    assert out.size == crop.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(crop))


def test_the_result_is_one_blend_of_the_crop_with_its_chains(monkeypatch):
    # three chains of one known operation (inversion): their weights sum to 1, so every pixel is
    # (1 - m) crop + m inverted, one m for all (a weight lost or counted twice breaks that)
    monkeypatch.setattr(A, "MAX_DEPTH", 1)
    monkeypatch.setattr(A, "OPERATIONS", (lambda image, level: ImageOps.invert(image),))
    crop = np.asarray(random_crop(2), dtype=np.float64)
    torch.manual_seed(1)
    shares = []
    for _ in range(5):
        out = np.asarray(A.augmix(Image.fromarray(crop.astype(np.uint8))), dtype=np.float64)
        spread = (255 - crop) - crop  # inverted minus crop
        usable = np.abs(spread) > 100  # where the share can be read to better than 0.01
        share = (out - crop)[usable] / spread[usable]
        assert share.max() - share.min() < 0.02 and -0.01 < share.mean() < 1.01
        shares.append(share.mean())
    assert max(shares) - min(shares) > 0.05  # the share is drawn per crop


def test_operation_strengths_follow_the_papers_scale(monkeypatch):
    # at level L (0..10 scale): rotate 3 L degrees, shear 0.03 L, translate L / 30 of the side
    magnitudes = []
    monkeypatch.setattr(A, "_signed", lambda magnitude: magnitudes.append(magnitude) or magnitude)
    crop = random_crop(3, height=30, width=60)
    for operation in (A._rotate, A._shear_x, A._shear_y, A._translate_x, A._translate_y):
        operation(crop, 3.0)
    assert magnitudes == pytest.approx([9.0, 0.09, 0.09, 6.0, 3.0])


def test_dirichlet_weights_are_positive_and_sum_to_one():
    torch.manual_seed(0)
    for count in (1, 3, 5):
        weights = A._dirichlet_ones(count)
        assert weights.shape == (count,) and (weights > 0).all()
        assert weights.sum() == pytest.approx(1.0)


def test_the_dataset_refuses_an_unknown_augmentation(tmp_path):
    from npshuffle.training.pipeline import FolderDataset

    with pytest.raises(ValueError, match="augment must be one of"):
        FolderDataset(str(tmp_path), [], [], 32, True, augment="strongest")
