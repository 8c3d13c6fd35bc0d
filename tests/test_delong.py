"""DeLong's test of two correlated AUCs, with scans clustered by subject (Obuchowski 1997)."""

import numpy as np
import pytest

from aidnet.evaluation.delong import auc_covariance, auc_variance, delong_test, midranks


def _psi(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def _brute_components(y, s):
    """Structural components by explicit double loops over (positive, negative) pairs."""
    pos = [v for v, t in zip(s, y, strict=True) if t == 1]
    neg = [v for v, t in zip(s, y, strict=True) if t == 0]
    v10 = [sum(_psi(x, w) for w in neg) / len(neg) for x in pos]
    v01 = [sum(_psi(x, w) for x in pos) / len(pos) for w in neg]
    return v10, v01


def _brute_covariance(y, a, b):
    """DeLong (1988): scans independent."""
    a10, a01 = _brute_components(y, a)
    b10, b01 = _brute_components(y, b)
    m, n = len(a10), len(a01)
    auc_a, auc_b = sum(a10) / m, sum(b10) / m
    s10 = sum((u - auc_a) * (v - auc_b) for u, v in zip(a10, b10, strict=True)) / (m - 1)
    s01 = sum((u - auc_a) * (v - auc_b) for u, v in zip(a01, b01, strict=True)) / (n - 1)
    return s10 / m + s01 / n


def _brute_clustered_covariance(y, a, b, groups):
    """Obuchowski (1997), written out term by term: per cluster i the sums X_i of V10 over its
    positives and Y_i of V01 over its negatives; S10, S01 over the clusters holding a
    positive (I10) or a negative (I01), S11 over all I clusters."""
    ids = list(dict.fromkeys(groups.tolist()))
    pos_groups = [g for g, t in zip(groups.tolist(), y, strict=True) if t == 1]
    neg_groups = [g for g, t in zip(groups.tolist(), y, strict=True) if t == 0]
    m, n, big_i = len(pos_groups), len(neg_groups), len(ids)
    i10, i01 = len(set(pos_groups)), len(set(neg_groups))

    def sums(s):
        v10, v01 = _brute_components(y, s)
        auc = sum(v10) / m
        x = [sum(v for v, g in zip(v10, pos_groups, strict=True) if g == c) for c in ids]
        w = [sum(v for v, g in zip(v01, neg_groups, strict=True) if g == c) for c in ids]
        m_i = [pos_groups.count(c) for c in ids]
        n_i = [neg_groups.count(c) for c in ids]
        return (
            [xi - mi * auc for xi, mi in zip(x, m_i, strict=True)],
            [wi - ni * auc for wi, ni in zip(w, n_i, strict=True)],
        )

    xa, wa = sums(a)
    xb, wb = sums(b)
    s10 = i10 / ((i10 - 1) * m) * sum(p * q for p, q in zip(xa, xb, strict=True))
    s01 = i01 / ((i01 - 1) * n) * sum(p * q for p, q in zip(wa, wb, strict=True))
    s11_ab = big_i / (big_i - 1) * sum(p * q for p, q in zip(xa, wb, strict=True))
    s11_ba = big_i / (big_i - 1) * sum(p * q for p, q in zip(xb, wa, strict=True))
    return s10 / m + s01 / n + (s11_ab + s11_ba) / (m * n)


def _tied_case(seed: int = 3, size: int = 23):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size)
    y[:2] = [0, 1]
    a = np.round(y * 0.4 + rng.random(size), 1)  # rounding makes many ties
    b = np.round(y * 0.2 + rng.random(size), 1)
    return y, a, b


