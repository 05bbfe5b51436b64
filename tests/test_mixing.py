"""Mixup and CutMix (``npshuffle train --mix``): what each does to a batch and to the loss."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from npshuffle.training.mixing import cutmix_box, mix_batch, mixed_correct, mixed_cross_entropy  # noqa: E402


def batch_of(n=6, h=12, w=10):
    torch.manual_seed(3)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8), torch.arange(n)  # (a label per image)


def test_mixup_blends_each_image_with_the_one_its_labels_b_come_from():
    images, labels = batch_of()
    torch.manual_seed(0)
    mixed = mix_batch(images, labels, "mixup", 0.4)
    assert mixed.images.dtype == torch.float32 and mixed.images.shape == images.shape
    assert 0 < mixed.lam < 1
    x = images.float()
    for i in range(len(labels)):
        # the partner image is the one whose label became labels_b: find it by its pixels
        partner = [j for j in range(len(labels))
                   if torch.allclose(mixed.images[i], mixed.lam * x[i] + (1 - mixed.lam) * x[j], atol=1e-3)]
        assert partner and labels[partner[0]] == mixed.labels_b[i]
    assert torch.equal(mixed.labels_a, labels)


def test_cutmix_pastes_one_rectangle_of_the_partner_and_weighs_labels_by_its_area():
    # image i is one flat colour, 10 * i + 5, so every pixel says which image it came from
    n, h, w = 6, 16, 20
    images = (torch.arange(n) * 10 + 5).to(torch.uint8).view(n, 1, 1, 1).expand(n, h, w, 3).contiguous()
    labels = torch.arange(n)
    for seed in range(5):
        torch.manual_seed(seed)
        mixed = mix_batch(images, labels, "cutmix", 1.0)
        source = (mixed.images[..., 0] - 5) / 10  # (N, H, W): which image each pixel came from
        box = None
        for i in range(n):
            assert set(source[i].unique().tolist()) <= {i, int(mixed.labels_b[i])}
            pasted = source[i] == mixed.labels_b[i]
            if mixed.labels_b[i] != i:
                rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
                this = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
                assert int(pasted.sum()) == (this[2] - this[0]) * (this[3] - this[1])  # a full rectangle
                assert box in (None, this)  # the same rectangle in every image
                box = this
        if box is not None:
            area = (box[2] - box[0]) * (box[3] - box[1])
            assert mixed.lam == pytest.approx(1 - area / (h * w))


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9, 1.0])
def test_cutmix_box_stays_inside_and_has_the_asked_sides_unless_clipped(lam):
    torch.manual_seed(2)
    cut = (1 - lam) ** 0.5
    full_h, full_w = 2 * (int(40 * cut) // 2), 2 * (int(30 * cut) // 2)  # sides sqrt(1 - lam) of the image's, even
    unclipped = 0
    for _ in range(50):
        top, left, h, w = cutmix_box(40, 30, lam)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 30
        assert h <= full_h and w <= full_w
        if 0 < top and top + h < 40 and 0 < left and left + w < 30:  # clear of every edge: the whole box
            assert (h, w) == (full_h, full_w)
            unclipped += 1
    assert unclipped > 0 or full_h == 0 or full_h >= 38  # (some draws land clear of the edges)


def test_mixed_loss_is_the_weighted_cross_entropy_and_plain_when_lam_is_1():
    torch.manual_seed(4)
    logits, a, b = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]), torch.tensor([2, 2, 0, 1, 1])
    from npshuffle.training.mixing import MixedBatch

    batch = MixedBatch(torch.zeros(5, 2, 2, 3), a, b, 0.25)
    expected = 0.25 * F.cross_entropy(logits, a, label_smoothing=0.1) + 0.75 * F.cross_entropy(
        logits, b, label_smoothing=0.1)
    assert torch.allclose(mixed_cross_entropy(logits, batch, 0.1), expected)
    whole = MixedBatch(batch.images, a, b, 1.0)
    assert torch.allclose(mixed_cross_entropy(logits, whole, 0.0), F.cross_entropy(logits, a))
    predicted = logits.argmax(1)
    assert mixed_correct(logits, batch) == pytest.approx(0.25 * (predicted == a).sum() + 0.75 * (predicted == b).sum())


def test_mixing_is_seeded_and_an_unknown_kind_is_refused():
    images, labels = batch_of()
    torch.manual_seed(7)
    first = mix_batch(images, labels, "cutmix", 1.0)
    torch.manual_seed(7)
    again = mix_batch(images, labels, "cutmix", 1.0)
    assert torch.equal(first.images, again.images) and first.lam == again.lam
    with pytest.raises(ValueError, match="unknown mix"):
        mix_batch(images, labels, "blend", 1.0)
