"""Turning whatever the user hands us (a path, a PIL image, a NumPy array) into an RGB PIL image.

Rules, chosen to be unsurprising:

* **EXIF orientation** is applied (a phone photo taken in portrait is classified upright).
* **Transparency** (RGBA, LA, P with a transparent colour) is composited over white: a transparent
  PNG's hidden pixels are often black garbage, and a white page is what a person sees.
* **Greyscale** (L, 1) is replicated into three channels. **16-bit and 32-bit** greyscale (I;16,
  I, F) is scaled into 0..255 first (I;16 divides by 257; I/F by their range), instead of PIL's
  clipping, which would turn most 16-bit images white.
* **CMYK, YCbCr, LAB, HSV** go through PIL's own conversion to RGB.
* **Arrays** are taken as RGB: ``(H, W)`` greyscale, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, in
  uint8 0..255 or floating point 0..1.
* **Fast decode** (opt-in, ``load_rgb(source, fast_decode_for=resize)``): a big picture is shrunk
  while (or right after) it is decoded, to no less than twice ``resize`` on its shorter side, so the
  exact resize that follows works on a few hundred thousand pixels instead of twelve million. A JPEG
  *file* is decoded with PIL's draft mode (the decoder's DCT-domain 1/2, 1/4 or 1/8 scaling: a 12 MP
  photo decodes in a fraction of the time); anything else (PNG, a PIL image, an array, or a JPEG
  still over 4x the target after draft) is box-averaged by an integer factor with ``Image.reduce``.
  The shorter side is the same axis-free number before and after the EXIF rotation, so the rule
  holds for the upright picture. Size checks (the decompression-bomb limit) still see the declared size.

Every failure is an :class:`ImageError` naming the file and the reason.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .file_checks import input_file_problem
from .pixels import decode_into_one_block

# the files a folder given to `npshuffle predict` contributes (compared with the name in lower case);
# a data set's split keeps to the seed project's subset (training.datasets.SEED_IMAGE_EXTENSIONS)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageError(ValueError):
    """An input that is not a usable image; the message names it and says why."""


def describe(source: object) -> str:
    """A short name for an input, for messages and result rows."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} image {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def fast_decode_factor(size: tuple[int, int], target: int, choices: tuple[int, ...] | None = None) -> int:
    """The largest shrink factor that keeps the shorter side of ``size`` at least ``2 * target``
    (1: none). ``choices``: the factors allowed, e.g. JPEG draft's (8, 4, 2); default any integer."""
    if target < 1:
        raise ValueError(f"fast decode target must be a positive size in pixels, got {target}")
    most = min(size) // (2 * target)
    if choices is None:
        return max(most, 1)
    return max((f for f in choices if f <= most), default=1)


def shrink(image: Image.Image, target: int) -> Image.Image:
    """``image`` box-averaged by the largest integer factor (``Image.reduce``) that keeps its shorter
    side at least ``2 * target``; the image itself when that factor is 1. Modes reduce cannot take
    (P, 1, I;16, ...) are left for :func:`to_rgb`; :func:`load_rgb` shrinks those after conversion."""
    factor = fast_decode_factor(image.size, target)
    if factor == 1 or image.mode not in _REDUCIBLE_MODES:
        return image
    return image.reduce(factor)


# open_image's note on a drafted JPEG: (declared size, draft factor); and load_rgb's on a shrunk image,
# read by preprocess.resize_shorter_side: (upright full size, the full picture's box in this image, this size)
_DRAFTED = "npshuffle_drafted"
FAST_DECODE_GEOMETRY = "npshuffle_fast_decode_geometry"

# load_rgb's note on an RGB photo it left as stored (keep_orientation=True): its EXIF orientation (2-8),
# which preprocessing applies as it reads the pixels (kernels/cpu/resample.py), or with upright()
PENDING_ORIENTATION = "npshuffle_pending_orientation"

