"""The public Python API: npshuffle.predict / load_model / list_models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import npshuffle
from npshuffle.predict import predict_stream
from tests.conftest import REPO

TULIP = str(REPO / "examples" / "tulip.jpg")
DAISY = str(REPO / "examples" / "daisy.jpg")


@pytest.fixture(scope="module")
def model():
    return npshuffle.load_model("imagenet_v1_g3_x0_5", backend="numpy")


def test_single_image_gives_one_prediction(model):
    p = npshuffle.predict(DAISY, model=model, top_k=3)
    assert isinstance(p, npshuffle.Prediction)
    assert len(p.top) == 3 and p.label == "daisy" and p.class_index == 985
    probabilities = [prob for _, prob in p.top]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < probabilities[0] <= 1
    assert p.logits.shape == (1000,) and int(np.argmax(p.logits)) == p.class_index
    assert p.source == DAISY


def test_path_pil_and_array_inputs_agree(model):
    image = Image.open(DAISY)
    from_path, from_pil, from_array = npshuffle.predict([DAISY, image, np.asarray(image)], model=model)
    np.testing.assert_array_equal(from_path.logits, from_pil.logits)
    np.testing.assert_array_equal(from_path.logits, from_array.logits)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", ["flowers", "flowers_v2", "imagenet_v1_g8_x0_5"])
def test_an_images_logits_do_not_depend_on_its_place_in_the_batch(backend, name):
    """Bitwise: the same photo alone, or at any position of a batch of any size, gets the same
    logits (re-running a folder in another order or with another batch size changes nothing)."""
    from npshuffle.preprocess import preprocess_image

    m = npshuffle.load_model(name, backend=backend)
    daisy, tulip = (preprocess_image(Image.open(p).convert("RGB"), m.recipe) for p in (DAISY, TULIP))
    alone = m.forward(daisy[None])[0]
    for n, positions in ((2, (0, 1)), (5, range(5)), (17, (0, 3, 16))):
        for position in positions:
            batch = np.stack([tulip] * n)
            batch[position] = daisy
            np.testing.assert_array_equal(m.forward(batch)[position], alone, err_msg=f"batch {n}, position {position}")


def test_batching_does_not_change_results(model):
    images = [TULIP, DAISY, TULIP]
    one_by_one = [npshuffle.predict(i, model=model).logits for i in images]
    batched = npshuffle.predict(images, model=model, batch_size=2)
    for a, b in zip(one_by_one, batched, strict=True):
        np.testing.assert_allclose(a, b.logits, rtol=0, atol=1e-4 * np.abs(a).max())


def test_a_broken_image_in_a_list_is_reported_not_fatal(model, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    results = npshuffle.predict([DAISY, str(broken), TULIP], model=model)
    assert [r.ok for r in results] == [True, False, True]
    assert "broken.jpg" in results[1].error and "not an image" in results[1].error
    assert results[1].label is None and results[1].to_dict() == {"source": str(broken), "error": results[1].error}
    with pytest.raises(npshuffle.ImageError, match="broken.jpg"):
        npshuffle.predict(str(broken), model=model)


def test_load_model_is_cached_per_file_and_backend():
    a = npshuffle.load_model("imagenet_v1_g3_x0_5", backend="numpy")
    assert npshuffle.load_model("imagenet_v1_g3_x0_5", backend="numpy") is a


def test_unknown_or_missing_models_give_clear_errors(tmp_path):
    with pytest.raises(npshuffle.ModelFileError, match="unknown model 'resnet50'"):
        npshuffle.load_model("resnet50")
    with pytest.raises(npshuffle.ModelFileError, match="no such model file"):
        npshuffle.load_model(str(tmp_path / "gone.npz"))
    with pytest.raises(npshuffle.BackendError, match="unknown backend"):
        npshuffle.load_model("imagenet_v1_g3_x0_5", backend="tpu")


def test_top_k_is_validated_and_capped(model):
    with pytest.raises(ValueError, match="top_k"):
        npshuffle.predict(DAISY, model=model, top_k=0)
    assert len(npshuffle.predict(DAISY, model=model, top_k=5000).top) == 1000



@pytest.mark.parametrize("tta", [None, "flip"])
def test_batch_size_is_validated(model, tta):
    """batch_size=0 made no batches at all: a list of photos came back as an empty list, with no
    error (and -1 gave islice's message); it is checked now, as top_k is."""
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a whole number, at least 1"):
            npshuffle.predict([DAISY, TULIP], model=model, batch_size=bad, tta=tta)
    assert len(npshuffle.predict([DAISY, TULIP], model=model, batch_size=np.int64(1), tta=tta)) == 2


def test_stream_keeps_order_and_bounded_batches(model, tmp_path):
    seen = []

    def sources():
        for i in range(5):
            seen.append(i)
            yield DAISY if i % 2 else str(tmp_path / f"missing{i}.jpg")

    results = list(predict_stream(sources(), model, top_k=1, batch_size=2))
    assert [r.ok for r in results] == [False, True, False, True, False]
    assert "missing0.jpg" in results[0].source


def test_list_models_describes_the_bundled_zoo():
    rows = npshuffle.list_models()
    names = [r["name"] for r in rows]
    assert any("imagenet_v1_g3_x0_5" in n for n in names)
    assert sum("(default)" in n for n in names) == 1
    for r in rows:
        assert r["params"] > 0 and r["MACs"] > 0 and r["size"] > 0 and r["licence"]


def test_top_classes_is_the_stable_full_sort_without_it():
    from npshuffle.predict import top_classes

    rng = np.random.default_rng(0)
    for n, k in [(1000, 5), (1000, 1), (5, 5), (5, 3), (7, 9)]:
        for ties in (False, True):
            p = rng.random(n).astype(np.float32)
            if ties:  # many equal values, around the k-th largest too
                p = np.round(p * 4) / 4
            expected = np.argsort(-p, kind="stable")[:k]
            np.testing.assert_array_equal(top_classes(p, min(k, n)), expected)
