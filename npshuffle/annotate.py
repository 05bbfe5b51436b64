"""``npshuffle predict --annotate``: a copy of each photo with its top-1 label drawn on it.

Written atomically, never over an input photo of the run, over another existing file only with
``--overwrite``; the folder is checked before any work starts.
"""

from __future__ import annotations

import os


def check_output_folder(folder: str) -> str | None:
    """Why ``--annotate FOLDER`` cannot be written to (checked before any work), or None."""
    import tempfile

    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"--annotate {folder}: is a file, not a folder"
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        return f"--annotate {folder}: cannot write there ({exc.strerror or exc}); choose another folder"
    return None


def annotate(prediction, folder: str, used: set[str], overwrite: bool = False,
             inputs: frozenset | set = frozenset()) -> str | None:
    """Save a copy of the image with its top-1 label and probability drawn on it, atomically (a
    temporary file renamed into place). Never over an input photo of this run (``inputs``: their
    real paths); over another existing file only with ``overwrite``. Returns why it could not, or None."""
    from PIL import ImageDraw, ImageFont

    from .atomic import write_atomically
    from .images import ImageError, load_rgb

    stem, ext = os.path.splitext(os.path.basename(prediction.source))
    ext = ext.lower() if ext.lower() in _FORMATS else ".png"  # (a format PIL can write, else PNG)
    name, n = stem + ext, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}{ext}"
    used.add(name)
    target = os.path.join(folder, name)
    if os.path.exists(target):
        if os.path.realpath(target) in inputs or os.path.samefile(target, prediction.source):
            return f"--annotate would overwrite an input photo ({target}): choose another folder"
        if not overwrite:
            return f"--annotate: {target} already exists (--overwrite replaces it)"
    try:
        image = load_rgb(prediction.source).copy()
    except ImageError as exc:
        return f"--annotate: {exc}"
    draw = ImageDraw.Draw(image)
    size = max(12, image.size[1] // 18)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    text = f"{prediction.label}: {100 * prediction.probability:.1f}%"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 5)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    try:
        write_atomically(target, lambda f: image.save(f, format=_FORMATS[ext]))
    except (OSError, ValueError) as exc:
        return f"--annotate: cannot write {target} ({exc})"
    return None


_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF",
            ".tiff": "TIFF"}
