"""The report is one self-contained, escaped HTML file."""

import re

from aidnet.evaluation.plots import plot_roc
from aidnet.report.html import write_report


def test_report_is_self_contained_and_escaped(tmp_path):
    roc = plot_roc({"m": ([0, 1], [0, 1], 0.5)}, tmp_path / "roc.png")
    path = write_report(
        tmp_path / "report.html",
        title="t",
        summary={"cohort": "<b>10</b> scans"},
        metrics={"auc": 0.91, "auc_ci95": [0.8, 0.97], "accuracy": 0.85, "n": 10},
        figures={"ROC": roc},
        gallery=[{"caption": "<script>alert(1)</script>", "image_path": roc}],
        tables=[{"title": "rows", "columns": ["a"], "rows": [[1.23456]]}],
    )
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 2
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "&lt;b&gt;10&lt;/b&gt;" in text
    assert not re.search(r"(src|href)=['\"]https?:", text)
    assert "0.910 (95% CI 0.800–0.970)" in text
    assert "1.235" in text