# where a point (x, y) of a (w, h) image goes under each EXIF orientation's transpose (as exif_transpose does it)
_MOVE = {2: lambda x, y, w, h: (w - x, y), 3: lambda x, y, w, h: (w - x, h - y), 4: lambda x, y, w, h: (x, h - y),
         5: lambda x, y, w, h: (y, x), 6: lambda x, y, w, h: (h - y, x), 7: lambda x, y, w, h: (h - y, w - x),
         8: lambda x, y, w, h: (y, w - x)}


def _fast_decode(image: Image.Image, name: str, target: int) -> Image.Image:
    """load_rgb's fast path: shrink, make RGB and upright, and note the exact geometry, so the resize
    that follows maps the same part of the picture to the same output pixels as the full-size path
    (a shrunk side is rounded up: its last pixel covers only part of a block)."""
    (full_w, full_h), factor = image.info.get(_DRAFTED, (image.size, 1))
    orientation = _orientation(image)
    first = shrink(image, target)
    if first is not image:
        factor *= fast_decode_factor(image.size, target)
    box = (0.0, 0.0, full_w / factor, full_h / factor)  # the full picture, in the shrunk one
    rgb = to_rgb(first, name)
    stored = first.size
    if orientation in _MOVE and (rgb.size == stored[::-1] if orientation >= 5 else rgb.size == stored):
        if orientation >= 5:
            full_w, full_h = full_h, full_w
        (x0, y0), (x1, y1) = (_MOVE[orientation](x, y, *stored) for x, y in ((box[0], box[1]), (box[2], box[3])))
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    second = shrink(rgb, target)  # the modes reduce cannot take (P, 1, I;16), now RGB
    if second is not rgb:
        f = fast_decode_factor(rgb.size, target)
        factor *= f
        box = tuple(v / f for v in box)
    if factor == 1:
        return second
    if second is rgb:
        second = second.copy()  # never write into a caller's image
    second.info[FAST_DECODE_GEOMETRY] = ((full_w, full_h), box, second.size)
    return second


# modes Image.reduce averages correctly (RGBA/LA via premultiplied alpha, so compositing afterwards is exact)
_REDUCIBLE_MODES = ("RGB", "L", "RGBA", "LA", "CMYK", "YCbCr", "I", "F")


def open_image(path: str | os.PathLike, fast_decode_for: int | None = None) -> Image.Image:
    """Open and fully decode an image file (so truncation is found here, not later).

    ``fast_decode_for``: the resize target; a JPEG is then decoded with draft mode to no less than
    twice it on the shorter side (see the module docstring). The declared size is checked first.
    """
    path = os.fspath(path)
    problem = image_file_problem(path)
    if problem:
        raise ImageError(f"{path}: {problem}")
    return _decode(path, path, fast_decode_for)


def image_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be an image before anything opens it, or None: what
    :func:`npshuffle.file_checks.input_file_problem` refuses (a FIFO or a device would block or
    never end), or an empty file."""
    problem = input_file_problem(path)
    if problem is None and os.path.getsize(path) == 0:
        problem = "empty file (0 bytes)"
    return problem


def open_failure(exc: BaseException, broken: str = "broken or truncated image") -> str | None:
    """What PIL's refusal ``exc`` to open or decode a file means, in the words of one error line
    (``broken``: the words for a file whose content PIL cannot parse), or None for an exception
    that is not one of PIL's refusals."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file (format not recognised)"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large to decode safely ({exc})"
    if isinstance(exc, OSError) and exc.errno:  # the system's refusal (permission denied, an I/O error)
        return f"cannot be opened ({exc.strerror})"
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        return f"{broken} ({exc})"
    return None


def open_bytes(data: bytes | bytearray | memoryview, name: str, fast_decode_for: int | None = None) -> Image.Image:
    """:func:`open_image` for an encoded image held in memory (a file's bytes, as a data pipeline
    reads them); ``name`` names it in messages."""
    if len(data) == 0:
        raise ImageError(f"{name}: empty (0 bytes)")
    return _decode(io.BytesIO(bytes(data)), name, fast_decode_for)


