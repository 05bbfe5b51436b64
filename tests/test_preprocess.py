"""Preprocessing: pixel-exact parity with torchvision, every PIL mode, EXIF, arrays, bad inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from npshuffle import images
from npshuffle.images import ImageError, load_rgb, open_image
from npshuffle.model_file import DEFAULT_RECIPES, check_recipe
from npshuffle.preprocess import center_crop, preprocess_batch, preprocess_image, resize_shorter_side
from tests.conftest import REPO
from tests.preprocess_cases import SIZES, synthetic

FIXTURES = np.load(REPO / "tests" / "data" / "preprocess_fixtures.npz")
TORCHVISION = check_recipe(DEFAULT_RECIPES["torchvision"])
MEGVII = check_recipe(DEFAULT_RECIPES["megvii"])


def cases():
    for i, (w, h) in enumerate(SIZES):
        yield f"synthetic_{w}x{h}", Image.fromarray(synthetic(w, h, i))
    for name in ("tulip", "daisy", "sunflower"):
        yield name, Image.open(REPO / "examples" / f"{name}.jpg").convert("RGB")


@pytest.mark.parametrize("resize", [256, 232])
def test_resize_and_crop_are_pixel_identical_to_torchvision(resize):
    checked = 0
    for name, image in cases():
        key = f"{name}/resize{resize}"
        if key not in FIXTURES:
            continue
        ours = np.asarray(center_crop(resize_shorter_side(image, resize), 224))
        np.testing.assert_array_equal(ours, FIXTURES[key], err_msg=name)
        checked += 1
    assert checked >= 8


def test_normalisation_matches_torchvision_to_float_rounding():
    image = Image.open(REPO / "examples" / "tulip.jpg")
    ours = preprocess_image(image.convert("RGB"), TORCHVISION)
    np.testing.assert_allclose(ours, FIXTURES["tulip/normalized"], rtol=0, atol=2e-6)


def test_megvii_recipe_is_bgr_0_to_255():
    image = Image.fromarray(synthetic(300, 260, 3))
    pixels = np.asarray(center_crop(resize_shorter_side(image, 256), 224), dtype=np.float32)
    out = preprocess_image(image, MEGVII)
    np.testing.assert_array_equal(out, pixels[:, :, ::-1].transpose(2, 0, 1))


def rgb_photo() -> Image.Image:
    return Image.fromarray(synthetic(120, 90, 5))


MODES = ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr", "RGB", "PA", "RGBa"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_becomes_rgb(mode):
    source = rgb_photo()
    image = source.convert("L").convert(mode) if mode in ("I;16", "I", "F") else source.convert(mode)
    rgb = load_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == source.size
    out = preprocess_batch([image], TORCHVISION)
    assert out.shape == (1, 3, 224, 224) and np.isfinite(out).all()


def test_greyscale_is_replicated_and_16_bit_is_scaled_not_clipped():
    grey = np.linspace(0, 255, 64 * 48).reshape(48, 64).astype(np.uint8)
    rgb = np.asarray(load_rgb(Image.fromarray(grey, "L")))
    assert (rgb[:, :, 0] == grey).all() and (rgb[:, :, 1] == grey).all() and (rgb[:, :, 2] == grey).all()
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)  # the same picture in 16 bits
    assert sixteen.mode.startswith("I;16")
    np.testing.assert_array_equal(np.asarray(load_rgb(sixteen))[:, :, 0], grey)


def test_transparency_is_composited_over_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (255, 0, 0, 255)  # opaque red on the left, fully transparent black on the right
    rgb = np.asarray(load_rgb(Image.fromarray(rgba, "RGBA")))
    assert (rgb[:, :5] == (255, 0, 0)).all() and (rgb[:, 5:] == 255).all()
    palette = Image.fromarray(rgba[:, :, :3]).convert("P")
    palette.info["transparency"] = palette.getpixel((9, 9))
    assert (np.asarray(load_rgb(palette))[:, 5:] == 255).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGBa", "PA", "I;16", "I", "F"])
def test_pictures_converted_strip_by_strip_equal_the_whole_picture_converted_at_once(monkeypatch, mode):
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (37, 29, 4), dtype=np.uint8)
    if mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65536, (37, 29)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
        picture = Image.fromarray(values)
        assert picture.mode == mode
    else:
        picture = Image.fromarray(rgba, "RGBA").convert(mode)
    whole = np.asarray(load_rgb(picture))
    monkeypatch.setattr(images, "STRIP_PIXELS", 29 * 4)  # 4 rows a strip, the last strip 1 row
    np.testing.assert_array_equal(np.asarray(load_rgb(picture)), whole)
    assert whole.std() > 10  # a real picture, not all white or black


def test_16_bit_greyscale_is_scaled_without_float64_copies_of_the_whole_picture(monkeypatch):
    import tracemalloc

    monkeypatch.setattr(images, "STRIP_PIXELS", 1 << 16, raising=False)  # 64 K pixels: a strip's float64s are 0.5 MB
    sixteen = Image.fromarray(np.full((2000, 2000), 40000, np.uint16))  # 4 MP: 32 MB as float64
    tracemalloc.start()
    try:
        rgb = load_rgb(sixteen)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.asarray(rgb)[0, 0, 0] == round(40000 / 257)
    # NumPy's copy of PIL's 16-bit pixels (at its peak ~4 bytes a pixel: the bytes and the array), the
    # uint8 result (1 byte) and one strip's float64s; a float64 copy of the picture alone is 8 bytes a pixel
    assert peak < 5.5 * 2000 * 2000, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("orientation,expected_size", [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))])
def test_exif_orientation_is_applied(tmp_path, orientation, expected_size):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # white left half
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    image.save(path, exif=exif, quality=95)
    rgb = load_rgb(str(path))
    assert rgb.size == expected_size
    corner = np.asarray(rgb)[2, 2].mean()
    # the white left half ends up: left (1), right (3: 180 degrees), top (6: 90 clockwise),
    # bottom (8: 90 counter-clockwise) -- so the top-left corner is white for 1 and 6 only
    expected_white = {1: True, 3: False, 6: True, 8: False}[orientation]
    assert (corner > 128) == expected_white


def test_an_upright_rgb_image_is_used_as_it_is_not_copied_and_never_modified():
    """exif_transpose copies a picture that needs no turning (35 ms for 12 MP): it is not called then."""
    image = Image.fromarray(synthetic(64, 48, 1))
    before = np.asarray(image).copy()
    assert load_rgb(image) is image
    preprocess_image(image, TORCHVISION)
    np.testing.assert_array_equal(np.asarray(image), before)
    turned = Image.fromarray(synthetic(64, 48, 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    turned.info["exif"] = exif.tobytes()
    turned.getexif()[0x0112] = 6
    rgb = load_rgb(turned)
    assert rgb is not turned and rgb.size == (48, 64) and turned.size == (64, 48)
    for odd in (1, 0, 9, "x"):  # upright, or not an orientation: the picture as it is
        plain = Image.fromarray(synthetic(64, 48, 1))
        plain.getexif()[0x0112] = odd
        assert load_rgb(plain) is plain


def test_arrays_are_taken_as_rgb():
    pixels = synthetic(64, 48, 2)
    np.testing.assert_array_equal(
        preprocess_batch([pixels], TORCHVISION), preprocess_batch([Image.fromarray(pixels)], TORCHVISION)
    )
    as_float = pixels.astype(np.float32) / 255
    np.testing.assert_allclose(preprocess_batch([as_float], TORCHVISION), preprocess_batch([pixels], TORCHVISION))
    assert load_rgb(pixels[:, :, 0]).mode == "RGB"
    assert load_rgb(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])).mode == "RGB"


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros((3, 32, 32), np.uint8), "channels last"),
        (np.zeros((32, 32, 3), np.int64), "dtype int64"),
        (np.full((32, 32, 3), 2.0), "must be in 0..1"),
        (np.full((32, 32, 3), np.nan), "NaN"),
        (np.zeros((2, 32, 32, 3), np.uint8), "expected"),
    ],
)
def test_bad_arrays_are_refused(array, message):
    with pytest.raises(ImageError, match=message):
        load_rgb(array)


def test_bad_files_are_refused_by_name(tmp_path):
    good = io.BytesIO()
    rgb_photo().save(good, "JPEG")
    cases = {
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"hello, not an image", "not an image file"),
        "truncated.jpg": (good.getvalue()[: len(good.getvalue()) // 2], "truncated"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match=message) as info:
            open_image(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(ImageError, match="no such file"):
        load_rgb(str(tmp_path / "missing.png"))
    with pytest.raises(ImageError, match="a folder, not a file"):
        load_rgb(str(tmp_path))
    with pytest.raises(ImageError, match="cannot read an image from a int"):
        load_rgb(42)


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(ImageError, match="aspect ratio"):
        preprocess_image(Image.new("RGB", (5000, 10)), TORCHVISION)


@pytest.mark.parametrize("recipe_name", sorted(DEFAULT_RECIPES))
def test_the_table_lookup_gives_the_formulas_numbers_bitwise(recipe_name):
    """``normalise`` (one table lookup per value) against the plain float32 formula it replaces."""
    from npshuffle.preprocess import normalise

    recipe = DEFAULT_RECIPES[recipe_name]
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    formula = pixels.astype(np.float32)
    if recipe["channel_order"] == "BGR":
        formula = formula[:, :, ::-1]
    mean, std = np.asarray(recipe["mean"], np.float32), np.asarray(recipe["std"], np.float32)
    formula = ((formula * np.float32(recipe["scale"]) - mean) / std).transpose(2, 0, 1)
    result = normalise(pixels, recipe)
    assert result.dtype == np.float32 and result.flags.c_contiguous
    np.testing.assert_array_equal(result, formula)
