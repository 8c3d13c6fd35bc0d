"""DeLong's test for two correlated ROC AUCs, with scans clustered by subject.

DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837–845, extended to clustered data by
Obuchowski (1997), Biometrics 53:567–578. A subject's scan and rescan are not independent:
the structural components (placement values) are summed per cluster and the variance comes
from those cluster sums, so a subject counts once however many scans it has. With one scan
per cluster the estimator is exactly DeLong's.

Placement values come from midranks (ties count one half) as in Sun & Xu (2014), IEEE Signal
Processing Letters 21:1389–1393: O(n log n) per scorer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike


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
    n_clusters: int

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


def _cluster_index(groups: ArrayLike | None, size: int) -> np.ndarray:
    """Cluster number (0 … I−1) of each scan; every scan its own cluster without groups."""
    if groups is None:
        return np.arange(size)
    ids = np.asarray(groups)
    if ids.shape != (size,):
        raise ValueError("groups must give one cluster (subject) per scan")
    return np.unique(ids, return_inverse=True)[1].reshape(-1)


def _scale(k: int) -> float:
    """Obuchowski's small-sample factor k / (k − 1); 0 where fewer than two clusters carry
    the term (its cluster sums are then exactly zero: there is no variance to estimate)."""
    return k / (k - 1) if k > 1 else 0.0


def auc_covariance(
    y_true: np.ndarray, *scores: np.ndarray, groups: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of several scorers on the same scans and the covariance matrix of them.

    ``groups`` names the cluster (subject) of each scan. For scorer r, cluster i with
    m_i positives and n_i negatives (M, N in all):

        a_ri = Σ V10 over its positives − m_i·AUC_r,   b_ri = Σ V01 over its negatives − n_i·AUC_r
        cov_rs = k10·Σ a_r a_s / M² + k01·Σ b_r b_s / N² + k11·Σ (a_r b_s + b_r a_s) / (M N)

    with k = I/(I − 1) over the I10 clusters holding a positive, the I01 holding a negative and
    all I clusters (Obuchowski 1997). One scan per cluster: the cross term vanishes and this is
    DeLong's covariance.
    """
    y, _ = _check(y_true, scores[0])
    cluster = _cluster_index(groups, y.size)
    n_clusters = int(cluster.max()) + 1
    pos, neg = cluster[y == 1], cluster[y == 0]
    m_i = np.bincount(pos, minlength=n_clusters)
    n_i = np.bincount(neg, minlength=n_clusters)
    m, n = pos.size, neg.size
    aucs, a, b = [], [], []
    for s in scores:
        auc, v10, v01 = structural_components(y, s)
        aucs.append(auc)
        a.append(np.bincount(pos, weights=v10, minlength=n_clusters) - m_i * auc)
        b.append(np.bincount(neg, weights=v01, minlength=n_clusters) - n_i * auc)
    a_mat, b_mat = np.array(a), np.array(b)  # scorers × clusters
    cross = a_mat @ b_mat.T
    cov = (
        _scale(int(np.count_nonzero(m_i))) * (a_mat @ a_mat.T) / m**2
        + _scale(int(np.count_nonzero(n_i))) * (b_mat @ b_mat.T) / n**2
        + _scale(n_clusters) * (cross + cross.T) / (m * n)
    )
    return np.array(aucs), cov


def auc_variance(
    y_true: np.ndarray, scores: np.ndarray, groups: ArrayLike | None = None
) -> tuple[float, float]:
    """AUC and its (clustered) DeLong variance."""
    aucs, cov = auc_covariance(y_true, scores, groups=groups)
    return float(aucs[0]), float(cov[0, 0])


def delong_test(
    y_true: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: ArrayLike | None = None,
) -> DeLongResult:
    """Two-sided test of AUC(a) = AUC(b) for two scorers of the same scans; ``groups`` (the
    subject of each scan) makes a subject's scans one cluster. Without it every scan is its
    own cluster, which is right only when no subject has two scans.

    Where the difference has zero variance (e.g. identical scorers) the test is degenerate:
    p = 1 when the AUCs are equal, p = 0 (z = ±inf) when they are not.
    """
    from scipy.stats import norm

    y, _ = _check(y_true, scores_a)
    aucs, cov = auc_covariance(y, scores_a, scores_b, groups=groups)
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
        n_clusters=int(_cluster_index(groups, y.size).max()) + 1,
    )
