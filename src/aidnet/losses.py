"""The AID-Net pair loss (paper §2.2): CE on both paths plus a weighted contrastive term, and
our optional evidence penalty on CAC-negative scans for the calcium head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def contrastive_loss(out1: Tensor, out2: Tensor, different: Tensor, margin: float = 1.0) -> Tensor:
    """Contrastive loss of Hadsell et al. as used in paper §2.2, averaged over the batch.

    ``mean((1 − Y) · ½ · D² + Y · ½ · max(0, m − D)²)`` with ``D`` the Euclidean distance
    between ``out1[i]`` and ``out2[i]`` (B×K each) and ``Y = different`` (B, bool or 0/1):
    1 when the two scans' classes differ. :class:`PairLoss` passes the softmax class-probability
    vectors of the two paths as the "outputs", so ``D`` lies in [0, √2].
    """
    y = different.to(out1.dtype)
    distance = torch.linalg.vector_norm(out1 - out2, dim=1)
    similar_term = (1 - y) * 0.5 * distance.pow(2)
    different_term = y * 0.5 * torch.clamp(margin - distance, min=0).pow(2)
    return (similar_term + different_term).mean()


def negative_evidence(maps: Tensor, labels: Tensor) -> Tensor:
    """Calcium-map evidence on the CAC-negative scans of a batch: ``mean_k log(1 + Σ map_k)``
    per scan (``maps`` B×K×Z×Y×X, non-negative), averaged over the scans with ``labels == 0``
    (0 when the batch has none).

    It uses the scan's label only. Every chest CT has bone, aorta and often valve calcium, so
    evidence on a CAC-negative scan is evidence from something other than coronary calcium;
    penalising it steers the calcium head's map (and with it Grad-CAM) off those structures.
    """
    sums = maps.float().clamp(min=0).flatten(2).sum(dim=2)
    evidence = torch.log1p(sums).mean(dim=1)
    negative = (labels == 0).to(evidence.dtype)
    return (evidence * negative).sum() / negative.sum().clamp(min=1)


def relative_negative_evidence(maps: Tensor, labels: Tensor) -> Tensor:
    """Calcium-map evidence of the CAC-negative scans measured against the CAC-positive scans
    of the same batch: ``mean_k softplus(log(1 + Σ map_k) − mean over positives of the same)``
    per negative scan, averaged over them (0 when the batch lacks either kind).

    Unlike :func:`negative_evidence` it does not fall when the whole map fades: a common
    factor on the map is a common shift of every log evidence and cancels in the difference.
    So it cannot shrink the map for free, the force that killed the calcium map under the
    batch-normalised classifier (docs/training.md); it only asks the map to hold less on what
    a CAC-negative scan has (bone, aorta, valves) than on what a CAC-positive one has.
    """
    evidence = torch.log1p(maps.float().clamp(min=0).flatten(2).sum(dim=2))  # B×K
    negative = (labels == 0).to(evidence.dtype)
    positive = 1 - negative
    # no branch on the labels' values: nothing here waits for the device
    reference = (evidence * positive[:, None]).sum(0) / positive.sum().clamp(min=1)
    per_scan = F.softplus(evidence - reference).mean(dim=1)
    both = (negative.sum() > 0) & (positive.sum() > 0)
    return (per_scan * negative).sum() / negative.sum().clamp(min=1) * both


def penalty_maps(model: Any, out1: Any, out2: Any) -> tuple[Tensor | None, Tensor | None]:
    """The two paths' maps for :func:`negative_evidence`: their maps before global average
    pooling when the model's is a calcium map (the calcium head), else none; other maps carry
    no meaning as evidence sums."""
    if model.map_on_calcium:
        return out1.features, out2.features
    return None, None


class PairLoss(nn.Module):
    """Total AID-Net loss (paper §2.2): ``CE(path1, y1) + CE(path2, y2) + λ · contrastive``,
    plus ``β · (negative_evidence(maps1, y1) + negative_evidence(maps2, y2))`` when the two
    paths' calcium maps are given and ``negative = β > 0``; with ``relative``, ``β ·``
    :func:`relative_negative_evidence` of both paths' scans together instead.

    The contrastive term compares the two paths' softmax probabilities with ``Y = (y1 != y2)``.
    ``forward`` returns ``(total, parts)``; parts (detached 0-d tensors on the loss's device,
    so reading them is the caller's one synchronisation) are ``loss``, ``ce`` (= ce1 + ce2),
    ``ce1``, ``ce2``, ``contrastive`` (unweighted, reported even when ``lambda_ = 0``) and
    ``negative`` (unweighted; 0 without maps).
    """

    def __init__(
        self,
        lambda_: float = 0.001,
        margin: float = 1.0,
        negative: float = 0.0,
        relative: bool = False,
    ) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)
        self.margin = float(margin)
        self.negative = float(negative)
        self.relative = relative

    def forward(
        self,
        logits1: Tensor,
        logits2: Tensor,
        y1: Tensor,
        y2: Tensor,
        maps1: Tensor | None = None,
        maps2: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ce1 = F.cross_entropy(logits1, y1)
        ce2 = F.cross_entropy(logits2, y2)
        contrastive = contrastive_loss(
            logits1.softmax(dim=1), logits2.softmax(dim=1), y1 != y2, self.margin
        )
        total = ce1 + ce2
        if self.lambda_ != 0:
            total = total + self.lambda_ * contrastive
        negative = torch.zeros((), device=logits1.device)
        if maps1 is not None and maps2 is not None:
            if self.relative:  # both paths' scans against each other: one batch
                negative = relative_negative_evidence(
                    torch.cat([maps1, maps2]), torch.cat([y1, y2])
                )
            else:
                negative = negative_evidence(maps1, y1) + negative_evidence(maps2, y2)
            if self.negative != 0:
                total = total + self.negative * negative
        parts = {
            "loss": total.detach(),
            "ce": (ce1 + ce2).detach(),
            "ce1": ce1.detach(),
            "ce2": ce2.detach(),
            "contrastive": contrastive.detach(),
            "negative": negative.detach(),
        }
        return total, parts
