"""Metrics, prediction files and figures."""

import csv
import json

import numpy as np
import pytest
import torch

from aidnet.evaluation.metrics import (
    binary_metrics,
    class_probs,
    multiclass_confusion,
    p_cac_from_logits,
)
from aidnet.evaluation.plots import plot_confusion, plot_roc
from aidnet.evaluation.predictions import COLUMNS, write_metrics_json, write_predictions_csv


def test_perfect_separation():
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), n_boot=200)
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0
    assert m["auc_ci95"] == [1.0, 1.0]
    assert m["sensitivity_ci95"] == [1.0, 1.0] == m["specificity_ci95"]


def test_hand_computed_example():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.3, 0.7, 0.4, 0.9])
    m = binary_metrics(y, p, n_boot=300, seed=1)
    # pairs (pos, neg) ranked correctly: 0.7>{.1,.6,.3}=3, 0.4>{.1,.3}=2, 0.9>all=3 -> 8/9
    assert m["auc"] == pytest.approx(8 / 9)
    assert m["confusion_2x2"] == [[2, 1], [1, 2]]
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    lo, hi = m["auc_ci95"]
    assert lo <= m["auc"] <= hi
    lo, hi = m["accuracy_ci95"]
    assert lo <= m["accuracy"] <= hi
    for key in ("sensitivity", "specificity"):
        lo, hi = m[f"{key}_ci95"]
        assert 0 <= lo <= m[key] <= hi <= 1 and lo < hi, key


def test_one_class_does_not_crash():
    m = binary_metrics(np.array([0, 0, 0]), np.array([0.2, 0.7, 0.1]))
    assert m["auc"] is None and m["auc_ci95"] is None
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["sensitivity"] is None
    assert "one class" in m["notes"][0]


def test_probabilities_from_logits():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    probs = class_probs(logits)
    assert torch.allclose(probs.sum(1), torch.ones(2))
    assert torch.allclose(p_cac_from_logits(logits), probs[:, 1] + probs[:, 2])
    two = torch.tensor([[0.0, 0.0]])
    assert p_cac_from_logits(two).item() == pytest.approx(0.5)


