"""Mixup and CutMix (``npshuffle train --mix``): each training batch blended with a shuffled copy of itself.

Mixup (Zhang et al. 2018) takes ``lam * x + (1 - lam) * x[perm]`` of whole images; CutMix (Yun et al.
2019) pastes one rectangle of ``x[perm]`` into ``x``, of area ``1 - lam`` of the image. Either way the
batch's targets are both label sets, weighted ``lam`` and ``1 - lam`` (:func:`mixed_cross_entropy`);
a distillation teacher sees the same blended images, so it teaches on exactly what the student sees.
``lam`` is drawn once per batch from Beta(alpha, alpha), from torch's RNG (a seeded run repeats).

Blending works on the uint8 0..255 pixels before any network's normalisation; since normalisation is
affine per channel, blending first is the same as blending each network's normalised input.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .arguments import MIX_KINDS


class MixedBatch(NamedTuple):
    """A blended batch: ``images`` (N, H, W, 3) RGB 0..255 (float32 when blended; an unblended batch,
    ``MixedBatch(images, labels, labels, 1.0)``, keeps its uint8);
    ``labels_a`` the images' own labels, ``labels_b`` those of the images blended in; ``lam`` the weight
    of ``labels_a`` (for CutMix the share of the image that is still the original)."""
    images: torch.Tensor
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    lam: float


def mix_batch(images: torch.Tensor, labels: torch.Tensor, kind: str, alpha: float) -> MixedBatch:
    """Blend a uint8 (N, H, W, 3) batch with a random permutation of itself (``kind``: mixup or cutmix)."""
    if kind not in ("mixup", "cutmix"):
        raise ValueError(f"unknown mix {kind!r}: use one of {', '.join(MIX_KINDS[1:])}")
    x = images.float()
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0])
    if kind == "mixup":
        return MixedBatch(lam * x + (1 - lam) * x[perm], labels, labels[perm], lam)
    top, left, h, w = cutmix_box(x.shape[1], x.shape[2], lam)
    x[:, top:top + h, left:left + w] = x[perm, top:top + h, left:left + w]
    kept = 1.0 - (h * w) / (x.shape[1] * x.shape[2])  # the box is clipped at the edges: weigh by its true area
    return MixedBatch(x, labels, labels[perm], kept)


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """CutMix's rectangle (top, left, h, w): sides ``sqrt(1 - lam)`` of the image's, centred on a uniform
    random pixel and clipped to the image (so its area may be smaller than ``1 - lam``)."""
    cut = math.sqrt(1.0 - lam)
    cy = int(torch.randint(0, height, (1,)).item())
    cx = int(torch.randint(0, width, (1,)).item())
    half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
    top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
    left, right = max(cx - half_w, 0), min(cx + half_w, width)
    return top, left, bottom - top, right - left


def mixed_cross_entropy(logits: torch.Tensor, batch: MixedBatch, label_smoothing: float) -> torch.Tensor:
    """``lam * CE(logits, labels_a) + (1 - lam) * CE(logits, labels_b)``: the cross-entropy against the
    blended targets."""
    return (batch.lam * F.cross_entropy(logits, batch.labels_a, label_smoothing=label_smoothing)
            + (1 - batch.lam) * F.cross_entropy(logits, batch.labels_b, label_smoothing=label_smoothing))


def mixed_correct(logits: torch.Tensor, batch: MixedBatch) -> float:
    """Training "accuracy" on a blended batch: a prediction of label a counts ``lam``, of label b ``1 - lam``
    (so with --mix the train accuracy of ``metrics.jsonl`` is this score, lower than a plain run's)."""
    predicted = logits.argmax(1)
    return (batch.lam * (predicted == batch.labels_a).sum().item()
            + (1 - batch.lam) * (predicted == batch.labels_b).sum().item())
