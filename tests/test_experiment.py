"""``aidnet experiment``: the paper's ten rows on one split, resumable per row, with a report."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from aidnet.config import load_config, save_config
from aidnet.errors import AidnetError
from aidnet.phantom import make_cohort
from aidnet.pipeline.experiment import REFERENCE, ROWS, run_experiment, select_rows
from aidnet.training.logs import TrainLog
from cli_runner import invoke

CRASHING_ROW = "idnet-s1"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), subjects=12, seed=3, size="small")


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """The tiny preset with a test split large enough to hold both classes."""
    config = load_config("tiny", test_fraction=0.3, val_fraction=0.2)
    path = tmp_path_factory.mktemp("preset") / "tiny-split.yaml"
    save_config(dataclasses.replace(config, preset="tiny-split"), path)
    return path


def _mtimes(root):
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and "tensorboard" not in p.parts
    }


@pytest.fixture(scope="module")
def experiment(cohort, preset, tmp_path_factory):
    """Three runs of one experiment: the first with a row that crashes after its first epoch,
    the second (the CLI) resuming it, the third finding everything finished."""
    out = tmp_path_factory.mktemp("experiment")
    facts: dict = {"out": out}
    original = TrainLog.epoch

    def crash_once(self, row):
        if self.csv_path.parent.parent.name == CRASHING_ROW and row["epoch"] == 1:
            raise RuntimeError("simulated crash after epoch 1")
        return original(self, row)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrainLog, "epoch", crash_once)
        with pytest.raises(AidnetError, match="1 of 10 rows failed") as failed:
            run_experiment(cohort, str(preset), out, n_boot=100, progress=False)
    facts["first_error"] = str(failed.value)
    facts["after_crash"] = {
        r.id: sorted(p.name for p in (out / "rows" / r.id).rglob("*") if p.is_file()) for r in ROWS
    }
    facts["comparison_after_crash"] = (out / "comparison.csv").read_text()
    facts["mtimes_after_crash"] = _mtimes(out / "rows")

    second = invoke(
        ["experiment", "--manifest", str(cohort), "--preset", str(preset), "--out", str(out)]
    )
    facts["second"] = second
    facts["mtimes_after_resume"] = _mtimes(out / "rows")

    trained: list[int] = []  # epochs the third run trains: none

    def record_epoch(self, row):
        trained.append(row["epoch"])
        return original(self, row)

    third: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrainLog, "epoch", record_epoch)
        run_experiment(cohort, str(preset), out, n_boot=100, progress=False, log=third.append)
    facts["third_log"], facts["third_epochs"] = third, trained
    facts["mtimes_after_rerun"] = _mtimes(out / "rows")
    return facts


def _comparison(out):
    with (out / "comparison.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_every_row_and_figure(experiment):
    out = experiment["out"]
    rows = _comparison(out)
    assert [r["row"] for r in rows] == [r.id for r in ROWS]
    assert len(rows) == 10
    for r in rows:
        assert r["status"] == "done", r
        assert int(r["n"]) > 0 and 0 < int(r["n_positive"]) < int(r["n"])
        for key in ("accuracy", "auc", "sensitivity", "specificity"):
            value, lo, hi = (float(r[key + end]) for end in ("", "_ci_low", "_ci_high"))
            assert 0 <= lo <= value <= hi <= 1, (r["row"], key)
        if r["row"] in REFERENCE.values():
            assert r["delong_p"] == "" and r["delong_vs"] == ""
        else:
            assert r["delong_vs"] == REFERENCE[int(r["strategy"])]
            assert 0 <= float(r["delong_p"]) <= 1
    assert len({r["n"] for r in rows}) == 1  # every row is tested on the same scans
    for name in (
        "roc_strategy1.png",
        "roc_strategy2.png",
        "confusion_2x2_strategy1.png",
        "confusion_2x2_strategy2.png",
        "confusion_3x3_strategy2.png",
    ):
        assert (out / "figures" / name).read_bytes()[:4] == b"\x89PNG", name
    for row in ROWS:
        assert (out / "rows" / row.id / "eval" / "confusion_2x2.png").exists()
        assert (out / "rows" / row.id / "eval" / "predictions.csv").exists()
    report = (out / "report.html").read_text()
    for row in ROWS:
        assert row.label in report
    sources = [s.split(",")[0] for s in report.split('src="')[1:]]
    assert len(sources) >= 5 + 2  # 5 figures + at least one gallery case
    assert all(s.startswith("data:image/png;base64") for s in sources)
    assert "True positives" in report or "True negatives" in report


@pytest.mark.slow
def test_rows_share_one_split(experiment):
    out = experiment["out"]
    shared = (out / "splits.csv").read_bytes()
    for row in ROWS:
        assert (out / "rows" / row.id / "run" / "splits.csv").read_bytes() == shared


@pytest.mark.slow
def test_delong_in_the_table_matches_the_predictions(experiment):
    from aidnet.evaluation.delong import delong_test
    from aidnet.evaluation.predictions import read_predictions

    out = experiment["out"]
    saved = {r["id"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}

    def read(row_id):
        path = out / "rows" / row_id / "eval" / "predictions.csv"
        rows, full = read_predictions(path)
        assert full, "the comparison must use full-precision probabilities"
        rows = sorted(rows, key=lambda r: (r["subject"], r["visit"]))
        y = np.array([int(r["label"]) > 0 for r in rows], int)
        return y, np.array([float(r["p_cac"]) for r in rows]), [r["subject"] for r in rows]

    y_ref, p_ref, subjects = read("aidnet-l0.001-s1")
    y, p, _ = read("densenet121-s1")
    assert (y == y_ref).all()
    expected = delong_test(y, p, p_ref, groups=subjects)
    got = saved["densenet121-s1"]["delong"]
    assert got["p"] == pytest.approx(expected.p) and got["z"] == pytest.approx(expected.z)
    assert got["auc_a"] == pytest.approx(saved["densenet121-s1"]["auc"])


@pytest.mark.slow
def test_a_failed_row_does_not_lose_the_others(experiment):
    assert "idnet-s1" in experiment["first_error"]
    files = experiment["after_crash"]
    for row_id, names in files.items():
        if row_id == CRASHING_ROW:
            assert "last.pt" in names and "done.json" not in names
        else:
            assert "done.json" in names and "metrics.json" in names, row_id
            assert "best.pt" in names and "last.pt" not in names, row_id
    crashed = [
        r
        for r in csv.DictReader(experiment["comparison_after_crash"].splitlines())
        if r["row"] == CRASHING_ROW
    ]
    assert crashed[0]["status"] == "failed" and crashed[0]["auc"] == ""


@pytest.mark.slow
def test_rerun_resumes_only_the_unfinished_row(experiment):
    out = experiment["out"]
    second = experiment["second"]
    assert second.exit_code == 0, second.output
    assert f"{CRASHING_ROW}: resuming" in second.output
    assert second.output.count("finished earlier, skipped") == 9
    before, after = experiment["mtimes_after_crash"], experiment["mtimes_after_resume"]
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed and all(k.startswith(CRASHING_ROW + "/") for k in changed), changed
    # resumed from last.pt: epoch 1 (finished before the crash) is not trained again
    with (out / "rows" / CRASHING_ROW / "run" / "log.csv").open() as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["2"]


@pytest.mark.slow
def test_rerun_of_a_finished_experiment_trains_nothing(experiment):
    assert experiment["mtimes_after_rerun"] == experiment["mtimes_after_resume"]
    assert experiment["third_epochs"] == []
    skipped = [line for line in experiment["third_log"] if "finished earlier, skipped" in line]
    assert len(skipped) == len(ROWS)
    started = [
        line for line in experiment["third_log"] if ": training " in line or ": resuming " in line
    ]
    assert started == []


@pytest.mark.slow
def test_other_settings_or_split_are_refused(experiment, cohort, preset, tmp_path):
    out = experiment["out"]
    with pytest.raises(AidnetError, match="other settings .*epochs"):
        run_experiment(cohort, str(preset), out, epochs=3, progress=False)
    copy = tmp_path / "copy"
    (copy / "rows" / "idnet-s2" / "run").mkdir(parents=True)
    for name in ("experiment.json", "splits.csv"):
        (copy / name).write_bytes((out / name).read_bytes())
    lines = (out / "splits.csv").read_text().splitlines()
    swapped = [lines[0]] + [
        line.replace(",test", ",TMP").replace(",train", ",test").replace(",TMP", ",train")
        for line in lines[1:]
    ]
    (copy / "rows" / "idnet-s2" / "run" / "splits.csv").write_text("\n".join(swapped) + "\n")
    with pytest.raises(AidnetError, match="another subject split"):
        run_experiment(cohort, str(preset), copy, progress=False)
    assert not (copy / "rows" / "idnet-s2" / "run" / "last.pt").exists()


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("aidnet: error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_input_is_one_line(cohort, tmp_path):
    def run(*args):
        return invoke(["experiment", "--out", str(tmp_path / "x"), *map(str, args)])

    _one_line_error(run("--manifest", tmp_path / "nope.csv", "--preset", "tiny"), "not found")
    _one_line_error(
        run("--manifest", cohort, "--preset", "tiny", "--rows", "idnet-s1,vgg"),
        "unknown row 'vgg'",
        "aidnet-l0.001-s2",
    )
    _one_line_error(run("--manifest", cohort, "--preset", "huge"), "not a preset")
    # 8 voxels along Z are too few for five encoder stages: refused before training
    flat = tmp_path / "flat.yaml"
    config = load_config("tiny", input_size=(8, 24, 32))
    save_config(dataclasses.replace(config, preset="f", features=(4, 8, 16, 32, 64)), flat)
    _one_line_error(
        run("--manifest", cohort, "--preset", flat, "--rows", "idnet-s1"), "ID-Net cannot take"
    )
    assert not (tmp_path / "x").exists()


def test_row_selection():
    assert [r.id for r in select_rows(["aidnet-l0", "idnet-s2"])] == [
        "aidnet-l0-s1",
        "idnet-s2",
        "aidnet-l0-s2",
    ]
    assert len(select_rows(None)) == 10
    assert {r.id for r in ROWS} >= set(REFERENCE.values())
