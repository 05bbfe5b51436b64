"""A PIL image's pixels without a copy (``npshuffle.pixels``): the view holds exactly the image's
pixels, shares its memory, stays valid after the image is gone, and is refused where it cannot be had."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from PIL import Image

from npshuffle.images import load_rgb
from npshuffle.pixels import decode_into_one_block, rgbx_view
from tests.conftest import REPO


def channels(words: np.ndarray) -> np.ndarray:
    """(H, W) words -> (H, W, 3) uint8, R G B."""
    return np.stack([(words >> shift) & 255 for shift in (0, 8, 16)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (640, 480)])
def test_the_view_holds_the_pixels(size):
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    words = rgbx_view(Image.fromarray(pixels))
    assert words.shape == pixels.shape[:2] and words.dtype == np.uint32 and not words.flags.writeable
    np.testing.assert_array_equal(channels(words), pixels)


def test_the_view_shares_the_image_memory_and_outlives_the_image():
    image = Image.new("RGB", (32, 16), (1, 2, 3))
    words = rgbx_view(image)
    image.putpixel((5, 4), (200, 100, 50))  # written into the same memory
    assert tuple(channels(words)[4, 5]) == (200, 100, 50)
    del image
    gc.collect()
    assert tuple(channels(words)[0, 0]) == (1, 2, 3)  # (the view keeps the memory alive)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_modes_have_no_view(mode):
    assert rgbx_view(Image.new(mode, (8, 8))) is None


def test_a_big_jpeg_decodes_into_one_block_with_the_same_pixels(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (2100, 3000, 3), dtype=np.uint8)).save(path)
    plain = Image.open(path)
    plain.load()
    assert not plain.im.isblock() and rgbx_view(plain) is None  # (PIL's own decode: several blocks)
    image = load_rgb(path)
    assert image.im.isblock()
    np.testing.assert_array_equal(channels(rgbx_view(image)), np.asarray(plain))


def test_only_undecoded_rgb_jpegs_are_given_a_block(tmp_path):
    png = tmp_path / "big.png"
    Image.new("RGB", (3000, 2100)).save(png)
    image = Image.open(png)
    decode_into_one_block(image)
    assert image._im is None  # (not a JPEG: left to PIL)
    jpeg = Image.open(REPO / "examples" / "tulip.jpg")
    jpeg.load()
    before = jpeg.im
    decode_into_one_block(jpeg)
    assert jpeg.im is before  # (already decoded)