def _null_trials(rng, trials: int, subjects: int, scans: int = 2):
    """Two equally good scorers (same signal, same noise), correlated through a common
    subject effect, each with its own strong subject effect: a subject's scans are far from
    independent. A scan's label follows its subject's, flipped for 5% of scans (so some
    subjects have a positive and a negative scan). Rows are trials."""
    n = subjects * scans

    def per_subject(values):
        return np.repeat(values, scans, axis=1)

    y = per_subject(rng.random((trials, subjects)) < 0.5).astype(int)
    y = np.where(rng.random((trials, n)) < 0.05, 1 - y, y)
    common = per_subject(rng.normal(size=(trials, subjects)))
    a = y + common + per_subject(rng.normal(size=(trials, subjects)))
    b = y + common + per_subject(rng.normal(size=(trials, subjects)))
    a = a + 0.2 * rng.normal(size=(trials, n))
    b = b + 0.2 * rng.normal(size=(trials, n))
    return y, a, b


# --- placement values and AUCs ---------------------------------------------------------------


def test_midranks_average_tied_ranks():
    assert midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_delong_aucs_equal_sklearn():
    from sklearn.metrics import roc_auc_score

    for seed in range(5):
        y, a, b = _tied_case(seed, 40)
        result = delong_test(y, a, b)
        assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
        assert result.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
        assert result.difference == pytest.approx(result.auc_a - result.auc_b)


# --- one scan per cluster: DeLong (1988) exactly ---------------------------------------------


def test_delong_variance_matches_brute_force_with_ties():
    y, a, b = _tied_case()
    assert len(set(a.tolist())) < len(a)  # the case really has ties
    _, cov = auc_covariance(y, a, b)
    assert cov[0, 1] == pytest.approx(_brute_covariance(y, a, b), rel=1e-10)
    assert cov[0, 0] == pytest.approx(_brute_covariance(y, a, a), rel=1e-10)
    var_diff = _brute_covariance(y, a, a) + _brute_covariance(y, b, b)
    var_diff -= 2 * _brute_covariance(y, a, b)
    result = delong_test(y, a, b)
    assert result.se == pytest.approx(var_diff**0.5, rel=1e-10)
    assert result.z == pytest.approx(result.difference / var_diff**0.5, rel=1e-10)
    # naming every scan its own cluster is the same as naming none
    singletons = delong_test(y, a, b, groups=np.array([f"s{i}" for i in range(y.size)]))
    assert singletons.se == pytest.approx(result.se, rel=1e-12)
    assert singletons.n_clusters == y.size


def test_single_auc_variance_by_the_delong_formula():
    # hand-computed: V10 = (1, 2/3, 1), V01 = (1, 2/3, 1), AUC 8/9, S10 = S01 = 1/27
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.3, 0.7, 0.4, 0.9])
    auc, var = auc_variance(y, p)
    assert auc == pytest.approx(8 / 9) and var == pytest.approx(2 / 81)
    # and by explicit double loops on a tied case
    y, a, _ = _tied_case(7, 31)
    v10, v01 = _brute_components(y, a)
    m, n = len(v10), len(v01)
    mean = sum(v10) / m
    expected = sum((v - mean) ** 2 for v in v10) / ((m - 1) * m)
    expected += sum((v - mean) ** 2 for v in v01) / ((n - 1) * n)
    auc, var = auc_variance(y, a)
    assert auc == pytest.approx(mean) and var == pytest.approx(expected, rel=1e-10)


# --- clusters (Obuchowski 1997) --------------------------------------------------------------


def test_clustered_covariance_matches_the_papers_formula_term_by_term():
    """Uneven clusters (1–4 scans), some holding both classes (so the S11 cross term is not
    zero), ties, string subject ids in no particular order."""
    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 5, 25)
    groups = np.repeat([f"subject-{k:02d}" for k in rng.permutation(25)], sizes)
    y, a, b = _tied_case(5, groups.size)
    mixed = [g for g in set(groups.tolist()) if len(set(y[groups == g].tolist())) == 2]
    assert len(mixed) >= 3
    _, cov = auc_covariance(y, a, b, groups=groups)
    assert cov[0, 1] == pytest.approx(_brute_clustered_covariance(y, a, b, groups), rel=1e-10)
    assert cov[1, 0] == pytest.approx(cov[0, 1], rel=1e-12)
    assert cov[0, 0] == pytest.approx(_brute_clustered_covariance(y, a, a, groups), rel=1e-10)
    assert cov[1, 1] == pytest.approx(_brute_clustered_covariance(y, b, b, groups), rel=1e-10)
    result = delong_test(y, a, b, groups=groups)
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert result.se == pytest.approx(var_diff**0.5, rel=1e-12)
    assert result.n_clusters == 25


