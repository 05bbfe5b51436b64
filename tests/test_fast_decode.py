"""Opt-in fast decode (issue 14): big photos shrunk at decode time (JPEG draft) or by Image.reduce,
to no less than twice the resize target, then the exact resize; off by default."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import npshuffle
from npshuffle.images import ImageError, fast_decode_factor, load_rgb, shrink
from npshuffle.model_file import DEFAULT_RECIPES, check_recipe
from npshuffle.predict import classify_batch
from npshuffle.preprocess import preprocess_batch, preprocess_image
from tests.conftest import REPO

TORCHVISION = check_recipe(DEFAULT_RECIPES["torchvision"])
MEGVII = check_recipe(DEFAULT_RECIPES["megvii"])
EXAMPLES = [REPO / "examples" / f"{name}.jpg" for name in ("tulip", "daisy", "sunflower")]
BIG = (4000, 3000)  # a 12 MP phone photo

# Mean |fast - exact| after normalisation (torchvision recipe: units of one ImageNet std). Measured
# on the three examples upscaled to 4000x3000, JPEG q90: 0.0028-0.0033 for draft (1000x750) and
# 0.0032-0.0037 for reduce (800x600), i.e. about 0.2 grey levels of 255; the bound leaves 3x room.
# (A wrong orientation or a skipped resize gives differences of order 0.5.)
MEAN_ABS_BOUND = 0.01


def big_photo(source, path, size=BIG, exif=None, **save):
    image = Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    if exif is not None:
        save["exif"] = exif
    image.save(path, **({"quality": 90} if str(path).endswith(".jpg") else {}), **save)
    return str(path)


@pytest.fixture(scope="module")
def big_jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    return [big_photo(p, folder / p.name) for p in EXAMPLES]


def mean_abs(a, b):
    return float(np.abs(a - b).mean())


def test_off_by_default_is_the_exact_path(big_jpegs):
    path = big_jpegs[0]
    exact = load_rgb(path)
    assert exact.size == BIG
    assert load_rgb(path, fast_decode_for=None).size == BIG
    reference = preprocess_image(exact, TORCHVISION)
    np.testing.assert_array_equal(preprocess_batch([path], TORCHVISION)[0], reference)
    np.testing.assert_array_equal(preprocess_image(exact, TORCHVISION, fast_decode=False), reference)


def test_factor_keeps_the_shorter_side_at_least_twice_the_target():
    assert fast_decode_factor((4000, 3000), 256, choices=(8, 4, 2)) == 4  # 3000 // 512 = 5
    assert fast_decode_factor((4000, 3000), 256) == 5
    assert fast_decode_factor((3000, 4000), 256) == 5  # the shorter side, whichever axis it is on
    assert fast_decode_factor((1023, 2000), 256) == 1 and fast_decode_factor((1024, 2000), 256) == 2
    assert fast_decode_factor((384, 256), 256) == 1
    for short in range(1, 5000, 37):
        f = fast_decode_factor((short, short + 11), 219)
        assert f == 1 or -(-short // f) >= 2 * 219


@pytest.mark.parametrize("recipe", [TORCHVISION, MEGVII], ids=["torchvision", "megvii"])
def test_big_jpeg_is_draft_decoded_small_and_close_to_exact(big_jpegs, recipe):
    for path in big_jpegs:
        fast = load_rgb(path, fast_decode_for=recipe["resize"])
        assert fast.size == (1000, 750)  # draft 1/4: 1/16 of the pixels reach the resize
        assert fast.size[0] * fast.size[1] <= BIG[0] * BIG[1] / 4
        assert min(fast.size) >= 2 * recipe["resize"]
        exact = preprocess_image(load_rgb(path), recipe)
        ours = preprocess_image(fast, recipe)
        assert ours.shape == exact.shape
        # megvii works in 0..255: scale its difference to torchvision's units (one std ~ 58 levels)
        unit = 1.0 if recipe is TORCHVISION else 58.0
        assert mean_abs(ours, exact) / unit < MEAN_ABS_BOUND, path
        np.testing.assert_array_equal(preprocess_batch([path], recipe, fast_decode=True)[0], ours)


@pytest.mark.parametrize("orientation, upright", [(6, (3000, 4000)), (8, (3000, 4000)), (3, (4000, 3000))])
def test_exif_rotated_jpeg_is_still_upright(tmp_path, orientation, upright):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = big_photo(EXAMPLES[0], tmp_path / "rotated.jpg", exif=exif)
    exact = load_rgb(path)
    assert exact.size == upright
    fast = load_rgb(path, fast_decode_for=256)
    assert fast.size == (upright[0] // 4, upright[1] // 4)
    difference = mean_abs(preprocess_image(fast, TORCHVISION), preprocess_image(exact, TORCHVISION))
    assert difference < MEAN_ABS_BOUND
    # and the test can tell: the same pixels the way they are stored (not rotated) are far off
    unrotated = Image.open(path).convert("RGB").reduce(4)
    wrong = mean_abs(preprocess_image(unrotated, TORCHVISION), preprocess_image(exact, TORCHVISION))
    assert wrong > 10 * MEAN_ABS_BOUND


def test_png_is_shrunk_with_reduce(tmp_path, monkeypatch):
    path = big_photo(EXAMPLES[1], tmp_path / "big.png")
    factors = []
    original = Image.Image.reduce

    def spy(self, factor, box=None):
        factors.append(factor)
        return original(self, factor, box)

    monkeypatch.setattr(Image.Image, "reduce", spy)
    fast = load_rgb(path, fast_decode_for=256)
    assert factors == [5] and fast.size == (800, 600)  # 3000 // 512 = 5
    exact = load_rgb(path)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(original(exact, 5)))
    difference = mean_abs(preprocess_image(fast, TORCHVISION), preprocess_image(exact, TORCHVISION))
    assert difference < MEAN_ABS_BOUND


@pytest.mark.parametrize("mode", ["P", "RGBA", "L", "I;16"])
def test_other_modes_are_shrunk_too(mode):
    image = Image.open(EXAMPLES[2]).convert("RGB").resize((1600, 1100))
    image = image.convert("L").convert(mode) if mode == "I;16" else image.convert(mode)
    fast = load_rgb(image, fast_decode_for=256)
    assert fast.mode == "RGB" and fast.size == (800, 550)
    assert image.size == (1600, 1100)  # the caller's image is not modified
    assert mean_abs(preprocess_image(fast, TORCHVISION), preprocess_image(load_rgb(image), TORCHVISION)) < 0.05


def test_in_memory_image_and_array_are_reduced():
    image = Image.open(EXAMPLES[0]).convert("RGB").resize((2100, 1400))
    assert shrink(image, 256).size == (1050, 700)
    assert load_rgb(np.asarray(image), fast_decode_for=256).size == (1050, 700)
    exact = preprocess_image(image, TORCHVISION)
    fast = preprocess_image(image, TORCHVISION, fast_decode=True)
    assert mean_abs(fast, exact) < MEAN_ABS_BOUND
    np.testing.assert_array_equal(preprocess_image(shrink(image, 256), TORCHVISION, fast_decode=True), fast)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_small_images_are_not_reduced(path, tmp_path):
    """The examples (~390x256) are under twice any resize target: fast decode changes no pixel."""
    for recipe in (TORCHVISION, MEGVII):
        np.testing.assert_array_equal(load_rgb(path, fast_decode_for=recipe["resize"]), load_rgb(path))
        np.testing.assert_array_equal(preprocess_batch([path], recipe, fast_decode=True),
                                      preprocess_batch([path], recipe))
    png = tmp_path / "small.png"
    Image.new("RGB", (900, 511), (10, 200, 30)).save(png)
    assert load_rgb(png, fast_decode_for=256).size == (900, 511)


def test_size_checks_still_see_the_declared_size(big_jpegs, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # 12 MP > 2x this: PIL refuses
    with pytest.raises(ImageError, match="too large"):
        load_rgb(big_jpegs[0], fast_decode_for=256)


def test_top1_of_the_default_model_is_unchanged(big_jpegs):
    model = npshuffle.load_model(backend="numpy")
    recipe = model.recipe
    exact = preprocess_batch(big_jpegs, recipe)
    fast = preprocess_batch(big_jpegs, recipe, fast_decode=True)
    small = preprocess_batch([str(p) for p in EXAMPLES], recipe)
    labels = [p.class_index for p in classify_batch(model, small, top_k=1)]
    assert [p.class_index for p in classify_batch(model, exact, top_k=1)] == labels
    assert [p.class_index for p in classify_batch(model, fast, top_k=1)] == labels


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sizes_not_divisible_by_the_factor_keep_the_exact_geometry(tmp_path, orientation):
    """4535 / 4 = 1133.75: the shrunk side is rounded up; the resize still maps the full picture's
    box, in every EXIF orientation, so the crop is not shifted by a pixel (that cost ~5.9 levels)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = big_photo(EXAMPLES[1], tmp_path / "odd.jpg", size=(4535, 3001), exif=exif)
    for recipe in (TORCHVISION, MEGVII):
        exact = preprocess_image(load_rgb(path), recipe)
        unit = 1.0 if recipe is TORCHVISION else 58.0
        assert mean_abs(preprocess_batch([path], recipe, fast_decode=True)[0], exact) / unit < MEAN_ABS_BOUND