def _decode(source, name: str, fast_decode_for: int | None) -> Image.Image:
    """Open ``source`` (a path or a file object) with PIL and decode it, every failure an ImageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            if fast_decode_for is not None and image.format == "JPEG":
                factor = fast_decode_factor(image.size, fast_decode_for, choices=(8, 4, 2))
                if factor > 1:  # asking for (w // f, h // f) makes PIL's draft pick exactly f
                    declared = image.size
                    image.draft("RGB", (image.size[0] // factor, image.size[1] // factor))
                    image.info[_DRAFTED] = (declared, factor)
            decode_into_one_block(image)  # (so that preprocessing can read its pixels without a copy)
            image.load()
            if getattr(image, "n_frames", 1) > 1:
                # PIL keeps a multi-frame file (an MPO from some cameras, an APNG) open after decoding,
                # to seek to other frames; a folder or training set of them would run out of files
                image = _detached(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: {open_failure(exc)}") from None
    return image


def _detached(image: Image.Image) -> Image.Image:
    """A decoded copy of ``image`` (its info, EXIF included, kept), with the file it read closed."""
    copy = image.copy()
    image.close()
    return copy


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (2-8) that ``ImageOps.exif_transpose`` would undo, or 1: upright, no
    orientation, a value that is not one, or an EXIF block PIL cannot read (which must not lose the
    picture)."""
    try:
        value = image.getexif().get(0x0112, 1)
        return value if value in _MOVE else 1
    except Exception:  # noqa: BLE001 - whatever a malformed EXIF block makes PIL raise
        return 1


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned upright by its EXIF orientation; ``image`` itself when it already is
    (``ImageOps.exif_transpose`` copies it then: 35 ms for a 12 MP photo, a quarter of its
    preprocessing)."""
    if _orientation(image) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not lose the picture
        return image


def upright(image: Image.Image) -> Image.Image:
    """An image from ``load_rgb(..., keep_orientation=True)`` turned upright (itself when it is)."""
    if image.info.get(PENDING_ORIENTATION, 1) == 1:
        return image
    turned = _upright(image)
    turned.info.pop(PENDING_ORIENTATION, None)  # (a transpose copies the info)
    return turned


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of ``image`` once upright: swapped while a quarter turn is pending."""
    return image.size[::-1] if image.info.get(PENDING_ORIENTATION, 1) >= 5 else image.size


def to_rgb(image: Image.Image, name: str = "image", keep_orientation: bool = False) -> Image.Image:
    """Any PIL image -> RGB, upright, following the rules in the module docstring. An RGB image
    that is already upright comes back as itself (never modified). ``keep_orientation``: an RGB
    image that is not upright comes back as stored, its orientation noted in its info under
    ``PENDING_ORIENTATION`` (it is modified: pass only an image of your own)."""
    if keep_orientation and image.mode == "RGB":
        orientation = _orientation(image)
        if orientation != 1:
            image.info[PENDING_ORIENTATION] = orientation
        return image
    image = _upright(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        return _over_white(image)
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(image), mode), mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: cannot convert PIL mode {mode!r} to RGB ({exc})") from None


# Pixels per strip when converting a picture piece by piece: the temporaries of a conversion (RGBA
# copies, float64 values) then cost a few MB whatever the picture's size, instead of 4-20 bytes for
# every pixel of, say, an 88-megapixel PNG that is a few hundred KB on disk.
STRIP_PIXELS = 1 << 20


