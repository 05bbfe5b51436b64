"""Test-time augmentation: classify a few views of each photo and average their probabilities.

The views are cut with the model's own recipe (``npshuffle.preprocess``: Resize(``resize``) of the
shorter side, crops of ``crop`` px, the recipe's channel order and normalisation):

============  =====  ===========================================================================
views         count  which
============  =====  ===========================================================================
``flip``      2      the centre crop (exactly what plain prediction classifies) and its mirror
                     image (left <-> right)
``ten-crop``  10     the centre crop and the four corner crops of the resized photo, each with
                     its mirror image (torchvision's ``TenCrop`` after ``Resize``)
============  =====  ===========================================================================

Averaged are the views' *probabilities* (softmax of each view's logits), not their logits: the
average of probabilities is the ensemble's vote, in which each view has a say of at most 1/V,
while an average of logits (a normalised geometric mean of probabilities) lets one view with
extreme scores, say a corner crop that misses the flower and is confidently wrong, outvote the
others. It is also what the classic multi-crop evaluations (AlexNet's, ResNet's) average.

Cost: one network pass per view, so ``flip`` runs the network twice per photo and ``ten-crop``
ten times; the photo is decoded and resized once (``docs/robustness.md`` has the times measured).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .images import load_rgb, upright
from .predict import mean_view_probabilities, prepare_views
from .preprocess import center_crop, normalise, resize_shorter_side

TTA_VIEWS = {"flip": 2, "ten-crop": 10}  # name -> views per photo


def tta_views(image, recipe: dict, views: str = "flip") -> np.ndarray:
    """One photo (path, PIL image of any mode, or RGB array) -> float32 ``(V, 3, crop, crop)``, the
    views of the table in the module docstring, in this order: ``flip``: centre, centre mirrored;
    ``ten-crop``: centre, top-left, top-right, bottom-left, bottom-right, then the five mirrored.
    View 0 is the very array ``npshuffle.preprocess.preprocess_batch`` makes of the photo."""
    if views not in TTA_VIEWS:
        raise ValueError(f"unknown TTA views {views!r}; known: {', '.join(TTA_VIEWS)}")
    crop = recipe["crop"]
    image = upright(load_rgb(image))  # (load_rgb then upright: EXIF orientation applied, as preprocess does)
    resized = resize_shorter_side(image, recipe["resize"], recipe["interpolation"])
    crops = [np.asarray(center_crop(resized, crop))]  # (PIL's crop, as preprocess_image takes it)
    if views == "ten-crop":
        w, h = resized.size
        if min(w, h) < crop:
            raise ValueError(f"the recipe resizes to {recipe['resize']} px, less than its {crop} px crop: "
                             "no corner crops")
        pixels = np.asarray(resized)  # (H, W, 3) uint8
        for top, left in ((0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop)):
            crops.append(pixels[top:top + crop, left:left + crop])
    normalised = [normalise(np.ascontiguousarray(c), recipe) for c in crops]  # each (3, crop, crop)
    mirrored = [x[:, :, ::-1] for x in normalised]  # CHW: the last axis is the image's width
    return np.stack(normalised + mirrored)


def tta_probabilities(model, images: list, views: str = "flip", batch_size: int = 32) -> np.ndarray:
    """Averaged class probabilities of ``images`` (a list of paths, PIL images or RGB arrays) under
    ``model`` (an npshuffle :class:`~npshuffle.model.Model`, or anything with ``.recipe`` and
    ``.forward``): float32 ``(N, num_classes)``, each row the mean over the photo's views of
    ``softmax(logits)`` (see the module docstring for why probabilities), so each row sums to 1.

    Photos go through in groups of ``batch_size // V`` (at least one), all views of a group in one
    network pass: memory stays bounded however many photos there are. An unusable photo raises
    ``npshuffle.ImageError``, its message starting with the photo's name.
    """
    count = view_count(views)
    if isinstance(images, (str, Image.Image, np.ndarray)):
        raise TypeError("tta_probabilities takes a list of images")
    out = np.empty((len(images), len(model.class_names)), np.float32)
    group = photos_per_pass(batch_size, count)
    for start in range(0, len(images), group):
        chunk = images[start:start + group]
        # (prepare_views: tta_views with every failure an ImageError that names the photo)
        stacked = np.concatenate([prepare_views(image, model.recipe, views) for image in chunk])  # (n * V, 3, c, c)
        out[start:start + len(chunk)] = mean_view_probabilities(model.forward(stacked), count)
    return out


def view_count(views: str) -> int:
    """Views per photo of a TTA name (:data:`TTA_VIEWS`); ValueError for an unknown name."""
    if views not in TTA_VIEWS:
        raise ValueError(f"unknown TTA views {views!r}; known: {', '.join(TTA_VIEWS)}")
    return TTA_VIEWS[views]


def photos_per_pass(batch_size: int, views: int) -> int:
    """Photos per network pass when each has ``views`` views: ``batch_size // views``, one at least,
    so that a pass takes at most ``batch_size`` images (and memory) whether or not TTA is on."""
    return max(1, batch_size // views)
