"""DeLong's test for two correlated ROC AUCs measured on the same scans.

DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837–845, computed with the fast
algorithm of Sun & Xu (2014), IEEE Signal Processing Letters 21:1389–1393: the structural
components come from midranks (ties count one half), O(n log n) per scorer.

The test assumes independent scans. A cohort of scan–rescan pairs is clustered by subject, so
its p-values are somewhat optimistic; the comparison table therefore also carries intervals
from a bootstrap that resamples whole subjects (:func:`aidnet.evaluation.metrics.binary_metrics`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class DeLongResult:
    """Two AUCs on the same scans, their difference (a − b) and its two-sided test."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict:
        return asdict(self)


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # boundaries of runs of equal values in the sorted array
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 … ends
    ranks = np.empty(x.size, dtype=float)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def structural_components(
    y_true: np.ndarray, scores: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's placement values: V10 per positive (share of negatives it outscores),
    V01 per negative (share of positives that outscore it), ties counting one half."""
    y, s = _check(y_true, scores)
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both positive and negative scans")
    all_ranks = midranks(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - midranks(pos)) / n
    v01 = 1.0 - (all_ranks[m:] - midranks(neg)) / m
    auc = float(v10.mean())
    return auc, v10, v01


def _check(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError("labels and scores must be 1-D arrays of one length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y.astype(int), s


def auc_covariance(y_true: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of several scorers on the same scans and DeLong's covariance matrix of them."""
    parts = [structural_components(y_true, s) for s in scores]
    aucs = np.array([p[0] for p in parts])
    v10 = np.array([p[1] for p in parts])  # scorers × positives
    v01 = np.array([p[2] for p in parts])  # scorers × negatives
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10, ddof=1)) if m > 1 else np.zeros((len(scores),) * 2)
    s01 = np.atleast_2d(np.cov(v01, ddof=1)) if n > 1 else np.zeros((len(scores),) * 2)
    return aucs, s10 / m + s01 / n


def auc_variance(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong variance."""
    aucs, cov = auc_covariance(y_true, scores)
    return float(aucs[0]), float(cov[0, 0])


def delong_test(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """Two-sided test of AUC(a) = AUC(b) for two scorers of the same scans.

    Where the difference has zero variance (e.g. identical scorers) the test is degenerate:
    p = 1 when the AUCs are equal, p = 0 (z = ±inf) when they are not.
    """
    from scipy.stats import norm

    y, _ = _check(y_true, scores_a)
    aucs, cov = auc_covariance(y, scores_a, scores_b)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    # a variance within rounding of zero is zero (identical scorers give ~1e-18)
    if se <= 1e-12:
        z = 0.0 if abs(diff) <= 1e-12 else math.copysign(math.inf, diff)
        se = 0.0
    else:
        z = diff / se
    p = float(2 * norm.sf(abs(z))) if math.isfinite(z) else 0.0
    n_pos = int(np.sum(y == 1))
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=diff,
        se=se,
        z=float(z),
        p=min(p, 1.0),
        n_positive=n_pos,
        n_negative=int(y.size - n_pos),
    )
