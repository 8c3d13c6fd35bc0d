"""benchmarks/default_model.py (``make default-model``) runs end to end at a reduced size."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import default_model  # noqa: E402


@pytest.mark.slow
def test_it_trains_evaluates_and_reports_without_touching_the_package(tmp_path):
    shipped = default_model.SHIPPED
    before = shipped.stat().st_mtime_ns if shipped.exists() else None
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: tiny\nepochs: 1\nval_fraction: 0.2\ntest_fraction: 0.4\n")
    code = default_model.main(
        [
            "--out",
            str(tmp_path / "dm"),
            "--subjects",
            "8",
            "--size",
            "small",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--recipe",
            str(recipe),
        ]
    )
    assert code == 0
    figures = json.loads((tmp_path / "dm" / "default_model.json").read_text())
    assert 0.0 <= figures["test_auc"] <= 1.0 and figures["test_scans"] > 0
    assert figures["subjects"] == 8 and figures["commit"]
    assert (tmp_path / "dm" / "run" / "best.pt").exists()
    after = shipped.stat().st_mtime_ns if shipped.exists() else None
    assert after == before  # only --ship copies into the package


def test_a_bad_recipe_is_one_line(tmp_path, capsys):
    (tmp_path / "dm" / "cohort").mkdir(parents=True)
    (tmp_path / "dm" / "cohort" / "manifest.csv").write_text("subject,visit,path,agatston\n")
    code = default_model.main(
        ["--out", str(tmp_path / "dm"), "--recipe", str(tmp_path / "missing.yaml")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("default_model: error:")