def test_a_duplicated_scan_adds_no_information():
    """Every scan twice, the copies one cluster: the clustered variance is that of the scans
    once, unclustered; the unclustered test on the copies claims about half of it."""
    y, a, b = _tied_case(2, 40)
    once = delong_test(y, a, b)
    y2, a2, b2 = (np.repeat(v, 2) for v in (y, a, b))
    subjects = np.repeat(np.arange(y.size), 2)
    clustered = delong_test(y2, a2, b2, groups=subjects)
    assert clustered.difference == pytest.approx(once.difference, abs=1e-12)
    assert clustered.se == pytest.approx(once.se, rel=1e-12)
    naive = delong_test(y2, a2, b2)
    assert naive.se**2 == pytest.approx(once.se**2 / 2, rel=0.05)


def test_clustered_null_simulation_rejects_at_the_nominal_rate():
    """Issue 33: 60 subjects × 2 scans, two equally good correlated scorers, a strong subject
    effect, 400 trials at α 0.05. Counting the scans as independent rejects far too often
    (about 15% on this simulation); clustering by subject gives about 5%."""
    trials, subjects = 400, 60
    y, a, b = _null_trials(np.random.default_rng(2033), trials, subjects)
    groups = np.repeat(np.arange(subjects), 2)
    clustered = np.array([delong_test(y[t], a[t], b[t], groups=groups).p for t in range(trials)])
    naive = np.array([delong_test(y[t], a[t], b[t]).p for t in range(trials)])
    assert 0.03 <= np.mean(clustered < 0.05) <= 0.07
    assert np.mean(naive < 0.05) >= 0.10


def test_clustered_se_agrees_with_a_subject_bootstrap():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    subjects = 150
    y, a, b = (v[0] for v in _null_trials(rng, 1, subjects))
    a = a + 0.5 * y  # unequal AUCs: the alternative, not the null
    groups = np.repeat(np.arange(subjects), 2)
    result = delong_test(y, a, b, groups=groups)
    diffs = []
    for _ in range(600):
        picked = rng.integers(0, subjects, subjects)
        i = (2 * picked[:, None] + np.arange(2)).ravel()
        if y[i].min() != y[i].max():
            diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    assert result.se == pytest.approx(np.std(diffs), rel=0.15)
    assert delong_test(y, a, b).se < 0.85 * result.se  # the naive SE is too small


# --- edge cases ------------------------------------------------------------------------------


def test_delong_identical_and_clearly_different_scorers():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    noise = rng.normal(size=200)
    same = delong_test(y, noise + y, noise + y, groups=np.arange(200) // 2)
    assert same.difference == 0.0 and same.p == 1.0
    better = delong_test(y, 2.0 * y + rng.normal(size=200), 0.3 * y + rng.normal(size=200))
    assert better.auc_a > better.auc_b and better.p < 1e-6 and better.z > 5


def test_delong_rejects_bad_input():
    with pytest.raises(ValueError, match="both positive and negative"):
        delong_test(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.2, 0.1]))
    with pytest.raises(ValueError, match="one length"):
        delong_test(np.array([0, 1]), np.array([0.1]), np.array([0.2, 0.3]))
    with pytest.raises(ValueError, match="one cluster"):
        delong_test(np.array([0, 1]), np.array([0.1, 0.2]), np.array([0.2, 0.3]), groups=[1])
