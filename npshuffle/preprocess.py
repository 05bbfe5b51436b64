"""Image -> network input, following the recipe stored in each model file.

A recipe (see ``npshuffle.model_file.DEFAULT_RECIPES``) reproduces torchvision's evaluation
transforms on a PIL image, pixel for pixel::

    Resize(resize)        shorter side -> ``resize`` px, longer side int(resize * long / short), PIL bilinear
    CenterCrop(crop)      top = round((h - crop) / 2), left = round((w - crop) / 2)
    channel order         RGB (torchvision) or BGR (Megvii)
    (pixel * scale - mean) / std      torchvision: scale 1/255 and ImageNet mean/std; Megvii: 0..255 as is

Output: float32 ``(3, crop, crop)`` (CHW) per image; :func:`preprocess_batch` stacks to NCHW.

With a ``resampler`` (the Numba kernels', ``kernels.cpu.resample``; ``npshuffle.predict`` passes it
once the kernels are loaded), resize, crop and normalisation are one pass that computes only the
crop's pixels, each exactly as PIL's resize does: the same numbers, 4.1x faster on the flower
photos (``benchmarks/preprocess_time.py``). Where it would not match PIL, or not be faster (see
:func:`_resample_in_one_pass`), PIL does the work.

``fast_decode=True`` (opt-in; default off, which is the pixel-exact path above) first shrinks a big
picture to no less than twice ``resize`` on its shorter side: JPEG files by draft-mode decoding,
anything else by an integer ``Image.reduce`` (see :mod:`npshuffle.images`). The exact Resize and
CenterCrop then follow, so the result is close to, not identical with, torchvision's.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .images import FAST_DECODE_GEOMETRY, PENDING_ORIENTATION, ImageError, load_rgb, upright, upright_size
from .pixels import rgbx_view

# Beyond this, Resize(256) would make a gigapixel strip out of a thin image.
MAX_ASPECT_RATIO = 50

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def _resize_geometry(image: Image.Image, size: int) -> tuple[tuple[int, int], tuple[float, float, float, float] | None]:
    """Where torchvision ``Resize(size)`` takes ``image``: ``((new_w, new_h), box)``, box the region of
    ``image`` that is resized (None: all of it)."""
    w, h = upright_size(image)
    box = None
    geometry = image.info.get(FAST_DECODE_GEOMETRY)
    if geometry is not None and tuple(geometry[2]) == image.size:
        (w, h), box = geometry[0], geometry[1]
    short, long = (w, h) if w <= h else (h, w)
    if long > MAX_ASPECT_RATIO * short:
        raise ImageError(f"image of {w}x{h} pixels: aspect ratio over {MAX_ASPECT_RATIO}:1, not a photo to classify")
    new_short, new_long = size, int(size * long / short)
    return ((new_short, new_long) if w <= h else (new_long, new_short)), box


def resize_shorter_side(image: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """torchvision ``Resize(size)`` on a PIL image: the shorter side becomes ``size``.

    An image shrunk by fast decode (``load_rgb(..., fast_decode_for=)``) is resized to the size the
    full picture would get, from the box the full picture covers in it (same geometry, fewer pixels).
    """
    new_size, box = _resize_geometry(image, size)
    if box is None and new_size == image.size:
        return image
    return image.resize(new_size, _RESAMPLE[interpolation], box=box)


def _crop_offset(size: tuple[int, int], crop: int) -> tuple[int, int]:
    """torchvision ``CenterCrop(crop)``'s top-left corner (left, top) in an image of ``size``."""
    w, h = size
    return int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop(size)`` on a PIL image at least ``size`` on each side."""
    left, top = _crop_offset(image.size, size)
    return image.crop((left, top, left + size, top + size))


def _resample_in_one_pass(image: Image.Image, recipe: dict, resampler, out: np.ndarray | None = None
                          ) -> np.ndarray | None:
    """Resize, crop and normalise with ``resampler`` (see ``npshuffle.backend_numba.exact_resampler``),
    which computes only the crop's pixels, each exactly as PIL's resize does, reading them where PIL
    keeps them (``npshuffle.pixels.rgbx_view``); a photo already at the resize size is only cropped and
    normalised there (no crop copy, array conversion or NumPy lookups, and no turn first for a photo
    stored turned). None where it would not give PIL's pixels: the crop
    not inside the resized image (PIL pads it), an interpolation it lacks, or a resize that newer
    Pillows run vertical pass first (a height shrinking more than twice as many pixels as the
    width: never for a photo under 2:1, whose resize shrinks the longer side most); and None where
    the pixels cannot be read without a copy (which would cost more than PIL's resize of a big
    photo: see ``pixels.py``)."""
    crop = recipe["crop"]
    new_size, box = _resize_geometry(image, recipe["resize"])
    (w, h), (new_w, new_h) = upright_size(image), new_size
    if min(new_w, new_h) < crop or (h - new_h > 0 and h - new_h > 2 * (w - new_w)):
        return None
    words = rgbx_view(image)
    if words is None:
        return None
    out = np.empty((3, crop, crop), np.float32) if out is None else out
    box = np.array(box if box is not None else (0, 0, w, h), np.float32)
    order = np.array(_channel_order(recipe), np.int64)
    orientation = image.info.get(PENDING_ORIENTATION, 1)
    done = resampler(words, orientation, box, new_size, _crop_offset(new_size, crop), recipe["interpolation"],
                     channel_tables(recipe), order, out)
    return out if done else None


def preprocess_image(image: Image.Image, recipe: dict, *, fast_decode: bool = False, resampler=None,
                     out: np.ndarray | None = None) -> np.ndarray:
    """One RGB PIL image -> float32 (3, crop, crop), per ``recipe``.

    ``fast_decode``: box-average (``Image.reduce``) a big image to no less than twice ``resize`` on
    its shorter side before the exact resize. For a file, pass ``load_rgb(path, fast_decode_for=
    recipe["resize"])`` instead (JPEG draft decoding, much cheaper); an image already shrunk that
    way is not shrunk again. ``resampler``: the Numba kernels' one-pass resize + crop + normalise
    (``npshuffle.backend_numba.exact_resampler()``; same numbers, computed only for the crop).
    ``out``: a C-contiguous float32 (3, crop, crop) array to write the result into (and return).
    """
    if image.mode != "RGB":
        image = load_rgb(image)
    if fast_decode and FAST_DECODE_GEOMETRY not in image.info:
        image = load_rgb(upright(image), fast_decode_for=recipe["resize"])
    if resampler is not None:
        done = _resample_in_one_pass(image, recipe, resampler, out)
        if done is not None:
            return done
    image = upright(image)  # (one that load_rgb left as stored, keep_orientation=True)
    image = center_crop(resize_shorter_side(image, recipe["resize"], recipe["interpolation"]), recipe["crop"])
    return normalise(np.asarray(image), recipe, out)


def _channel_order(recipe: dict) -> tuple[int, int, int]:
    """For each of the network's input channels, the RGB channel it reads."""
    return (2, 1, 0) if recipe["channel_order"] == "BGR" else (0, 1, 2)


