"""A PIL image's RGB pixels as a NumPy array, without copying them.

PIL keeps an RGB pixel in four bytes (R, G, B and one unused), in rows that may be spread over
several blocks of memory. ``np.asarray(image)`` therefore copies: it packs every row into 3-byte
pixels, which costs 51 ms for a 12-megapixel photo, as long as decoding it. Pillow (11.2 and later)
also exports its own pixel memory through the Arrow C data interface (``image.__arrow_c_array__``),
with no copy, when the image sits in one block of memory. Two pieces use that:

* :func:`decode_into_one_block`, called on a JPEG just before it is decoded, gives it one block of
  memory (an image under Pillow's block size, 16 MB, gets one anyway);
* :func:`rgbx_view` then returns the pixels as a read-only ``uint32`` array ``(H, W)``: pixel
  ``(y, x)`` is the word ``R | G << 8 | B << 16`` (plus the unused byte, << 24).

Anything else (an older Pillow, an image in several blocks, a big-endian machine) gets None, and the
caller falls back to PIL's own resize.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
from PIL import Image


class _ArrowArray(ctypes.Structure):
    """``struct ArrowArray`` of the Arrow C data interface (a stable ABI)."""


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)), ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.c_void_p), ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p),
]


class _ArrowSchema(ctypes.Structure):
    """``struct ArrowSchema`` of the Arrow C data interface."""


_ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p), ("name", ctypes.c_char_p), ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))), ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p),
]

# PyCapsule_GetPointer(capsule, name) with our own prototype (setting argtypes on
# ctypes.pythonapi's shared function object would change it for everybody)
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


def decode_into_one_block(image: Image.Image) -> None:
    """Before ``image.load()``: let a not yet decoded RGB JPEG bigger than Pillow's block size decode
    into one block of memory (``Image.core.new_block``), so that :func:`rgbx_view` can see its
    pixels. Pillow decodes into the memory an image already has (``ImageFile.load_prepare``); the
    decoder checks that its tiles fit it. Anything else is left as it is."""
    core = Image.core
    if (image.format != "JPEG" or image.mode != "RGB" or getattr(image, "_im", True) is not None
            or not hasattr(core, "new_block")):
        return
    width, height = image.size
    if width * height * 4 > core.get_block_size():
        image.im = core.new_block(image.mode, image.size)


def rgbx_view(image: Image.Image) -> np.ndarray | None:
    """The pixels of an RGB PIL image as a read-only uint32 array (H, W), one word per pixel
    (``R | G << 8 | B << 16``), sharing the image's memory; None where they cannot be had
    without a copy (see the module docstring). The array keeps the image's memory alive."""
    if image.mode != "RGB" or sys.byteorder != "little" or not hasattr(image, "__arrow_c_array__"):
        return None
    try:
        schema_capsule, array_capsule = image.__arrow_c_array__()
    except ValueError:  # "Image rows are not contiguous in memory": several blocks
        return None
    schema = _ArrowSchema.from_address(_capsule_pointer(schema_capsule, b"arrow_schema"))
    array = _ArrowArray.from_address(_capsule_pointer(array_capsule, b"arrow_array"))
    width, height = image.size
    # an RGB image is width * height fixed-size lists of 4 uint8 ("+w:4" of "C")
    if (schema.format != b"+w:4" or schema.n_children != 1 or schema.children[0].contents.format != b"C"
            or array.n_children != 1 or array.length != width * height or array.offset != 0):
        return None
    values = array.children[0].contents
    if values.n_buffers != 2 or values.offset != 0 or values.length != width * height * 4 or not values.buffers[1]:
        return None
    memory = (ctypes.c_uint32 * (width * height)).from_address(values.buffers[1])
    memory._keep_alive = (image, schema_capsule, array_capsule)  # (the capsules release the export when freed)
    words = np.frombuffer(memory, np.uint32).reshape(height, width)
    words.flags.writeable = False
    return words

