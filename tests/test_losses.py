"""Hand-computed values for the contrastive and pair losses (paper §2.2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aidnet.losses import PairLoss, contrastive_loss, negative_evidence


def test_contrastive_same_class_is_half_squared_distance():
    a = torch.tensor([[1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.6, 0.4]])  # D² = 1 + 0.36 + 0.16 = 1.52
    loss = contrastive_loss(a, b, torch.tensor([False]), margin=1.0)
    assert float(loss) == pytest.approx(0.5 * 1.52)


def test_contrastive_different_class_uses_margin_and_clamps():
    a = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    b = torch.tensor([[0.8, 0.2], [0.0, 1.0]])
    # D = 0.3·√2 ≈ 0.4243 (inside margin 1) and √2 (beyond margin: clamped to 0).
    d1 = 0.3 * math.sqrt(2)
    loss = contrastive_loss(a, b, torch.tensor([True, True]), margin=1.0)
    assert float(loss) == pytest.approx((0.5 * (1 - d1) ** 2 + 0.0) / 2)
    # Mixed batch: first pair similar, second different with margin 2.
    mixed = contrastive_loss(a, b, torch.tensor([0, 1]), margin=2.0)
    expected = (0.5 * d1**2 + 0.5 * (2 - math.sqrt(2)) ** 2) / 2
    assert float(mixed) == pytest.approx(expected)


def test_contrastive_identical_outputs():
    p = torch.tensor([[0.2, 0.3, 0.5]])
    assert float(contrastive_loss(p, p, torch.tensor([False]))) == 0.0
    assert float(contrastive_loss(p, p, torch.tensor([True]), margin=1.0)) == pytest.approx(0.5)


def test_pair_loss_lambda_zero_is_exactly_two_ce():
    torch.manual_seed(0)
    l1, l2 = torch.randn(4, 3), torch.randn(4, 3)
    y1, y2 = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 2, 2, 0])
    total, parts = PairLoss(lambda_=0.0)(l1, l2, y1, y2)
    ce = F.cross_entropy(l1, y1) + F.cross_entropy(l2, y2)
    assert torch.equal(total, ce)
    assert float(parts["contrastive"]) > 0  # still reported
    assert float(parts["ce"]) == pytest.approx(float(ce))
    assert float(parts["loss"]) == pytest.approx(float(ce))


def test_pair_loss_adds_weighted_contrastive_on_softmax():
    torch.manual_seed(1)
    l1 = torch.randn(3, 3, requires_grad=True)
    l2 = torch.randn(3, 3, requires_grad=True)
    y1, y2 = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2])
    total, parts = PairLoss(lambda_=0.5, margin=1.0)(l1, l2, y1, y2)
    c = contrastive_loss(l1.softmax(1), l2.softmax(1), torch.tensor([0, 1, 0]), 1.0)
    ce1, ce2 = F.cross_entropy(l1, y1), F.cross_entropy(l2, y2)
    assert total.item() == pytest.approx((ce1 + ce2 + 0.5 * c).item())
    assert float(parts["ce1"]) == pytest.approx(ce1.item())
    assert float(parts["ce2"]) == pytest.approx(ce2.item())
    assert float(parts["contrastive"]) == pytest.approx(c.item())
    total.backward()
    assert l1.grad is not None and torch.isfinite(l1.grad).all()


def test_negative_evidence_is_the_log_sum_on_cac_negative_scans_only():
    maps = torch.zeros(3, 2, 2, 2, 2)
    maps[0, 0, 0, 0, 0] = 3.0  # CAC 0: sums (3, 0) -> mean(log 4, log 1)
    maps[1, :, 1, 1, 1] = 50.0  # CAC-positive: ignored
    maps[2, 1] = 1.0  # CAC 0: sums (0, 8) -> mean(log 1, log 9)
    maps.requires_grad_(True)
    labels = torch.tensor([0, 2, 0])
    value = negative_evidence(maps, labels)
    expected = ((math.log(4) + 0) / 2 + (0 + math.log(9)) / 2) / 2
    assert value.item() == pytest.approx(expected)
    value.backward()
    assert maps.grad[1].abs().sum() == 0  # no pull on a CAC-positive scan's map
    assert (maps.grad[0] > 0).all() and (maps.grad[2] > 0).all()
    assert float(negative_evidence(maps.detach(), torch.tensor([1, 2, 1]))) == 0.0


def test_pair_loss_adds_the_weighted_negative_evidence_of_both_paths():
    torch.manual_seed(2)
    l1, l2 = torch.randn(2, 3), torch.randn(2, 3)
    y1, y2 = torch.tensor([0, 1]), torch.tensor([0, 0])
    m1, m2 = torch.rand(2, 4, 3, 3, 3), torch.rand(2, 4, 3, 3, 3)
    plain, _ = PairLoss(lambda_=0.001)(l1, l2, y1, y2)
    total, parts = PairLoss(lambda_=0.001, negative=0.1)(l1, l2, y1, y2, m1, m2)
    both = negative_evidence(m1, y1) + negative_evidence(m2, y2)
    assert float(parts["negative"]) == pytest.approx(float(both)) and float(both) > 0
    assert float(total) == pytest.approx(float(plain + 0.1 * both))
    off, parts = PairLoss(lambda_=0.001, negative=0.0)(l1, l2, y1, y2, m1, m2)
    assert torch.equal(off, plain) and float(parts["negative"]) == pytest.approx(float(both))


def test_relative_negative_evidence_cannot_be_lowered_by_a_fading_map():
    """The absolute penalty falls when every map fades by a common factor (what killed the
    calcium map); the relative one does not, and it falls when the negatives' maps fade
    against the positives'."""
    from aidnet.losses import relative_negative_evidence

    torch.manual_seed(0)
    maps = torch.rand(4, 2, 4, 4, 4) * 100
    labels = torch.tensor([0, 1, 0, 2])
    for scale in (0.1, 0.01):
        faded = maps * scale
        assert float(negative_evidence(faded, labels)) < float(negative_evidence(maps, labels))
        assert float(relative_negative_evidence(faded, labels)) == pytest.approx(
            float(relative_negative_evidence(maps, labels)), rel=0.02
        )
    quieter = maps.clone()
    quieter[labels == 0] *= 0.1  # less on the negatives than on the positives
    assert float(relative_negative_evidence(quieter, labels)) < 0.5 * float(
        relative_negative_evidence(maps, labels)
    )
    # a batch without positives, or without negatives, has nothing to compare
    assert float(relative_negative_evidence(maps, torch.zeros(4, dtype=torch.long))) == 0.0
    assert float(relative_negative_evidence(maps, torch.ones(4, dtype=torch.long))) == 0.0
    # in the pair loss: both paths together, weighted by beta
    l1, l2 = torch.randn(2, 3), torch.randn(2, 3)
    y1, y2 = labels[:2], labels[2:]
    total, parts = PairLoss(lambda_=0.0, negative=0.5, relative=True)(
        l1, l2, y1, y2, maps[:2], maps[2:]
    )
    expected = F.cross_entropy(l1, y1) + F.cross_entropy(l2, y2)
    expected = expected + 0.5 * relative_negative_evidence(maps, labels)
    assert float(total) == pytest.approx(float(expected))
