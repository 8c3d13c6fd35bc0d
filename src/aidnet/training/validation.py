"""One validation pass: the figures model selection and the training guard read."""

from __future__ import annotations

import numpy as np
import torch

from aidnet.config import Config
from aidnet.data.datasets import Item
from aidnet.inference import predict_items
from aidnet.models.base import CACNet

#: P(CAC) at or above which a validation scan counts as called CAC (evaluate's threshold too)
THRESHOLD = 0.5


def auc_and_accuracy(y: np.ndarray, p_cac: np.ndarray) -> tuple[float, float]:
    """The AUC of P(CAC) for the CAC labels ``y`` (NaN when they hold one class only) and the
    accuracy of calling CAC at :data:`THRESHOLD` (NaN without scans)."""
    from aidnet.roc import auc as roc_auc

    y, p_cac = np.asarray(y, dtype=int), np.asarray(p_cac, dtype=float)
    if y.size == 0:
        return float("nan"), float("nan")
    area = roc_auc(y, p_cac)
    auc = float("nan") if area is None else area
    called = p_cac >= THRESHOLD
    return auc, int(np.sum(called == (y == 1))) / y.size


def validation_scores(
    model: CACNet,
    items: list[Item],
    config: Config,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> tuple[float, float, float]:
    """Validation AUC, accuracy and, for a model whose map is on calcium (the calcium head),
    the share of CAC-positive scans whose map holds any evidence (NaN for other models or
    without such scans). A share of 0 is a dead map: the decision then rests on the attention
    features alone and Grad-CAM has nothing to show. ``amp``: the training's autocast dtype."""
    if not items:
        return float("nan"), float("nan"), float("nan")
    sums: list[float] | None = [] if model.map_on_calcium else None
    probs = predict_items(model, items, config.num_classes, device, map_sums=sums, amp=amp)
    p_cac = probs[:, 1:].sum(axis=1)
    y = np.array([int((i.record.label or 0) > 0) for i in items])
    auc, accuracy = auc_and_accuracy(y, p_cac)
    live = float("nan")
    if sums is not None and y.any():
        live = float(np.mean(np.asarray(sums)[y == 1] > 0))
    return auc, accuracy, live
