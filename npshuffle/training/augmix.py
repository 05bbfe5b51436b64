"""AugMix (Hendrycks et al., ICLR 2020) on one training crop: ``--augment strong-augmix``.

AugMix was designed for robustness to corruptions the network never sees in training. It draws
WIDTH short chains of geometric and tonal operations, applies each chain to the crop, blends the
chains' results with Dirichlet weights, and blends that with the untouched crop (a Beta draw), so
the network sees varied but recognisable images whose statistics differ from the training photos'.

The operations are the paper's: autocontrast, equalize, posterize, rotate, solarize, shear and
translate, with its strengths at a level L on a 0..10 scale (rotate 3 L degrees, shear 0.03 L,
translate L / 30 of the side). Rotation and translation keep their fractional amounts (the paper's
code rounds them to whole degrees and pixels). The paper left out brightness, contrast, colour and
sharpness because they overlap ImageNet-C's corruptions; none of the eight rows of
`npshuffle eval --corruptions` (blur, JPEG, noise, brightness, contrast, downscale, offset crop,
greyscale) is among these operations either. The paper's Jensen-Shannon consistency loss, which
needs three forward passes per photo, is not used: its ablation credits the mixing alone with part
of the gain, and three passes would triple the cost of an epoch.

Every draw comes from torch's RNG, as in :func:`pipeline.strong_augment`, so a seeded run repeats.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageOps

WIDTH = 3  # chains blended per crop
MAX_DEPTH = 3  # operations per chain: 1 to MAX_DEPTH, drawn per chain
SEVERITY = 3  # each operation's level is drawn from [0.1, SEVERITY] on the paper's 0..10 scale


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(1).item()


def _signed(magnitude: float) -> float:
    return magnitude if torch.rand(1).item() < 0.5 else -magnitude


def _affine(image: Image.Image, coefficients: tuple) -> Image.Image:
    # PIL's affine maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f)
    return image.transform(image.size, Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR)


def _posterize(image, level):
    return ImageOps.posterize(image, 4 - int(level * 4 / 10))  # at SEVERITY 3: 4 bits kept below level 2.5, else 3


def _rotate(image, level):
    return image.rotate(_signed(level * 30 / 10), resample=Image.Resampling.BILINEAR)  # at SEVERITY 3: up to 9 degrees


def _solarize(image, level):
    return ImageOps.solarize(image, 256 - int(level * 256 / 10))  # invert pixels above the threshold


def _shear_x(image, level):
    return _affine(image, (1, _signed(level * 0.3 / 10), 0, 0, 1, 0))


def _shear_y(image, level):
    return _affine(image, (1, 0, 0, _signed(level * 0.3 / 10), 1, 0))


def _translate_x(image, level):
    return _affine(image, (1, 0, _signed(level * image.size[0] / 3 / 10), 0, 1, 0))


def _translate_y(image, level):
    return _affine(image, (1, 0, 0, 0, 1, _signed(level * image.size[1] / 3 / 10)))


OPERATIONS = (
    lambda image, level: ImageOps.autocontrast(image),
    lambda image, level: ImageOps.equalize(image),
    _posterize, _rotate, _solarize, _shear_x, _shear_y, _translate_x, _translate_y,
)


def _dirichlet_ones(count: int) -> np.ndarray:
    # Dirichlet(1, ..., 1) (the paper's alpha = 1): unit exponential draws, normalised
    draws = np.array([-math.log(1.0 - torch.rand(1).item()) for _ in range(count)])
    return draws / draws.sum()


def augmix(crop: Image.Image) -> Image.Image:
    """One RGB crop -> an RGB image of the same size: ``(1 - m) crop + m sum_i w_i chain_i(crop)``.

    ``w`` ~ Dirichlet(1, ..., 1) over the WIDTH chains, ``m`` ~ Beta(1, 1) (uniform), each chain
    1..MAX_DEPTH operations drawn from OPERATIONS with levels in [0.1, SEVERITY]. Blended in float,
    rounded to uint8."""
    weights = _dirichlet_ones(WIDTH)
    mixed = np.zeros((crop.size[1], crop.size[0], 3), dtype=np.float32)
    for weight in weights:
        image = crop
        for _ in range(int(torch.randint(1, MAX_DEPTH + 1, (1,)).item())):
            operation = OPERATIONS[int(torch.randint(0, len(OPERATIONS), (1,)).item())]
            image = operation(image, _uniform(0.1, SEVERITY))
        mixed += np.float32(weight) * np.asarray(image, dtype=np.float32)
    share = torch.rand(1).item()  # Beta(1, 1)
    blend = (1 - share) * np.asarray(crop, dtype=np.float32) + share * mixed
    return Image.fromarray(np.clip(np.rint(blend), 0, 255).astype(np.uint8), "RGB")
