"""The one-pass resize + crop + normalise kernel (``kernels.cpu.resample``) against PIL itself.

The kernel computes only a crop's pixels; each must equal what PIL's ``Image.resize`` (then
``crop``) gives, bit for bit, for the sizes, boxes and filters preprocessing uses; and
``preprocess_image`` with it must equal the PIL path (and so the torchvision fixtures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from npshuffle import backend_numba
from npshuffle.images import FAST_DECODE_GEOMETRY, load_rgb
from npshuffle.model_file import DEFAULT_RECIPES, check_recipe
from npshuffle.pixels import rgbx_view
from npshuffle.preprocess import preprocess_image
from tests.conftest import REPO
from tests.preprocess_cases import SIZES, synthetic

cpu = backend_numba.cpu
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
IDENTITY_TABLES = np.tile(np.arange(256, dtype=np.float32), (3, 1))  # normalising to the 8-bit values themselves
FLOWERS = REPO.parent / "shared" / "data" / "flower_photos"


@pytest.fixture(scope="module")
def resampler():
    backend_numba.ensure_kernels()
    return backend_numba.exact_resampler()


# the transpose ImageOps.exif_transpose applies for each EXIF orientation
TURN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90}


def kernel_crop(stored, size, box, left, top, crop, interpolation, orientation=1):
    """The kernel's crop of the upright picture (``stored`` pixels, turned as ``orientation`` says)
    as uint8 (crop, crop, 3), normalised to the 8-bit values themselves."""
    out = np.full((3, crop, crop), np.nan, np.float32)
    cpu.resize_crop_normalise(rgbx_view(Image.fromarray(stored)), orientation, np.array(box, np.float32), size[0],
                              size[1], left, top, cpu.RESAMPLE_FILTERS[interpolation], IDENTITY_TABLES,
                              np.arange(3, dtype=np.int64), out)
    assert np.isfinite(out).all()
    return out.transpose(1, 2, 0).astype(np.uint8)


def upright_image(stored: np.ndarray, orientation: int) -> Image.Image:
    image = Image.fromarray(stored)
    return image.transpose(TURN[orientation]) if orientation != 1 else image


@st.composite
def resizes(draw):
    """A random RGB picture stored under a random EXIF orientation, a target size for the upright
    picture (up or down, either axis), a source box (half the time the whole picture) and a crop
    inside the target, for a resize PIL runs horizontal pass first."""
    w, h = draw(st.integers(1, 160)), draw(st.integers(1, 160))  # (upright)
    orientation = draw(st.integers(1, 8))
    new_w, new_h = draw(st.integers(1, 200)), draw(st.integers(1, 200))
    if h - new_h > 0 and h - new_h > 2 * (w - new_w):  # newer Pillows go vertical first (not supported)
        new_h = h
    if draw(st.booleans()):
        box = (0.0, 0.0, float(w), float(h))
    else:
        x0, y0 = draw(st.floats(0, w / 2)), draw(st.floats(0, h / 2))
        box = (x0, y0, draw(st.floats(x0 + 0.25, w)), draw(st.floats(y0 + 0.25, h)))
    crop = draw(st.integers(1, min(new_w, new_h)))
    left, top = draw(st.integers(0, new_w - crop)), draw(st.integers(0, new_h - crop))
    seed = draw(st.integers(0, 2**32 - 1))
    shape = (w, h, 3) if orientation >= 5 else (h, w, 3)
    stored = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return stored, orientation, (new_w, new_h), box, left, top, crop, draw(st.sampled_from(sorted(PIL_FILTERS)))


@settings(max_examples=150, deadline=None)
@given(resizes())
def test_kernel_crop_is_pil_resize_then_crop(case):
    stored, orientation, size, box, left, top, crop, interpolation = case
    expected = np.asarray(upright_image(stored, orientation).resize(size, PIL_FILTERS[interpolation], box=box))
    got = kernel_crop(stored, size, box, left, top, crop, interpolation, orientation)
    np.testing.assert_array_equal(got, expected[top: top + crop, left: left + crop])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_of_a_big_shrink(orientation):
    """A 6x shrink (13-tap filters) of a picture stored turned: more than one block of columns for
    the quarter turns, whose horizontal pass walks down stored columns."""
    stored = np.random.default_rng(orientation).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    image = upright_image(stored, orientation)
    w, h = image.size
    size = (341, 256) if w > h else (256, 341)
    expected = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    np.testing.assert_array_equal(kernel_crop(stored, size, (0, 0, w, h), left, top, 224, "bilinear", orientation),
                                  expected[top: top + 224, left: left + 224])


@pytest.mark.parametrize("interpolation", sorted(PIL_FILTERS))
def test_same_size_is_the_identity_and_big_shrinks_match(interpolation):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    np.testing.assert_array_equal(kernel_crop(pixels, (400, 300), (0, 0, 400, 300), 30, 20, 250, interpolation),
                                  pixels[20:270, 30:280])
    big = rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)  # a 6x shrink: 13-tap filters
    expected = np.asarray(Image.fromarray(big).resize((341, 256), PIL_FILTERS[interpolation]))
    np.testing.assert_array_equal(kernel_crop(big, (341, 256), (0, 0, 2000, 1500), 58, 16, 224, interpolation),
                                  expected[16:240, 58:282])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_no_resize_reads_the_crop_upright_in_every_orientation(orientation):
    """The size is the upright picture's and the box all of it: the crop of the upright pixels."""
    stored = np.random.default_rng(orientation).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    upright = np.asarray(upright_image(stored, orientation))
    h, w = upright.shape[:2]
    for interpolation in sorted(PIL_FILTERS):
        np.testing.assert_array_equal(kernel_crop(stored, (w, h), (0, 0, w, h), 5, 3, 30, interpolation, orientation),
                                      upright[3:33, 5:35])