def _strips(height: int, width: int):
    """(top, bottom) row ranges of about STRIP_PIXELS pixels each, covering ``height`` rows."""
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def _over_white(image: Image.Image) -> Image.Image:
    """An image with transparency (RGBA, LA, RGBa, La, PA) composited over white, as RGB; strip by
    strip, which gives the same pixels as compositing the whole picture at once (each pixel is
    composited on its own)."""
    width, height = image.size
    out = Image.new("RGB", image.size)
    for top, bottom in _strips(height, width):
        rgba = image.crop((0, top, width, bottom)).convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(background, rgba).convert("RGB"), (0, top))
    return out


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit greyscale (H, W) -> uint8 (H, W): I;16 divided by 257, I and F stretched from their
    range to 0..255 when it goes outside it; computed strip by strip in float64."""
    out = np.empty(values.shape, np.uint8)
    low = high = 0.0
    if not mode.startswith("I;16"):
        low, high = float(values.min()), float(values.max())
    for top, bottom in _strips(*values.shape[:2]):
        strip = values[top:bottom].astype(np.float64)
        if mode.startswith("I;16"):
            strip /= 257.0
        elif low < 0 or high > 255:
            strip = (strip - low) * (255.0 / max(high - low, 1e-12))
        out[top:bottom] = np.clip(np.rint(strip, out=strip), 0, 255, out=strip)
    return out


def array_to_image(array: np.ndarray) -> Image.Image:
    """An RGB(A)/greyscale array (H, W[, 3|4]), uint8 0..255 or float 0..1 -> PIL image."""
    shape = array.shape
    if array.ndim not in (2, 3) or (array.ndim == 3 and shape[2] not in (1, 3, 4)):
        raise ImageError(
            f"array of shape {shape}: expected (H, W) greyscale, (H, W, 3) RGB or (H, W, 4) RGBA "
            "(channels last; for a CHW array use array.transpose(1, 2, 0))"
        )
    if array.size == 0:
        raise ImageError(f"array of shape {shape}: empty (no pixels)")
    if array.dtype == np.uint8:
        data = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"array of shape {shape}: holds NaN or infinite values")
        if array.min() < 0 or array.max() > 1:
            raise ImageError(
                f"float array of shape {shape} has values in [{array.min():g}, {array.max():g}]: "
                "float images must be in 0..1 (or pass uint8 0..255)"
            )
        data = np.rint(array * 255).astype(np.uint8)
    else:
        raise ImageError(f"array of dtype {array.dtype}: expected uint8 (0..255) or float (0..1)")
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[data.ndim if data.ndim == 2 else data.shape[2]]
    return Image.fromarray(np.ascontiguousarray(data), mode=mode)


def decoded(image: Image.Image, name: str) -> Image.Image:
    """A PIL image the caller made, with its pixels decoded now: an image from ``Image.open`` is
    only decoded on first use, so a truncated file, or one closed since, fails here, by name."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: broken, truncated or closed PIL image ({exc})") from None
    if 0 in image.size:
        raise ImageError(f"{name}: empty image (no pixels)")
    return image


def load_rgb(source: object, fast_decode_for: int | None = None, keep_orientation: bool = False) -> Image.Image:
    """A path, PIL image or array -> RGB PIL image. Raises :class:`ImageError`.

    ``fast_decode_for``: None (default) decodes at full size. An int (the recipe's ``resize``)
    shrinks a big picture to no less than twice that on its shorter side: JPEG files by draft-mode
    decoding, everything else by ``Image.reduce`` (see the module docstring). A PIL image handed in
    is never modified. ``keep_orientation`` (not for a PIL image handed in; no fast decode): an RGB photo that is not
    upright is left as stored, with its orientation noted for preprocessing (:func:`to_rgb`; turning
    a 12 MP photo costs 96 ms, and the resampling kernel reads it turned for free); :func:`upright`
    turns it.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        image = open_image(source, fast_decode_for)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = describe(source)
        image = open_bytes(source, name, fast_decode_for)
    elif isinstance(source, Image.Image):
        name = describe(source)
        image = decoded(source, name)
    elif isinstance(source, np.ndarray):
        name = "image"
        image = array_to_image(source)
    else:
        raise ImageError(
            f"cannot read an image from a {type(source).__name__}: pass a path, a PIL image or an array")
    if fast_decode_for is None:
        return to_rgb(image, name, keep_orientation and not isinstance(source, Image.Image))  # (ours to annotate)
    return _fast_decode(image, name, fast_decode_for)
