"""npshuffle.tta: the views are the model's recipe's crops and their mirrors, probabilities (not
logits) are averaged, and a mirror-symmetric photo gets exactly its plain prediction under ``flip``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npshuffle.model_file import DEFAULT_RECIPES
from npshuffle.predict import load_model
from npshuffle.preprocess import normalise, preprocess_batch, resize_shorter_side
from npshuffle.tta import TTA_VIEWS, tta_probabilities, tta_views

TULIP = str(Path(__file__).resolve().parent.parent / "examples" / "tulip.jpg")
SMALL = dict(DEFAULT_RECIPES["torchvision"], resize=40, crop=32)


def random_photo(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def mirror_symmetric(w: int, h: int) -> Image.Image:
    """A photo equal to its own mirror image (left half random, right half its reflection)."""
    half = np.asarray(random_photo(w // 2, h, seed=1))
    return Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1), "RGB")


class SideModel:
    """A stub: logits from d = (mean of the left half - mean of the right half) of channel 0, as
    [s d, 1 - s d, -s d]; its mirror image has -d, so a photo and its mirror disagree."""

    class_names = ["left", "middle", "right"]
    recipe = SMALL

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.calls: list[int] = []

    def forward(self, batch):
        self.calls.append(len(batch))
        half = batch.shape[3] // 2
        d = self.scale * (batch[:, 0, :, :half].mean(axis=(1, 2)) - batch[:, 0, :, half:].mean(axis=(1, 2)))
        return np.stack([d, 1 - d, -d], axis=1).astype(np.float32)


def softmax64(z):
    e = np.exp(np.asarray(z, np.float64) - np.max(z, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


V2_RECIPE = dict(DEFAULT_RECIPES["torchvision"], resize=219, crop=192)  # flowers_v2's sizes


@pytest.mark.parametrize("recipe", [DEFAULT_RECIPES["megvii"], V2_RECIPE])
def test_views_are_the_recipes_crops_and_their_mirrors(recipe):
    photo = random_photo(301, 233)
    crop = recipe["crop"]
    flip = tta_views(photo, recipe, "flip")
    ten = tta_views(photo, recipe, "ten-crop")
    assert flip.shape == (2, 3, crop, crop) and ten.shape == (10, 3, crop, crop)
    assert flip.dtype == ten.dtype == np.float32
    plain = preprocess_batch([photo], recipe)[0]
    assert np.array_equal(flip[0], plain) and np.array_equal(ten[0], plain)  # view 0: what plain predict sees
    assert np.array_equal(flip[1], plain[:, :, ::-1])
    resized = np.asarray(resize_shorter_side(photo, recipe["resize"], recipe["interpolation"]))
    h, w = resized.shape[:2]
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop)]  # top-left, top-right, bottom-left, -right
    for i, (top, left) in enumerate(corners, start=1):
        window = np.ascontiguousarray(resized[top:top + crop, left:left + crop])
        assert np.array_equal(ten[i], normalise(window, recipe))
    for i in range(5):
        assert np.array_equal(ten[5 + i], ten[i][:, :, ::-1])


def test_probabilities_are_averaged_not_logits():
    # bright on the left: view 0 has d > 0, its mirror d < 0
    pixels = np.zeros((40, 50, 3), np.uint8)
    pixels[:, :25, 0] = 255
    photo = Image.fromarray(pixels, "RGB")
    model = SideModel(scale=4.0)
    views = tta_views(photo, SMALL, "flip")
    logits = model.forward(views)  # (2, 3): [s d, 1 - s d, -s d] and [-s d, 1 + s d, s d]
    assert logits[0, 0] > 5 and logits[1, 0] < -5
    expected = softmax64(logits).mean(axis=0)
    got = tta_probabilities(model, [photo], "flip")
    assert got.shape == (1, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)
    # the two averages disagree here: the mean of the logits is [0, 1, 0] ("middle" wins), while
    # the mean of the probabilities keeps view 0's near-certain "left" (1/2) above "middle"
    assert logits.mean(axis=0).argmax() == 1 and got[0].argmax() == 0


def test_shapes_rows_sum_to_one_and_batches_do_not_matter():
    photos = [random_photo(50 + i, 44, seed=i) for i in range(7)]
    model = SideModel(scale=3.0)
    for views, count in TTA_VIEWS.items():
        ref = tta_probabilities(model, photos, views, batch_size=1000)
        assert ref.shape == (7, 3) and ref.dtype == np.float32
        np.testing.assert_allclose(ref.sum(axis=1), 1, rtol=1e-6)
        for batch_size in (1, count, 3 * count + 1):
            model.calls.clear()
            np.testing.assert_array_equal(tta_probabilities(model, photos, views, batch_size), ref)
            # whole photos per network pass, never more views than batch_size (but one photo's at least)
            assert all(n % count == 0 and n <= max(batch_size, count) for n in model.calls)
    assert tta_probabilities(model, [], "flip").shape == (0, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown TTA views"):
        tta_probabilities(SideModel(), [random_photo(50, 44)], "five-crop")
    with pytest.raises(TypeError, match="list"):
        tta_probabilities(SideModel(), random_photo(50, 44))



def test_an_unusable_photo_raises_an_image_error_naming_it(tmp_path):
    """The photo a message is about is named, and every failure is an ImageError, as the docstring
    says: a 1x300 strip's said only "image of 1x300 pixels" (which of the list?), and a PIL image
    of a mode PIL cannot convert raised a bare ValueError."""
    from npshuffle.images import ImageError

    strip = tmp_path / "strip.png"
    random_photo(1, 300).save(strip)
    cases = [(str(strip), str(strip), "aspect ratio"), (Image.new("La", (40, 40)), "<PIL La image 40x40>", "La")]
    for bad, name, problem in cases:
        with pytest.raises(ImageError) as info:
            tta_probabilities(SideModel(), [random_photo(50, 44), bad], "flip")
        assert str(info.value).startswith(f"{name}: ") and problem in str(info.value), str(info.value)


@pytest.fixture(scope="module")
def flowers():
    return load_model("flowers", backend="numpy")


def test_a_mirror_symmetric_photo_gets_its_plain_prediction(flowers):
    # 300 x 256: no resize at 256, a crop 38 px from either side: the crop is mirror-symmetric too
    photo = mirror_symmetric(300, 256)
    views = tta_views(photo, flowers.recipe, "flip")
    assert np.array_equal(views[0], views[1])
    plain = softmax64(flowers.forward(preprocess_batch([photo], flowers.recipe)))[0]
    got = tta_probabilities(flowers, [photo], "flip")[0]
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-7)
    # and a photo that is not symmetric does not (the check above can fail)
    other = random_photo(300, 256, seed=5)
    plain_other = softmax64(flowers.forward(preprocess_batch([other], flowers.recipe)))[0]
    assert np.abs(tta_probabilities(flowers, [other], "flip")[0] - plain_other).max() > 1e-4


def test_real_model_on_a_path(flowers):
    for views in TTA_VIEWS:
        p = tta_probabilities(flowers, [TULIP, TULIP], views)
        assert p.shape == (2, 5) and np.array_equal(p[0], p[1])
        assert flowers.class_names[int(p[0].argmax())] == "tulips"


@pytest.mark.parametrize("views", ["flip", "ten-crop"])
def test_predict_with_tta_gives_tta_probabilities_and_keeps_bad_inputs_as_error_rows(tmp_path, views):
    import npshuffle
    from npshuffle.predict import load_model, softmax
    from npshuffle.tta import tta_probabilities

    model = load_model("flowers", backend="numpy")
    photos = sorted(str(p) for p in (Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    got = npshuffle.predict([photos[0], str(broken), *photos[1:]], model, top_k=5, batch_size=2, tta=views)
    assert got[1].error is not None and "broken.jpg" in got[1].error
    good = [p for p in got if p.ok]
    expected = tta_probabilities(model, photos, views)  # (N, classes)
    for prediction, probabilities in zip(good, expected, strict=True):
        assert prediction.class_index == int(np.argmax(probabilities))
        shown = dict(prediction.top)
        for i, name in enumerate(model.class_names):
            assert shown[name] == pytest.approx(float(probabilities[i]), abs=1e-6)
        np.testing.assert_allclose(softmax(prediction.logits), probabilities, atol=1e-6)  # logits: log of the mean
    plain = npshuffle.predict(photos, model, top_k=5)
    assert any(abs(p.probability - q.probability) > 1e-4 for p, q in zip(good, plain, strict=True))  # TTA did act



@pytest.mark.parametrize("views", ["flip", "ten-crop"])
def test_a_confident_model_is_not_called_broken_under_tta(tmp_path, views):
    """A class whose probability underflows to 0 in every view (logits 100+ apart: a confident
    model, finite scores) made log(mean) -inf, and each photo an error row saying the model file
    is broken, while plain prediction classified it. Only non-finite view scores are an error."""
    import npshuffle
    from npshuffle.model_file import save_model_file
    from npshuffle.predict import softmax
    from npshuffle.zoo import ZOO, bundled_path

    original = npshuffle.model_file.load_model_file(bundled_path(ZOO["flowers"]))
    weights = dict(original.weights)
    weights["classifier.weight"] = weights["classifier.weight"] * np.float32(300)
    path = tmp_path / "confident.npz"
    save_model_file(path, original.spec, original.dialect, weights, class_names=original.class_names,
                    recipe=original.recipe)
    model = load_model(str(path), backend="numpy")
    plain = npshuffle.predict(TULIP, model)
    assert plain.label == "tulips" and min(p for _, p in plain.top) == 0.0  # (some class underflows)
    got = npshuffle.predict([TULIP], model, tta=views)[0]
    assert got.ok and got.label == "tulips" and np.isfinite(got.logits).all(), got.error
    np.testing.assert_allclose(softmax(got.logits), tta_probabilities(model, [TULIP], views)[0], atol=1e-6)



@pytest.mark.parametrize("views, batch_size, most", [("flip", 4, 4), ("ten-crop", 16, 10), ("ten-crop", 4, 10)])
def test_predict_with_tta_keeps_batch_size_network_inputs_per_pass(views, batch_size, most):
    """--batch-size is the images per network pass: with TTA a batch of 16 photos went through as
    160 views at once (ten-crop: 7x plain prediction's memory, 16 GB with a 2048 px recipe). Now a
    batch holds batch_size // V photos, one photo's views at least, as in tta_probabilities."""
    import npshuffle
    from npshuffle.model import Model
    from npshuffle.zoo import ZOO, bundled_path

    model = Model.load(bundled_path(ZOO["flowers"]), backend="numpy")
    sizes, forward = [], model.forward
    model.forward = lambda x, **kw: sizes.append(len(x)) or forward(x, **kw)
    got = npshuffle.predict([TULIP] * 5, model, batch_size=batch_size, tta=views, workers=1)
    assert [p.label for p in got] == ["tulips"] * 5
    assert sum(sizes) == 5 * TTA_VIEWS[views] and max(sizes) == most, sizes


def test_the_cli_takes_tta_and_refuses_it_with_fast_decode(capsys):
    from npshuffle.cli import main

    tulip = str(Path(__file__).resolve().parent.parent / "examples" / "tulip.jpg")
    assert main(["predict", tulip, "--tta", "--device", "numpy", "-f", "json", "-k", "1"]) == 0
    assert '"label": "tulips"' in capsys.readouterr().out
    assert main(["predict", tulip, "--tta", "--fast-decode"]) == 2
    assert "--tta" in capsys.readouterr().err
