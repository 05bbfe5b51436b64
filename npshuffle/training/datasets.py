"""Class-per-folder image data sets and the seed's reproducible train/validation split (no torch).

A data set is a folder with one sub-folder per class (``flower_photos/daisy/*.jpg``, ...). The
split reproduces the seed project's ``utils.read_split_data`` exactly::

    random.seed(0)
    classes = sorted(sub-folders)
    for each class, in that order:
        images = sorted(files ending .jpg/.JPG/.png/.PNG)
        val = random.sample(images, k=int(len(images) * 0.2))
        the rest (in sorted order) -> train

(one ``random.Random(0)`` here instead of the global generator: the same numbers). Files are
recorded relative to the data folder with ``/`` separators, so a ``split.json`` written on one
machine selects the same photos on another. Where the seed would go wrong silently, this refuses or
differs: a hidden sub-folder (``.git``) is no class, a hidden file (``._photo.jpg``) is no image, and a
class folder with no images, or a data folder of fewer than two classes, is refused
(:func:`class_listing`).

Photos are read as ``npshuffle predict`` reads them (:func:`load_image`): EXIF orientation applied,
so training, ``npshuffle eval`` and prediction see a photo taken sideways the same way.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

from PIL import Image

from ..atomic import write_atomically
from ..images import IMAGE_EXTENSIONS, ImageError, image_file_problem, load_rgb, open_failure

# The seed's extensions, matched case-sensitively, as its read_split_data does: the split of a folder
# must select exactly the seed's photos (a .jpeg, .bmp or .Jpg file is not in it). The runtime's
# list of image files (npshuffle.images.IMAGE_EXTENSIONS, matched ignoring case) holds more.
SEED_IMAGE_EXTENSIONS = (".jpg", ".JPG", ".png", ".PNG")
SPLIT_FORMAT = "npshuffle-split"


class DatasetError(ValueError):
    """A data folder or split file that cannot be used; the message says why."""


@dataclass
class Split:
    """A seed-style split: class names (index order) and relative file paths per part."""

    classes: list[str]
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    seed: int = 0
    val_rate: float = 0.2
    # images in the class folders that the split leaves out (not the seed's extensions: x.jpeg,
    # x.Jpg), for a note; from the listing the split was made from, and not written to split.json
    left_out: list[str] = field(default_factory=list)

    def label_of(self, relpath: str) -> int:
        """The class index of a file, from its folder name."""
        return self.classes.index(class_of(relpath))

    def labels(self, part: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.classes)}
        return [index[class_of(p)] for p in getattr(self, part)]

    def class_indices(self) -> dict[str, str]:
        """The seed's ``class_indices.json`` content: ``{"0": "daisy", ...}``."""
        return {str(i): name for i, name in enumerate(self.classes)}

    def to_dict(self) -> dict:
        return {
            "format": SPLIT_FORMAT, "seed": self.seed, "val_rate": self.val_rate,
            "classes": self.classes, "train": self.train, "val": self.val,
        }


def class_of(relpath: str) -> str:
    """The class (first folder) of a relative path ``daisy/123.jpg``."""
    return relpath.replace(os.sep, "/").split("/", 1)[0]


class ClassFiles(NamedTuple):
    """The images of one class folder, as sorted relative paths ``cls/name.jpg``."""

    seed: list[str]  # the seed's extensions, matched case-sensitively: the photos a split takes
    others: list[str]  # other image files npshuffle reads (x.jpeg, x.Jpg, x.webp): to predict, in no split


