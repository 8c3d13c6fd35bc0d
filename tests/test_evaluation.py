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
