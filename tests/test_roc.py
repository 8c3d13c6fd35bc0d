"""Our numpy ROC and AUC against scikit-learn's, ties and degenerate inputs included."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from aidnet.roc import auc, roc_points


@pytest.mark.parametrize("levels", [None, 3, 11])  # continuous scores, or many ties
def test_auc_and_roc_agree_with_scikit_learn(levels):
    rng = np.random.default_rng(0 if levels is None else levels)
    for n in (2, 3, 7, 40, 200):
        for _ in range(20):
            y = rng.integers(0, 2, n)
            if y.min() == y.max():
                y[0] = 1 - y[0]
            p = rng.normal(y * rng.uniform(0, 2), 1.0)
            if levels is not None:
                p = np.round(p * levels / 4) / levels
            assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
            fpr, tpr = roc_points(y, p)
            ref_fpr, ref_tpr, _ = roc_curve(y, p)
            assert np.allclose(fpr, ref_fpr) and np.allclose(tpr, ref_tpr)


def test_one_class_has_no_auc():
    assert auc(np.ones(5), np.arange(5.0)) is None
    assert auc(np.zeros(0), np.zeros(0)) is None
    with pytest.raises(ValueError, match="both classes"):
        roc_points(np.zeros(4), np.arange(4.0))


def test_perfect_reversed_and_tied_scores():
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auc(y, np.full(4, 0.5)) == 0.5  # a tie counts one half
