"""Common image corruptions, for measuring how a model copes with photos unlike its training set.

Each corruption is a pure function of a decoded RGB PIL image (and its parameter, and for the
random ones a seed): same input, same output, and the input is never modified. They follow the
spirit of ImageNet-C (Hendrycks & Dietterich, 2019), at two severities each, and run on the decoded
photo *before* the model's own preprocessing (resize, crop, normalise), as a user's photo would
arrive. NumPy and Pillow only.

The severities are the table :data:`CORRUPTIONS` (parameter at severity 1, at severity 2):

==================  ========================================================  =============  =============
name                what it does                                              severity 1     severity 2
==================  ========================================================  =============  =============
``gaussian_blur``   Gaussian blur; sigma in px of the photo scaled to a       sigma 1.5      sigma 3.0
                    256 px shorter side (so the blur looks the same at any
                    resolution)
``jpeg``            re-encoded as JPEG (Pillow, 4:2:0) at this quality        quality 20     quality 10
``gaussian_noise``  + N(0, std) per pixel and channel, std as a fraction of   std 0.08       std 0.16
                    255, seeded per photo; rounded, clipped to 0..255
``brightness``      + delta on every channel, a fraction of 255; clipped      +0.2 (51)      +0.4 (102)
``contrast``        each channel's deviation from its mean scaled by factor   factor 0.5     factor 0.25
``downscale``       shorter side down to this many px (bilinear, which        160 px         80 px
                    Pillow antialiases), then back up to the original size
                    (bilinear); a photo no bigger is left as it is
``offset_crop``     keeps a window of this fraction of each side, pushed      0.8            0.6
                    into one corner (which: ``seed % 4``, top-left,
                    top-right, bottom-left, bottom-right), so the photo's
                    centre moves off the model's centre crop
``greyscale``       saturation: 1 is the photo, 0 is its luma (PIL "L")       0.5            0.0
==================  ========================================================  =============  =============

Shapes: every corruption returns an RGB image of the input's size, except ``offset_crop``, which
returns its window (the model's own resize then brings it to its input size, as it would a photo
framed that way).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

BLUR_REFERENCE_SIDE = 256  # gaussian_blur's sigma is in px of the photo at this shorter side


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode != "RGB":
        raise ValueError(f"corruptions take RGB images, got mode {image.mode!r}")
    return image


def _from_float(values: np.ndarray) -> Image.Image:
    """float (H, W, 3) on the 0..255 scale -> RGB image, rounded to nearest and clipped."""
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "RGB")


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """Blur with a Gaussian whose standard deviation is ``sigma`` px at a 256 px shorter side
    (``sigma * min(w, h) / 256`` px of this photo; Pillow's GaussianBlur, whose radius is the sigma).
    Same size."""
    image = _rgb(image)
    return image.filter(ImageFilter.GaussianBlur(sigma * min(image.size) / BLUR_REFERENCE_SIDE))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The photo JPEG-encoded at ``quality`` (Pillow's encoder, 4:2:0 chroma) and decoded again. Same size."""
    buffer = io.BytesIO()
    _rgb(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def gaussian_noise(image: Image.Image, std: float, seed: int) -> Image.Image:
    """Add independent N(0, ``std`` * 255) noise to each pixel's each channel, drawn from
    ``numpy.random.default_rng(seed)`` (the same seed gives the same noise); rounded, clipped. Same size."""
    pixels = np.asarray(_rgb(image), dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0.0, std * 255.0, size=pixels.shape)
    return _from_float(pixels + noise)


def brightness(image: Image.Image, delta: float) -> Image.Image:
    """Add ``delta`` * 255 to every channel of every pixel (brighter for delta > 0), rounded and
    clipped to 0..255 (highlights saturate, as in an over-exposed photo). Same size."""
    return _from_float(np.asarray(_rgb(image), dtype=np.float64) + delta * 255.0)


def contrast(image: Image.Image, factor: float) -> Image.Image:
    """Scale each channel's deviation from that channel's mean over the photo by ``factor``
    (1: unchanged, 0: a flat colour), rounded and clipped. Same size."""
    pixels = np.asarray(_rgb(image), dtype=np.float64)
    mean = pixels.mean(axis=(0, 1), keepdims=True)  # (1, 1, 3): each channel keeps its mean
    return _from_float((pixels - mean) * factor + mean)


def downscale(image: Image.Image, short_side: int) -> Image.Image:
    """Resize so the shorter side is ``short_side`` px (bilinear; Pillow widens the filter when
    shrinking, so it averages rather than skips pixels), then back to the original size (bilinear):
    the detail of a low-resolution photo at the original size. A photo whose shorter side is
    already ``short_side`` px or less comes back unchanged (a copy). Same size."""
    image = _rgb(image)
    w, h = image.size
    short = min(w, h)
    if short <= short_side:
        return image.copy()
    small = (max(1, round(w * short_side / short)), max(1, round(h * short_side / short)))
    return image.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)


def offset_crop(image: Image.Image, fraction: float, seed: int) -> Image.Image:
    """The window of ``round(fraction * w) x round(fraction * h)`` px in corner ``seed % 4`` (0 top-left,
    1 top-right, 2 bottom-left, 3 bottom-right): the photo framed off-centre and closer. Its centre
    lies ``(1 - fraction) / 2`` of each side away from the photo's centre. Size: the window's."""
    image = _rgb(image)
    w, h = image.size
    cw, ch = max(1, round(fraction * w)), max(1, round(fraction * h))
    corner = seed % 4
    left = w - cw if corner in (1, 3) else 0
    top = h - ch if corner in (2, 3) else 0
    return image.crop((left, top, left + cw, top + ch))


def greyscale(image: Image.Image, saturation: float) -> Image.Image:
    """Blend the photo with its luma (Pillow's ``L``, ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B):
    ``saturation`` 1 is the photo, 0 a grey photo (all three channels equal). Same size."""
    return ImageEnhance.Color(_rgb(image)).enhance(saturation)


@dataclass(frozen=True)
class Corruption:
    """One row of the table: the function, its parameter at severity 1 and 2, and what it means."""

    function: Callable[..., Image.Image]
    levels: tuple[float, float]
    parameter: str
    seeded: bool = False  # takes a seed (gaussian_noise, offset_crop)


# The table of the module docstring; the order is the report's.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_blur": Corruption(gaussian_blur, (1.5, 3.0), "sigma, px at a 256 px shorter side"),
    "jpeg": Corruption(jpeg, (20, 10), "JPEG quality"),
    "gaussian_noise": Corruption(gaussian_noise, (0.08, 0.16), "std, fraction of 255", seeded=True),
    "brightness": Corruption(brightness, (0.2, 0.4), "added, fraction of 255"),
    "contrast": Corruption(contrast, (0.5, 0.25), "factor on deviations from the mean"),
    "downscale": Corruption(downscale, (160, 80), "shorter side, px"),
    "offset_crop": Corruption(offset_crop, (0.8, 0.6), "window, fraction of each side", seeded=True),
    "greyscale": Corruption(greyscale, (0.5, 0.0), "saturation"),
}
SEVERITIES = (1, 2)


def corrupt(image: Image.Image, name: str, severity: int, seed: int = 0) -> Image.Image:
    """``image`` corrupted by the table's ``name`` at ``severity`` (1 or 2); ``seed`` for the random ones."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1 or 2, got {severity!r}")
    entry = CORRUPTIONS[name]
    level = entry.levels[severity - 1]
    return entry.function(image, level, seed) if entry.seeded else entry.function(image, level)


def photo_seed(name: str) -> int:
    """A stable seed for a photo from its name (CRC-32 of its UTF-8 bytes): the same in every
    process and on every machine, unlike Python's salted ``hash``."""
    return zlib.crc32(name.encode("utf-8"))