def channel_tables(recipe: dict) -> np.ndarray:
    """(3, 256) float32, shared (not to be written to): row c maps an 8-bit value of the network's
    input channel c to its normalised value, ``(value * scale - mean[c]) / std[c]``, computed in
    float32 exactly as the formula would on each pixel (so a table lookup gives the very same
    numbers). Made once per (scale, mean, std): making them cost more per photo than the lookups of
    a small photo."""
    return _tables(float(recipe["scale"]), tuple(float(m) for m in recipe["mean"]),
                   tuple(float(s) for s in recipe["std"]))


@functools.lru_cache(maxsize=16)
def _tables(scale: float, mean: tuple, std: tuple) -> np.ndarray:
    values = np.arange(256, dtype=np.float32)
    mean_, std_ = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    # (left writeable: the Numba resampler is compiled for writeable arrays, and a read-only one
    # would make it compile another version on the first photo)
    return (values[None, :] * np.float32(scale) - mean_[:, None]) / std_[:, None]


def normalise(pixels: np.ndarray, recipe: dict, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W): channel order, scale, mean/std and the CHW layout
    in one pass, one table lookup per value (instead of a float copy, three arithmetic passes with
    their temporaries and a transposing copy), into ``out`` when given (and returned)."""
    tables = channel_tables(recipe)
    order = _channel_order(recipe)
    out = np.empty((3, *pixels.shape[:2]), np.float32) if out is None else out
    for c, source in enumerate(order):
        np.take(tables[c], pixels[:, :, source], out=out[c])
    return out


def preprocess_batch(images: list, recipe: dict, *, fast_decode: bool = False) -> np.ndarray:
    """Paths, PIL images or RGB arrays -> float32 NCHW batch (N, 3, crop, crop).

    Any PIL mode, EXIF orientation and arrays are handled by :func:`npshuffle.images.load_rgb`;
    ``fast_decode`` as in the module docstring.
    """
    target = recipe["resize"] if fast_decode else None
    return np.stack([preprocess_image(load_rgb(image, fast_decode_for=target), recipe) for image in images])
