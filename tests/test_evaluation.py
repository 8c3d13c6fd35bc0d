"""Metrics, prediction files and figures."""

import csv
import json

import numpy as np
import pytest
import torch

from aidnet.agatston import score_class
from aidnet.evaluation.metrics import (
    binary_metrics,
    called_class,
    collapse_confusion,
    multiclass_confusion,
    p_cac_from_logits,
)
from aidnet.evaluation.plots import plot_confusion, plot_roc
from aidnet.evaluation.predictions import (
    COLUMNS,
    class_columns,
    full_precision_path,
    read_predictions,
    write_metrics_json,
    write_predictions_csv,
)
from aidnet.inference import class_probs


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


# --- what "CAC" means: Agatston > 0, in the 2×2 and the 3×3 alike ---------------------------


def test_called_class_puts_p_cac_first():
    assert called_class([0.4, 0.3, 0.3]) == 1  # argmax says 0, but P(CAC) = 0.6
    assert called_class([0.3, 0.3, 0.4]) == 2
    assert called_class([0.55, 0.05, 0.4]) == 0  # argmax says 0 here too
    assert called_class([0.45, 0.45, 0.1]) == 1
    assert called_class([0.5, 0.5]) == 1 and called_class([0.6, 0.4]) == 0
    assert class_columns([0.4, 0.3, 0.3])["predicted"] == 1


def test_the_2x2_is_the_3x3_collapsed_at_agatston_above_zero():
    """Scans with Agatston scores on both sides of every class boundary (0, a fraction, 1,
    399, 400), class probabilities drawn at random and a few that argmax and P(CAC) call
    differently: the 2×2 of CAC = Agatston > 0 at P(CAC) ≥ 0.5 is exactly the 3×3 of the
    Agatston classes with rows and columns 1 and 2 merged."""
    rng = np.random.default_rng(7)
    scores = np.concatenate([[0, 0, 0.4, 1, 399, 399.5, 400, 2500], rng.exponential(150, 300)])
    scores[8::3] = 0.0
    labels = np.array([score_class(float(s)) for s in scores])
    assert ((labels > 0) == (scores > 0)).all()
    probs = rng.dirichlet([1.0, 1.0, 1.0], scores.size)
    probs[:4] = [[0.4, 0.3, 0.3], [0.45, 0.35, 0.2], [0.55, 0.05, 0.4], [0.34, 0.33, 0.33]]
    columns = [class_columns(p) for p in probs]
    p_cac = np.array([c["p_cac"] for c in columns])
    predicted = [c["predicted"] for c in columns]
    two = binary_metrics((scores > 0).astype(int), p_cac, n_boot=0)["confusion_2x2"]
    three = multiclass_confusion(labels, predicted, num_classes=3)
    assert two == collapse_confusion(three)
    assert sum(map(sum, two)) == scores.size
    # the argmax over all three classes would not agree: the check has teeth
    argmax = multiclass_confusion(labels, probs.argmax(axis=1), num_classes=3)
    assert collapse_confusion(argmax) != two


def test_collapse_confusion_by_hand():
    assert collapse_confusion([[5, 1, 2], [3, 4, 0], [1, 6, 7]]) == [[5, 3], [4, 17]]
    assert collapse_confusion([[5, 1], [3, 4]]) == [[5, 1], [3, 4]]


# --- predictions.csv and its full-precision twin ----------------------------------------------


def _prediction_rows(p_cac):
    return [
        {
            "subject": f"P{i // 2}",
            "visit": ("scan", "rescan")[i % 2],
            **class_columns([1.0 - p, p]),
            "label": i % 2,
            "site": "A",
        }
        for i, p in enumerate(p_cac)
    ]


def test_predictions_keep_full_precision_beside_the_csv(tmp_path):
    p_cac = [0.99999994, 0.9999997, 1e-9, 3e-8, 0.25]  # tie at 1.000000 / 0.000000 in the CSV
    write_predictions_csv(tmp_path / "predictions.csv", _prediction_rows(p_cac))
    assert full_precision_path(tmp_path / "predictions.csv") == tmp_path / "predictions.json"
    with (tmp_path / "predictions.csv").open() as fh:
        in_csv = [r["p_cac"] for r in csv.DictReader(fh)]
    assert in_csv[:4] == ["1.000000", "1.000000", "0.000000", "0.000000"]
    rows, full = read_predictions(tmp_path / "predictions.csv")
    assert full and [r["p_cac"] for r in rows] == p_cac
    assert [r["p_class0"] for r in rows] == [1.0 - p for p in p_cac]
    assert rows[0]["subject"] == "P0" and rows[1]["label"] == "1" and "site" not in rows[0]
    assert not list(tmp_path.glob(".tmp-*"))


def test_predictions_without_a_matching_twin_come_from_the_csv(tmp_path):
    path = tmp_path / "predictions.csv"
    write_predictions_csv(path, _prediction_rows([0.99999994, 0.25]))
    full_precision_path(path).unlink()  # written before the twin existed
    rows, full = read_predictions(path)
    assert not full and [r["p_cac"] for r in rows] == [1.0, 0.25]
    write_predictions_csv(path, _prediction_rows([0.99999994, 0.75]))
    twin = full_precision_path(path).read_text()
    write_predictions_csv(path, _prediction_rows([0.99999994, 0.25]))
    full_precision_path(path).write_text(twin)  # a stale twin: P(CAC) 0.75 against 0.25
    rows, full = read_predictions(path)
    assert not full and [r["p_cac"] for r in rows] == [1.0, 0.25]


def test_experiment_compares_full_precision_probabilities_by_subject(tmp_path):
    """The experiment's DeLong test reads the full-precision twin and clusters by subject."""
    from aidnet.evaluation.delong import delong_test
    from aidnet.pipeline.experiment import _delong_vs

    rng = np.random.default_rng(3)
    subjects = 20
    y = np.repeat(rng.integers(0, 2, subjects), 2)
    y[:4] = [0, 0, 1, 1]
    # confident models: most probabilities round to 1.000000 in the CSV
    a = 1.0 / (1.0 + np.exp(-(15.0 + 3.0 * y + 2.0 * rng.normal(size=y.size))))
    b = 1.0 / (1.0 + np.exp(-(15.0 + 2.0 * y + 2.0 * rng.normal(size=y.size))))
    for name, p in (("row", a), ("ref", b)):
        rows = _prediction_rows(p)
        for row, label in zip(rows, y, strict=True):
            row["label"] = int(label)
        (tmp_path / name).mkdir()
        write_predictions_csv(tmp_path / name / "predictions.csv", rows)
    got = _delong_vs(tmp_path / "row" / "predictions.csv", tmp_path / "ref" / "predictions.csv")
    keys = sorted((f"P{i // 2}", ("scan", "rescan")[i % 2]) for i in range(y.size))
    order = [int(s[1:]) * 2 + (v == "rescan") for s, v in keys]
    groups = np.array([s for s, _ in keys])
    expected = delong_test(y[order], a[order], b[order], groups=groups)
    assert got is not None and got["probabilities"] == "full precision"
    assert got["cluster"] == "subject" and got["n_clusters"] == subjects
    assert got["p"] == expected.p and got["z"] == expected.z
    rounded = delong_test(y[order], np.round(a[order], 6), np.round(b[order], 6), groups=groups)
    assert np.mean(np.round(a, 6) == 1.0) > 0.5  # the CSV ties most scans ...
    assert abs(rounded.auc_a - expected.auc_a) > 0.03  # ... and the AUC would move


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
