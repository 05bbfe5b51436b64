"""The trainer's data pipeline (torch): images of a split -> uint8 RGB crops -> each network's input.

Training crops are torchvision's RandomResizedCrop + horizontal flip (``--augment strong`` adds
colour jitter, random greyscale and random erasing: :func:`strong_augment`; ``strong-augmix`` first
blends in AugMix chains: :mod:`.augmix`), validation crops Resize +
CenterCrop (npshuffle's own preprocessing, as the engine does). The crops stay uint8 RGB so that
one batch can feed networks of both dialects: each normalises it with its own recipe
(:class:`Normalize`; Megvii: BGR 0..255, torchvision: RGB normalised).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch import nn

from ..preprocess import center_crop, resize_shorter_side
from .arguments import AUGMENTS
from .augmix import augmix
from .datasets import DatasetError, load_image


def random_resized_crop_params(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision ``RandomResizedCrop.get_params`` (same algorithm and torch RNG calls): (top, left, h, w)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# --augment strong: photos people bring differ in exposure, white balance and colour, and objects are
# partly hidden; these teach the network not to lean on any one of those. Hue stays: a flower's hue
# is much of what tells roses from tulips from sunflowers. No blur (but with ``strong-blur``), noise or
# JPEG artefacts, so those rows of `npshuffle eval --corruptions` stay unseen corruptions.
JITTER = 0.4  # brightness, contrast and saturation factors drawn from [1 - JITTER, 1 + JITTER]
JITTER_P, GREY_P, ERASE_P = 0.8, 0.1, 0.25
ERASE_AREA, ERASE_LOG_RATIO = (0.02, 0.2), (math.log(0.3), math.log(3.3))
BLUR_P, BLUR_SIGMA = 0.2, (0.1, 2.0)  # strong-blur: SimCLR's Gaussian blur, sigma in px of the crop


def strong_augment(crop: Image.Image, blur: bool = False) -> np.ndarray:
    """The extra augmentations of ``--augment strong`` on one RGB training crop -> uint8 HWC RGB.

    With probability JITTER_P: brightness, contrast and saturation each scaled by a factor from
    [1 - JITTER, 1 + JITTER] (PIL's ImageEnhance, in that order); with GREY_P: greyscale (three equal
    channels); with ERASE_P: one rectangle of ERASE_AREA of the crop, aspect ratio in ERASE_LOG_RATIO
    (log), filled with uniform noise (random erasing, Zhong et al. 2017). With ``blur``, first, with
    BLUR_P: a Gaussian blur of sigma drawn from BLUR_SIGMA (as SimCLR's augmentation). Draws come
    from torch's RNG, so a seeded run repeats."""
    if blur and torch.rand(1).item() < BLUR_P:
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * torch.rand(1).item()
        crop = crop.filter(ImageFilter.GaussianBlur(sigma))
    if torch.rand(1).item() < JITTER_P:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            crop = enhance(crop).enhance(1 + JITTER * (2 * torch.rand(1).item() - 1))
    if torch.rand(1).item() < GREY_P:
        crop = crop.convert("L").convert("RGB")
    pixels = np.array(crop, dtype=np.uint8)
    if torch.rand(1).item() < ERASE_P:
        height, width = pixels.shape[:2]
        area = height * width * (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * torch.rand(1).item())
        ratio = math.exp(ERASE_LOG_RATIO[0] + (ERASE_LOG_RATIO[1] - ERASE_LOG_RATIO[0]) * torch.rand(1).item())
        h, w = min(height, int(round(math.sqrt(area * ratio)))), min(width, int(round(math.sqrt(area / ratio))))
        top = int(torch.randint(0, height - h + 1, (1,)).item())
        left = int(torch.randint(0, width - w + 1, (1,)).item())
        pixels[top:top + h, left:left + w] = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy()
    return pixels


class FolderDataset(torch.utils.data.Dataset):
    """Images of a split part -> (uint8 HWC RGB crop, label). ``train``: RandomResizedCrop(size) +
    horizontal flip, then per ``augment`` (one of AUGMENTS): ``strong``: :func:`strong_augment`;
    ``strong-blur``: the same with its blur; ``strong-augmix``: :func:`.augmix.augmix`, then
    :func:`strong_augment`. Else Resize(resize) + CenterCrop(size).
    ``cache`` keeps decoded images in memory (decoded once in the main process, shared copy-on-write
    with forked loader workers)."""

    def __init__(self, root: str, files: list[str], labels: list[int], size: int, train: bool,
                 resize: int = 256, cache: bool = True, min_scale: float = 0.08, augment: str = "basic"):
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, not {augment!r}")
        self.root, self.files, self.labels, self.augment = root, files, labels, augment
        self.scale = (min_scale, 1.0)
        self.size, self.train, self.resize = size, train, resize
        self.images = [self._open(i) for i in range(len(files))] if cache else None

    def _open(self, index: int) -> Image.Image:
        return load_image(os.path.join(self.root, self.files[index]))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        """(uint8 HWC RGB crop, label); or, for a photo that fails to decode (read from disk, without
        the cache: one cut short after its header), (None, (its path in the split, the one-line reason))."""
        if self.images is not None:
            image = self.images[index]
        else:
            try:
                image = self._open(index)
            except DatasetError as exc:
                return None, (self.files[index], str(exc))
        if self.train:
            top, left, h, w = random_resized_crop_params(*image.size, scale=self.scale)
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR,
                                 box=(left, top, left + w, top + h))
            if torch.rand(1).item() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if self.augment == "strong-augmix":
                image = augmix(image)
            if self.augment != "basic":
                return torch.from_numpy(strong_augment(image, self.augment == "strong-blur")), self.labels[index]
        else:
            image = center_crop(resize_shorter_side(image, self.resize), self.size)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()), self.labels[index]


class PhotoBatch(NamedTuple):
    """A loader's batch: ``images`` uint8 (N, H, W, 3) RGB, ``labels`` int64 (N,), and ``skipped``:
    (path in the split, one-line reason) for each photo of the batch that failed to decode, left out
    of the N. When every photo of the batch failed, N is 0 and ``images`` is (0, 0, 0, 3)."""
    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[tuple[str, str]]


def collate_photos(samples: list[tuple]) -> PhotoBatch:
    """The DataLoader's ``collate_fn`` for :class:`FolderDataset`: stacks the crops that decoded (with
    torch's own collate, which a worker process writes into shared memory) and keeps the reasons of
    those that did not, so one damaged photo costs itself, not the run."""
    kept = [(image, label) for image, label in samples if image is not None]
    skipped = [reason for image, reason in samples if image is None]
    if not kept:
        return PhotoBatch(torch.empty(0, 0, 0, 3, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped)
    images, labels = torch.utils.data.default_collate(kept)
    return PhotoBatch(images, labels, skipped)


class Normalize(nn.Module):
    """uint8 NHWC RGB batch -> float NCHW input of one recipe (channel order, scale, mean, std)."""

    def __init__(self, recipe: dict, channels_last: bool):
        super().__init__()
        order = [2, 1, 0] if recipe["channel_order"] == "BGR" else [0, 1, 2]
        self.order = order
        scale = torch.tensor(recipe["scale"], dtype=torch.float32)
        self.register_buffer("mul", (scale / torch.tensor(recipe["std"])).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("sub", (torch.tensor(recipe["mean"]) / torch.tensor(recipe["std"])).view(1, 3, 1, 1),
                             persistent=False)
        self.channels_last = channels_last

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch[..., self.order].permute(0, 3, 1, 2).float() * self.mul - self.sub
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