@pytest.mark.parametrize("recipe_name", ["torchvision", "megvii"])
def test_preprocess_with_the_kernel_equals_the_pil_path(resampler, recipe_name):
    recipe = check_recipe(DEFAULT_RECIPES[recipe_name])
    images = [Image.fromarray(synthetic(w, h, i)) for i, (w, h) in enumerate(SIZES)]
    images += [load_rgb(REPO / "examples" / f"{name}.jpg") for name in ("tulip", "daisy", "sunflower")]
    for image in images:
        np.testing.assert_array_equal(preprocess_image(image, recipe, resampler=resampler),
                                      preprocess_image(image, recipe), err_msg=str(image.size))


@pytest.mark.skipif(not FLOWERS.is_dir(), reason="needs ../shared/data/flower_photos")
def test_preprocess_with_the_kernel_equals_the_pil_path_on_real_photos(resampler):
    recipe = check_recipe(DEFAULT_RECIPES["torchvision"])
    photos = sorted(FLOWERS.glob("*/*.jpg"))[::25]
    assert len(photos) > 100
    for path in photos:
        image = load_rgb(path)
        np.testing.assert_array_equal(preprocess_image(image, recipe, resampler=resampler),
                                      preprocess_image(image, recipe), err_msg=str(path))


def test_fast_decoded_photos_use_the_kernel_with_their_box(resampler):
    recipe = check_recipe(DEFAULT_RECIPES["torchvision"])
    image = load_rgb(Image.fromarray(synthetic(2401, 1801, 2)), fast_decode_for=recipe["resize"])
    assert image.size != (2401, 1801)  # shrunk, with the full picture's box in its info
    calls = []

    def counting(*args):
        calls.append(args[2])  # (words, orientation, box, ...)
        return resampler(*args)

    np.testing.assert_array_equal(preprocess_image(image, recipe, resampler=counting), preprocess_image(image, recipe))
    box = image.info[FAST_DECODE_GEOMETRY][1]
    assert len(calls) == 1 and box != (0, 0, *image.size)
    np.testing.assert_array_equal(calls[0], np.array(box, np.float32))  # the full picture's box, not the image


@pytest.mark.parametrize("size, recipe_change", [
    ((300, 900), {}),  # a 3:1 strip: Pillow 11+ resizes it vertical pass first
    ((300, 200), {"interpolation": "nearest"}),  # no such filter in the kernel
    ((300, 200), {"resize": 200, "crop": 224}),  # the crop is bigger than the resized image: PIL pads
])
def test_where_the_kernel_would_differ_pil_does_the_work(resampler, size, recipe_change):
    recipe = {**check_recipe(DEFAULT_RECIPES["torchvision"]), **recipe_change}  # (model files refuse the last)
    image = Image.fromarray(synthetic(*size, 1))
    if recipe_change.get("interpolation") == "nearest":
        assert resampler(rgbx_view(image), 1, np.zeros(4, np.float32), (1, 1), (0, 0), "nearest", None, None,
                         None) is False
    np.testing.assert_array_equal(preprocess_image(image, recipe, resampler=resampler),
                                  preprocess_image(image, recipe))


