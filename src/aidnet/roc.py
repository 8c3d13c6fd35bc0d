"""The ROC curve and its area, from labels and scores with numpy alone.

Ties between scores count one half (the Mann–Whitney reading of the AUC). Used by validation in
every training epoch and by every bootstrap resample of ``evaluate``, where scikit-learn's
input checks cost far more than the computation.
"""

from __future__ import annotations

import numpy as np


def _counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positives called at each distinct score, highest score first."""
    y = np.asarray(y).astype(bool).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError("labels and scores differ in length")
    if y.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(-p, kind="mergesort")
    scores, hits = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # end of each tie group
    tps = np.cumsum(hits)[last]
    fps = last + 1 - tps
    return fps, tps


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve; None when the labels hold one class only (or none)."""
    fps, tps = _counts(y, p)
    if fps.size == 0 or fps[-1] == 0 or tps[-1] == 0:
        return None
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) from (0, 0) to (1, 1): one point per distinct
    score, less the points that lie on a straight line between their neighbours."""
    fps, tps = _counts(y, p)
    if fps.size == 0 or fps[-1] == 0 or tps[-1] == 0:
        raise ValueError("an ROC curve needs both classes")
    if fps.size > 2:
        corner = np.logical_or(np.diff(fps, 2) != 0, np.diff(tps, 2) != 0)
        keep = np.r_[True, corner, True]
        fps, tps = fps[keep], tps[keep]
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]
