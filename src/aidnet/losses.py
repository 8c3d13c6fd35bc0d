"""The AID-Net pair loss (paper §2.2): CE on both paths plus a weighted contrastive term."""

from __future__ import annotations

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


class PairLoss(nn.Module):
    """Total AID-Net loss (paper §2.2): ``CE(path1, y1) + CE(path2, y2) + λ · contrastive``.

    The contrastive term compares the two paths' softmax probabilities with ``Y = (y1 != y2)``.
    ``forward`` returns ``(total, parts)``; parts (floats) are ``loss``, ``ce`` (= ce1 + ce2),
    ``ce1``, ``ce2`` and ``contrastive`` (unweighted, reported even when ``lambda_ = 0``).
    """

    def __init__(self, lambda_: float = 0.001, margin: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)
        self.margin = float(margin)

    def forward(
        self, logits1: Tensor, logits2: Tensor, y1: Tensor, y2: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        ce1 = F.cross_entropy(logits1, y1)
        ce2 = F.cross_entropy(logits2, y2)
        contrastive = contrastive_loss(
            logits1.softmax(dim=1), logits2.softmax(dim=1), y1 != y2, self.margin
        )
        total = ce1 + ce2
        if self.lambda_ != 0:
            total = total + self.lambda_ * contrastive
        parts = {
            "loss": float(total.detach()),
            "ce": float((ce1 + ce2).detach()),
            "ce1": float(ce1.detach()),
            "ce2": float(ce2.detach()),
            "contrastive": float(contrastive.detach()),
        }
        return total, parts