def class_listing(root: str | os.PathLike, min_classes: int = 2,
                  every_image: bool = False) -> dict[str, ClassFiles]:
    """{class: its images (:class:`ClassFiles`)} for the class sub-folders of ``root``, in sorted
    class order (the seed's), each folder listed once.

    A hidden folder (``.git``, ``.ipynb_checkpoints``) is no class. Refused, each in one line: a
    class folder holding no images (it would be a class nothing teaches or tests; with
    ``every_image`` False, only the seed's extensions count, as in a split) and fewer than
    ``min_classes`` classes (a classifier of one class learns nothing; evaluating one class is fine).
    """
    root = str(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: no such data folder (expected one sub-folder of images per class)")
    classes = sorted(d for d in _names(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders found (expected e.g. {root}/daisy/*.jpg)")
    listing = {cls: class_files(root, cls) for cls in classes}
    empty = [cls for cls in classes if not (listing[cls].seed or (every_image and listing[cls].others))]
    if empty:
        folder, others = os.path.join(root, empty[0]), listing[empty[0]].others
        kind = "images" if every_image else "photos a split takes"
        more = f" (and {len(empty) - 1} more class folder(s) without {kind})" if len(empty) > 1 else ""
        if others:
            raise DatasetError(f"{folder}: class folder holds no {'/'.join(SEED_IMAGE_EXTENSIONS)} photos, the only "
                               f"files a split takes (as the seed's does); its {len(others)} other image(s), e.g. "
                               f"{others[0]}, are left out: rename them to .jpg or .png{more}")
        extensions = IMAGE_EXTENSIONS if every_image else SEED_IMAGE_EXTENSIONS
        raise DatasetError(f"{folder}: class folder holds no images ({', '.join(extensions)}){more}; "
                           "add its photos or move the folder out")
    if len(classes) < min_classes:
        raise DatasetError(f"{root}: only {len(classes)} class folder(s) ({', '.join(classes)}); at least "
                           f"{min_classes} are needed, one sub-folder of images per class")
    return listing


def _names(folder: str) -> list[str]:
    """The entries of ``folder``; a folder that cannot be listed is a DatasetError."""
    try:
        return os.listdir(folder)
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def class_files(root: str | os.PathLike, cls: str) -> ClassFiles:
    """The images of one class folder, from one listing (:class:`ClassFiles`; image files are those
    of :data:`npshuffle.images.IMAGE_EXTENSIONS`, any case). A hidden file is none (macOS leaves a
    ``._name.jpg`` of metadata beside each photo copied from it)."""
    seed_images, others = [], []
    for name in sorted(_names(os.path.join(str(root), cls))):
        extension = os.path.splitext(name)[-1]
        if name.startswith(".") or extension.lower() not in IMAGE_EXTENSIONS:
            continue
        (seed_images if extension in SEED_IMAGE_EXTENSIONS else others).append(f"{cls}/{name}")
    return ClassFiles(seed_images, others)


def list_dataset(root: str | os.PathLike, min_classes: int = 2,
                 every_image: bool = False) -> tuple[list[str], list[str]]:
    """(classes, images as relative paths, class by class, each class sorted); ``min_classes`` as in
    :func:`class_listing`. The images a split takes, or with ``every_image`` every image file (a
    ``.jpeg`` too). Every class holds an image, so the list is never empty."""
    listing = class_listing(root, min_classes, every_image)
    if every_image:
        images = [p for files in listing.values() for p in sorted(files.seed + files.others)]
    else:
        images = [p for files in listing.values() for p in files.seed]
    return list(listing), images


def seed_split(root: str | os.PathLike, val_rate: float = 0.2, seed: int = 0) -> Split:
    """The seed's ``read_split_data(root, val_rate)`` split (see the module docstring)."""
    if not 0.0 <= val_rate < 1.0:
        raise DatasetError(f"val_rate must be in [0, 1), got {val_rate}")
    rng = random.Random(seed)
    listing = class_listing(root)
    split = Split(list(listing), seed=seed, val_rate=val_rate)
    for files in listing.values():
        images = files.seed
        split.left_out += files.others
        val = set(rng.sample(images, k=int(len(images) * val_rate)))
        for path in images:
            (split.val if path in val else split.train).append(path)
    if not split.train:
        raise DatasetError(f"{root}: no training images")
    return split


def write_split(split: Split, out_dir: str | os.PathLike) -> tuple[str, str]:
    """Write ``split.json`` and ``class_indices.json`` into ``out_dir``; returns both paths."""
    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    split_path = os.path.join(out_dir, "split.json")
    classes_path = os.path.join(out_dir, "class_indices.json")
    for path, data, indent in ((split_path, split.to_dict(), 1), (classes_path, split.class_indices(), 4)):
        text = json.dumps(data, indent=indent).encode("utf-8")
        write_atomically(path, lambda f, text=text: f.write(text))  # (a run without its split cannot resume)
    return split_path, classes_path


def read_split(path: str | os.PathLike) -> Split:
    """Read a ``split.json`` written by :func:`write_split`."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != SPLIT_FORMAT:
            raise DatasetError(f"{path}: not an npshuffle split file (format is not {SPLIT_FORMAT!r})")
        return Split(
            [str(c) for c in data["classes"]], [str(p) for p in data["train"]], [str(p) for p in data["val"]],
            seed=int(data.get("seed", 0)), val_rate=float(data.get("val_rate", 0.2)),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # (ValueError: bad JSON, not UTF-8)
        raise DatasetError(f"{path}: cannot read the split file ({type(exc).__name__}: {exc})") from None


def load_image(path: str | os.PathLike) -> Image.Image:
    """An image file as an RGB PIL image, decoded now, as ``npshuffle predict`` reads it
    (:func:`npshuffle.images.load_rgb`): its declared size checked before decoding (the
    decompression-bomb limit), turned upright by its EXIF orientation, transparency over white.
    Every failure is a DatasetError naming the file."""
    try:
        return load_rgb(path)
    except ImageError as exc:
        raise DatasetError(str(exc)) from None


def read_headers(root: str | os.PathLike, files: list[str]) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """Read the headers of ``files`` (relative to ``root``), none decoded. Returns ({path: (width,
    height)} as declared, for the files whose header reads; [(path, why it cannot be read)] for the
    others). A photo whose header reads may still fail to decode (a truncated file): decoding names it."""
    sizes, unreadable = {}, []
    for path in files:
        full = os.path.join(str(root), path)
        problem = image_file_problem(full)
        if problem:
            unreadable.append((path, problem))
            continue
        try:
            with warnings.catch_warnings():  # (as decoding does: a photo over PIL's limit is refused)
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(full) as image:
                    sizes[path] = image.size
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            unreadable.append((path, open_failure(exc, broken="broken image header")))
    return sizes, unreadable
