"""Scan-level metrics for CAC detection, with percentile-bootstrap 95% intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from aidnet.roc import auc, roc_points

if TYPE_CHECKING:
    import torch

#: P(CAC) at or above which a scan is called CAC, in the 2×2 and the 3×3 matrix alike.
CAC_THRESHOLD = 0.5


def p_cac_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """P(CAC): P(1) for 2 classes, P(1) + P(2) for 3 classes (paper's strategy 2)."""
    from aidnet.inference import class_probs

    return class_probs(logits)[:, 1:].sum(dim=1)


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def binary_metrics(
    y_true: np.ndarray,
    p_cac: np.ndarray,
    threshold: float = CAC_THRESHOLD,
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict:
    """AUC, accuracy, sensitivity, specificity, 2×2 confusion ([[TN, FP], [FN, TP]]), ROC and
    95% bootstrap intervals of all four (resampling scans, keeping both classes present).

    With ``groups`` (the subject of each scan) the bootstrap resamples whole subjects, since a
    subject's scan and rescan are not independent; subjects are stratified by whether any of
    their scans has CAC."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(p_cac, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError("y_true and p_cac must be 1-D arrays of one length")
    called = p >= threshold
    tp = int(np.sum(called & (y == 1)))
    tn = int(np.sum(~called & (y == 0)))
    fp = int(np.sum(called & (y == 0)))
    fn = int(np.sum(~called & (y == 1)))
    n_pos, n_neg = tp + fn, tn + fp
    notes = []
    out: dict = {
        "n": int(y.size),
        "n_positive": n_pos,
        "threshold": threshold,
        "accuracy": (tp + tn) / y.size if y.size else None,
        "sensitivity": tp / n_pos if n_pos else None,
        "specificity": tn / n_neg if n_neg else None,
        "confusion_2x2": [[tn, fp], [fn, tp]],
        "auc": auc(y, p) if y.size else None,
    }
    if out["auc"] is None:
        notes.append("AUC undefined: the scans hold only one class")
        out["roc"] = {"fpr": [], "tpr": []}
    else:
        fpr, tpr = roc_points(y, p)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    out["auc_ci95"] = None
    out["accuracy_ci95"] = None
    out["sensitivity_ci95"] = None
    out["specificity_ci95"] = None
    if n_boot > 0 and out["auc"] is not None:
        rng = np.random.default_rng(seed)
        members = _clusters(y, groups)
        has_pos = np.array([bool(y[m].max()) for m in members])
        strata = [np.flatnonzero(has_pos), np.flatnonzero(~has_pos)]
        aucs: list[float] = []
        accs: list[float] = []
        sens: list[float] = []
        specs: list[float] = []
        for _ in range(n_boot):
            picked = [rng.choice(s, s.size, replace=True) for s in strata if s.size]
            idx = np.concatenate([members[c] for part in picked for c in part])
            if y[idx].min() == y[idx].max():
                continue
            aucs.append(float(auc(y[idx], p[idx]) or 0.0))
            accs.append(float(np.mean(called[idx] == (y[idx] == 1))))
            sens.append(float(np.mean(called[idx][y[idx] == 1])))
            specs.append(float(np.mean(~called[idx][y[idx] == 0])))
        out["auc_ci95"] = [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))]
        out["accuracy_ci95"] = _percentile_ci(accs)
        out["sensitivity_ci95"] = _percentile_ci(sens)
        out["specificity_ci95"] = _percentile_ci(specs)
        out["bootstrap"] = {
            "n": len(aucs),
            "seed": seed,
            "unit": "subject" if groups is not None else "scan",
            "method": "percentile, stratified by CAC presence",
        }
    if notes:
        out["notes"] = notes
    for key in ("accuracy", "sensitivity", "specificity", "auc"):
        out[key] = _finite_or_none(out[key]) if out[key] is not None else None
    return out


def _percentile_ci(values: list[float]) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def _clusters(y: np.ndarray, groups: np.ndarray | None) -> list[np.ndarray]:
    if groups is None:
        return [np.array([i]) for i in range(y.size)]
    groups = np.asarray(groups)
    return [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]


def called_class(probs: Sequence[float] | np.ndarray, threshold: float = CAC_THRESHOLD) -> int:
    """The class one scan is called from its class probabilities: 0 when P(CAC) (P(1), or
    P(1) + P(2) for 3 classes: paper's strategy 2) is below ``threshold``, else the likelier
    CAC class.

    CAC is Agatston > 0, i.e. class > 0 (:func:`aidnet.agatston.score_class`), so the 3×3
    matrix of these calls collapses exactly to the 2×2 of :func:`binary_metrics`, whose call
    is a point on the ROC curve of P(CAC). The argmax over all classes would not: it calls
    (0.4, 0.3, 0.3) "no CAC" though P(CAC) is 0.6."""
    values = np.asarray(probs, dtype=float)
    if values[1:].sum() < threshold:
        return 0
    return 1 + int(np.argmax(values[1:]))


def multiclass_confusion(y_true, y_pred, num_classes: int = 3) -> list[list[int]]:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    for t, q in zip(y_true, y_pred, strict=True):
        matrix[int(t), int(q)] += 1
    return matrix.tolist()


def collapse_confusion(matrix: Sequence[Sequence[int]]) -> list[list[int]]:
    """A K×K matrix (rows true class, columns called class) as the 2×2 ``[[TN, FP], [FN, TP]]``
    of CAC = class > 0 (Agatston > 0)."""
    m = np.asarray(matrix, dtype=int)
    return [
        [int(m[0, 0]), int(m[0, 1:].sum())],
        [int(m[1:, 0].sum()), int(m[1:, 1:].sum())],
    ]
