"""npshuffle.corruptions: each corruption does what its docstring says, deterministically, and
severity 2 is harsher than severity 1."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npshuffle import corruptions as C

TULIP = Path(__file__).resolve().parent.parent / "examples" / "tulip.jpg"
CASES = [(name, s) for name in C.CORRUPTIONS for s in C.SEVERITIES]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(TULIP) as image:
        return image.convert("RGB")  # 384 x 256


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def distance(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per value, 0..255."""
    return float(np.abs(pixels(a) - pixels(b)).mean())


def grey(w: int, h: int, value: int) -> Image.Image:
    return Image.new("RGB", (w, h), (value, value, value))


@pytest.mark.parametrize("name,severity", CASES)
def test_each_is_pure_keeps_mode_and_size_and_changes_the_photo(photo, name, severity):
    before = photo.tobytes()
    out = C.corrupt(photo, name, severity, seed=7)
    again = C.corrupt(photo, name, severity, seed=7)
    assert photo.tobytes() == before  # the input is not modified
    assert out.mode == "RGB" and np.asarray(out).dtype == np.uint8
    assert out.tobytes() == again.tobytes()  # deterministic
    if name == "offset_crop":
        fraction = C.CORRUPTIONS[name].levels[severity - 1]
        assert out.size == (round(fraction * 384), round(fraction * 256))
    else:
        assert out.size == photo.size
        assert distance(out, photo) > 0.5  # it did change the photo


@pytest.mark.parametrize("name", [n for n in C.CORRUPTIONS if n != "offset_crop"])
def test_severity_2_is_further_from_the_photo_than_severity_1(photo, name):
    d1 = distance(C.corrupt(photo, name, 1, seed=3), photo)
    d2 = distance(C.corrupt(photo, name, 2, seed=3), photo)
    assert d2 > 1.2 * d1, (name, d1, d2)


def test_severity_2_crop_keeps_less_of_the_photo_further_from_its_centre(photo):
    areas, offsets = [], []
    for severity in C.SEVERITIES:
        fraction = C.CORRUPTIONS["offset_crop"].levels[severity - 1]
        out = C.corrupt(photo, "offset_crop", severity, seed=0)  # corner 0: top-left
        areas.append(out.size[0] * out.size[1])
        offsets.append(photo.size[0] / 2 - out.size[0] / 2)  # window centre's distance from the photo's
        assert offsets[-1] == pytest.approx((1 - fraction) / 2 * photo.size[0], abs=1)
    assert areas[1] < areas[0] and offsets[1] > offsets[0]


def test_the_docstring_table_lists_the_levels_in_code():
    rows = {line.split("``")[1]: line for line in C.__doc__.splitlines() if re.match(r"^``\w+``", line)}
    assert list(rows) == list(C.CORRUPTIONS)
    for name, entry in C.CORRUPTIONS.items():
        columns = re.split(r"\s{2,}", rows[name].strip())[-2:]  # the severity 1 and severity 2 columns
        for level, column in zip(entry.levels, columns, strict=True):
            assert re.search(rf"(?<![\d.]){re.escape(f'{level:g}')}(?![\d])", column), (name, level, column)


def test_gaussian_blur_smooths_and_scales_with_resolution(photo):
    def roughness(image):  # mean absolute difference between horizontal neighbours
        return float(np.abs(np.diff(pixels(image), axis=1)).mean())

    out = C.gaussian_blur(photo, 1.5)
    assert roughness(out) < 0.7 * roughness(photo)
    assert pixels(out).mean() == pytest.approx(pixels(photo).mean(), abs=1.0)  # a blur keeps the mean colour
    # sigma is in px at a 256 px shorter side: blurring the photo at twice the size and halving it is
    # close to blurring the photo itself (a fixed pixel sigma would blur the big one half as much)
    big = photo.resize((768, 512), Image.Resampling.BILINEAR)
    halved = C.gaussian_blur(big, 3.0).resize(photo.size, Image.Resampling.BILINEAR)
    assert distance(halved, C.gaussian_blur(photo, 3.0)) < 0.5 * distance(photo, C.gaussian_blur(photo, 3.0))