def test_predict_and_the_cli_pass_fast_decode_down_to_the_decoder(big_jpegs, monkeypatch):
    """``npshuffle.predict(..., fast_decode=True)`` and ``npshuffle predict --fast-decode`` decode
    with the recipe's resize as the target; without them, nothing is shrunk."""
    import importlib

    from npshuffle.cli import main

    predict_module = importlib.import_module("npshuffle.predict")  # (npshuffle.predict is also the function)

    targets = []
    real = predict_module.load_rgb

    def spy(source, fast_decode_for=None, **options):
        targets.append(fast_decode_for)
        return real(source, fast_decode_for=fast_decode_for, **options)

    monkeypatch.setattr(predict_module, "load_rgb", spy)
    model = npshuffle.load_model("flowers", backend="numpy")
    paths = [str(p) for p in big_jpegs]
    fast = npshuffle.predict(paths, model=model, fast_decode=True)
    exact = npshuffle.predict(paths, model=model)
    assert targets == [model.recipe["resize"]] * len(paths) + [None] * len(paths)
    assert [p.label for p in fast] == [p.label for p in exact]
    targets.clear()
    assert main(["predict", paths[0], "--fast-decode", "--device", "numpy", "-k", "1"]) == 0
    assert targets == [npshuffle.load_model().recipe["resize"]]