def test_multiclass_confusion():
    assert multiclass_confusion([0, 1, 2, 2], [0, 2, 2, 1]) == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_prediction_and_metric_files(tmp_path):
    rows = [
        {
            "subject": "P1",
            "visit": "scan",
            "p_cac": 0.25,
            "p_class0": 0.75,
            "p_class1": 0.2,
            "p_class2": 0.05,
            "predicted": 0,
            "label": "",
            "site": "A",
        }
    ]
    write_predictions_csv(tmp_path / "p.csv", rows)
    with (tmp_path / "p.csv").open() as fh:
        reader = csv.DictReader(fh)
        out = list(reader)
    assert reader.fieldnames == [*COLUMNS, "site"]
    assert out[0]["label"] == "" and float(out[0]["p_cac"]) == 0.25
    write_metrics_json(tmp_path / "m.json", {"auc": float("nan"), "n": np.int64(3)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"auc": None, "n": 3}
    assert not list(tmp_path.glob(".tmp-*"))


def test_figures(tmp_path):
    plot_roc({"aidnet": ([0, 0.5, 1], [0, 0.9, 1], 0.9)}, tmp_path / "roc.png")
    plot_confusion([[3, 1], [0, 4]], ["no", "yes"], tmp_path / "c.png", "t")
    for name in ("roc.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size > 5000


def test_subject_bootstrap_is_wider_than_scan_bootstrap_for_duplicated_scans():
    rng = np.random.default_rng(0)
    y = np.repeat(rng.integers(0, 2, 30), 2)  # scan and rescan share the label
    p = np.clip(y * 0.3 + np.repeat(rng.random(30), 2) * 0.7, 0, 1)
    subjects = np.repeat(np.arange(30), 2)
    by_scan = binary_metrics(y, p, n_boot=400, seed=2)
    by_subject = binary_metrics(y, p, n_boot=400, seed=2, groups=subjects)
    assert by_subject["auc"] == by_scan["auc"]
    width = lambda m: m["auc_ci95"][1] - m["auc_ci95"][0]  # noqa: E731
    assert width(by_subject) > width(by_scan)
    assert by_subject["bootstrap"]["unit"] == "subject"


# --- DeLong's test -------------------------------------------------------------------------


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
    a10, a01 = _brute_components(y, a)
    b10, b01 = _brute_components(y, b)
    m, n = len(a10), len(a01)
    auc_a, auc_b = sum(a10) / m, sum(b10) / m
    s10 = sum((u - auc_a) * (v - auc_b) for u, v in zip(a10, b10, strict=True)) / (m - 1)
    s01 = sum((u - auc_a) * (v - auc_b) for u, v in zip(a01, b01, strict=True)) / (n - 1)
    return s10 / m + s01 / n


def _tied_case(seed: int = 3, size: int = 23):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size)
    y[:2] = [0, 1]
    a = np.round(y * 0.4 + rng.random(size), 1)  # rounding makes many ties
    b = np.round(y * 0.2 + rng.random(size), 1)
    return y, a, b


def test_midranks_average_tied_ranks():
    from aidnet.evaluation.delong import midranks

    assert midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_delong_aucs_equal_sklearn():
    from sklearn.metrics import roc_auc_score

    from aidnet.evaluation.delong import delong_test

    for seed in range(5):
        y, a, b = _tied_case(seed, 40)
        result = delong_test(y, a, b)
        assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
        assert result.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
        assert result.difference == pytest.approx(result.auc_a - result.auc_b)


def test_delong_variance_matches_brute_force_with_ties():
    from aidnet.evaluation.delong import auc_covariance, delong_test

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


def test_single_auc_variance_by_the_delong_formula():
    from aidnet.evaluation.delong import auc_variance

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


def test_delong_identical_and_clearly_different_scorers():
    from aidnet.evaluation.delong import delong_test

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    noise = rng.normal(size=200)
    same = delong_test(y, noise + y, noise + y)
    assert same.difference == 0.0 and same.p == 1.0
    better = delong_test(y, 2.0 * y + rng.normal(size=200), 0.3 * y + rng.normal(size=200))
    assert better.auc_a > better.auc_b and better.p < 1e-6 and better.z > 5


def test_delong_is_calibrated_under_the_null_and_agrees_with_the_bootstrap():
    """Two equally good, correlated scorers: about 5% of tests reject at 0.05, and the SE of
    the difference matches the bootstrap SE."""
    from sklearn.metrics import roc_auc_score

    from aidnet.evaluation.delong import delong_test

    rng = np.random.default_rng(1)
    rejections, trials = 0, 400
    for _ in range(trials):
        y = rng.integers(0, 2, 120)
        shared = rng.normal(size=120)
        a = y + shared + rng.normal(size=120)
        b = y + shared + rng.normal(size=120)
        rejections += delong_test(y, a, b).p < 0.05
    assert 0.025 <= rejections / trials <= 0.085

    y = rng.integers(0, 2, 300)
    a = 1.2 * y + rng.normal(size=300)
    b = 0.8 * y + rng.normal(size=300)
    result = delong_test(y, a, b)
    diffs = []
    for _ in range(600):
        i = rng.integers(0, 300, 300)
        if y[i].min() != y[i].max():
            diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    assert result.se == pytest.approx(np.std(diffs), rel=0.15)


def test_delong_rejects_bad_input():
    from aidnet.evaluation.delong import delong_test

    with pytest.raises(ValueError, match="both positive and negative"):
        delong_test(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.2, 0.1]))
    with pytest.raises(ValueError, match="one length"):
        delong_test(np.array([0, 1]), np.array([0.1]), np.array([0.2, 0.3]))