def test_jpeg_is_pillows_round_trip_at_the_quality():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    q20, q10 = C.jpeg(image, 20), C.jpeg(image, 10)
    assert distance(q10, image) > distance(q20, image) > 10  # noise is what JPEG at low quality drops
    assert C.jpeg(grey(64, 64, 128), 10).tobytes() == grey(64, 64, 128).tobytes()  # flat grey survives exactly


def test_gaussian_noise_has_the_std_and_the_seed():
    image = grey(200, 150, 128)  # mid-grey: no clipping within 3 sigma of 0.08 * 255
    out = C.gaussian_noise(image, 0.08, seed=1)
    residual = pixels(out) - 128
    assert residual.mean() == pytest.approx(0, abs=0.3)
    assert residual.std() == pytest.approx(0.08 * 255, rel=0.03)
    assert C.gaussian_noise(image, 0.08, seed=2).tobytes() != out.tobytes()


def test_brightness_adds_and_clips():
    out = pixels(C.brightness(Image.fromarray(np.array([[[100, 230, 0]]], np.uint8), "RGB"), 0.2))
    assert out.tolist() == [[[151, 255, 51]]]  # 0.2 * 255 = 51, clipped at 255


def test_contrast_scales_deviations_and_keeps_each_channel_mean():
    values = np.zeros((4, 4, 3), np.uint8)
    values[:, :2] = (50, 0, 200)
    values[:, 2:] = (150, 100, 220)
    out = pixels(C.contrast(Image.fromarray(values, "RGB"), 0.5))
    assert out[0, 0].tolist() == [75, 25, 205] and out[0, 3].tolist() == [125, 75, 215]
    assert out.mean(axis=(0, 1)).tolist() == [100, 50, 210]


def test_downscale_drops_fine_detail_and_leaves_small_photos_alone():
    checker = ((np.indices((240, 320)).sum(axis=0) % 2) * 255).astype(np.uint8)  # 1 px black/white
    image = Image.fromarray(np.stack([checker] * 3, axis=-1), "RGB")
    out = C.downscale(image, 160)
    assert out.size == image.size
    assert np.abs(pixels(out) - 127.5).mean() < 10  # the 1 px pattern is gone: near-flat grey
    small = grey(200, 150, 90)
    assert C.downscale(small, 160).tobytes() == small.tobytes()


@pytest.mark.parametrize("seed,corner", [(0, (0, 0)), (1, (1, 0)), (2, (0, 1)), (3, (1, 1)), (6, (0, 1))])
def test_offset_crop_is_the_window_in_the_seeded_corner(photo, seed, corner):
    out = C.offset_crop(photo, 0.6, seed)
    cw, ch = round(0.6 * 384), round(0.6 * 256)
    left, top = corner[0] * (384 - cw), corner[1] * (256 - ch)
    assert np.array_equal(np.asarray(out), np.asarray(photo)[top:top + ch, left:left + cw])


def test_greyscale_is_pillows_luma_at_0_and_halfway_at_half(photo):
    full = pixels(C.greyscale(photo, 0.0))
    luma = pixels(photo.convert("L"))
    assert np.abs(full - luma[:, :, None]).max() <= 1  # every channel the luma
    spread = np.ptp(pixels(photo), axis=2).mean()
    half = np.ptp(pixels(C.greyscale(photo, 0.5)), axis=2).mean()
    assert half == pytest.approx(spread / 2, rel=0.05)


def test_corrupt_rejects_unknown_names_severities_and_modes(photo):
    with pytest.raises(ValueError, match="unknown corruption"):
        C.corrupt(photo, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(photo, "jpeg", 3)
    with pytest.raises(ValueError, match="RGB"):
        C.corrupt(photo.convert("L"), "brightness", 1)


def test_photo_seed_is_stable():
    assert C.photo_seed("daisy/1.jpg") == 2378117711  # CRC-32: the same in every process, every version
    assert C.photo_seed("daisy/1.jpg") != C.photo_seed("daisy/2.jpg")