def test_the_kernel_is_used_only_once_numba_is_loaded(tmp_path: Path):
    """predict's preprocessing never imports Numba itself (a NumPy-backend run stays free of it)."""
    import subprocess
    import sys

    code = ("import sys, npshuffle; from npshuffle.predict import _exact_resampler\n"
            "assert _exact_resampler() is None and 'numba' not in sys.modules\n"
            "npshuffle.predict('examples/tulip.jpg', backend='numpy')\n"
            "assert 'numba' not in sys.modules, 'numba imported'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_a_backend_module_still_being_imported_means_no_kernel(monkeypatch):
    """The auto backend imports the Numba backend on a thread while photos are being prepared."""
    import sys
    import types

    from npshuffle.predict import _exact_resampler

    monkeypatch.setitem(sys.modules, "npshuffle.backend_numba", types.ModuleType("npshuffle.backend_numba"))
    assert _exact_resampler() is None


@pytest.mark.parametrize("size", [(341, 250), (256, 256), (341, 256), (256, 300), (300, 257), (1000, 760),
                                  (2000, 1500)])
def test_the_kernel_prepares_every_photo_it_can_read(resampler, size):
    """Photos already at the resize size too ((256, 256), (341, 256), (256, 300): only a crop)."""
    recipe = check_recipe(DEFAULT_RECIPES["torchvision"])
    calls = []

    def counting(*args):
        calls.append(1)
        return resampler(*args)

    image = Image.fromarray(synthetic(*size, 4))
    np.testing.assert_array_equal(preprocess_image(image, recipe, resampler=counting), preprocess_image(image, recipe))
    assert calls


def test_a_big_jpeg_is_read_without_a_copy_and_matches_pil(resampler, tmp_path):
    """A 12 MP JPEG decodes into one block of memory, the kernel reads it in place, and the result
    is PIL's resize-then-crop value for value (here with an upscaled real photo's detail)."""
    path = tmp_path / "big.jpg"
    Image.open(REPO / "examples" / "tulip.jpg").convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(
        path, quality=90)
    recipe = check_recipe(DEFAULT_RECIPES["torchvision"])
    image = load_rgb(path)
    assert image.im.isblock() and rgbx_view(image) is not None
    calls = []

    def counting(*args):
        calls.append(1)
        return resampler(*args)

    np.testing.assert_array_equal(preprocess_image(image, recipe, resampler=counting), preprocess_image(image, recipe))
    assert calls


def test_a_big_image_in_several_blocks_goes_to_pil(resampler):
    """An image PIL spread over several blocks of memory (here a big one made in memory) has no
    view; PIL's resize does the work, with the same result."""
    image = Image.fromarray(synthetic(3000, 2000, 5))
    assert not image.im.isblock() and rgbx_view(image) is None
    recipe = check_recipe(DEFAULT_RECIPES["torchvision"])
    calls = []

    def counting(*args):
        calls.append(1)
        return resampler(*args)

    np.testing.assert_array_equal(preprocess_image(image, recipe, resampler=counting), preprocess_image(image, recipe))
    assert not calls


@pytest.mark.parametrize("orientation", range(2, 9))
def test_a_turned_photo_file_is_read_turned_by_the_kernel_and_matches_the_pil_path(resampler, tmp_path, orientation):
    """predict's path (load_rgb keeps the orientation, the kernel turns while reading) against
    load_rgb's upright picture through PIL; a big one for the quarter turns' column blocks."""
    from npshuffle.predict import prepare_input

    path = tmp_path / f"turned_{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(synthetic(1203, 901, orientation)).save(path, quality=90, exif=exif)
    recipe = check_recipe(DEFAULT_RECIPES["torchvision"])
    kept = load_rgb(path, keep_orientation=True)
    assert kept.size == (1203, 901)  # (as stored)
    expected = preprocess_image(load_rgb(path), recipe)  # (turned by exif_transpose, resized by PIL)
    np.testing.assert_array_equal(preprocess_image(kept, recipe, resampler=resampler), expected)
    np.testing.assert_array_equal(preprocess_image(load_rgb(path, keep_orientation=True), recipe), expected)  # PIL
    np.testing.assert_array_equal(prepare_input(str(path), recipe), expected)


@pytest.mark.parametrize("size", [(341, 250), (256, 300), (300, 900)])  # resize, crop only, PIL's own path
def test_preprocess_writes_into_a_given_row(resampler, size):
    """predict prepares each photo straight into its row of the batch: the same numbers as a new array."""
    recipe = check_recipe(DEFAULT_RECIPES["torchvision"])
    image = Image.fromarray(synthetic(*size, 5))
    batch = np.full((2, 3, recipe["crop"], recipe["crop"]), np.nan, np.float32)
    row = batch[1]
    for use in (resampler, None):
        row[...] = np.nan
        assert preprocess_image(image, recipe, resampler=use, out=row) is row
        np.testing.assert_array_equal(batch[1], preprocess_image(image, recipe))
        assert np.isnan(batch[0]).all()
