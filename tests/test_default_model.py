"""benchmarks/default_model.py (``make default-model``) runs end to end at a reduced size."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import default_model  # noqa: E402


@pytest.mark.slow
def test_it_trains_evaluates_and_reports_without_touching_the_package(tmp_path):
    shipped = default_model.SHIPPED
    before = shipped.stat().st_mtime_ns if shipped.exists() else None
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: tiny\nepochs: 1\nval_fraction: 0.2\ntest_fraction: 0.4\n")
    argv = [
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
        "--seeds",
        "3,4",
        "--scans",
        str(tmp_path / "no-scans"),
    ]
    assert default_model.main(argv) == 0
    figures = json.loads((tmp_path / "dm" / "default_model.json").read_text())
    assert figures["subjects"] == 8 and figures["commit"]
    assert set(figures["seeds"]) == {"3", "4"} and figures["chosen_seed"] in (3, 4)
    for seed in ("3", "4"):
        row = figures["seeds"][seed]
        assert 0.0 <= row["test_auc"] <= 1.0 and row["test_scans"] > 0
        assert row["real_scans"].startswith("not run:")
        assert (tmp_path / "dm" / f"seed-{seed}" / "best.pt").exists()
    # every seed is tested on the same held-out subjects
    splits = [(tmp_path / "dm" / f"seed-{s}" / "splits.csv").read_text() for s in ("3", "4")]
    assert splits[0] == splits[1]
    assert figures["targets"]["lung2_p_cac"]["met"] is None  # not measured: no real scans
    # the two seeds as one ensemble, on the same test scans
    assert figures["ensemble"]["test_scans"] == figures["seeds"]["3"]["test_scans"]
    assert 0.0 <= figures["ensemble"]["test_auc"] <= 1.0
    after = shipped.stat().st_mtime_ns if shipped.exists() else None
    assert after == before  # only --ship copies into the package

    # seed 3 stopped during its first epoch (its best.pt is already there), seed 4 finished:
    # a second call trains seed 3 on and leaves seed 4 as it is
    last = tmp_path / "dm" / "seed-3" / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    state["next_epoch"], state["next_step"] = 0, 0
    torch.save(state, last)
    logs = {s: (tmp_path / "dm" / f"seed-{s}" / "log.csv").read_text() for s in ("3", "4")}
    assert default_model.main(argv) == 0
    rows = {s: (tmp_path / "dm" / f"seed-{s}" / "log.csv").read_text() for s in ("3", "4")}
    assert len(rows["3"].splitlines()) == len(logs["3"].splitlines()) + 1
    assert rows["4"] == logs["4"]


def test_the_seed_to_ship_is_chosen_on_validation_alone():
    seeds = {
        "0": {"val_auc": 0.90, "test_auc": 0.99},
        "1": {"val_auc": 0.93, "test_auc": 0.80},
        "2": {"val_auc": 0.93, "test_auc": 0.95},
        "3": {"val_auc": float("nan"), "test_auc": 1.0},
    }
    assert default_model._choose(seeds) == "1"


def test_targets_are_met_missed_or_not_measured():
    row = {
        "test_auc": 0.96,
        "pointing_game": 0.80,
        "real_scans": {"lung2": {"p_cac": 0.5, "peak_to_described_calcium_mm": 10.1}},
    }
    assert default_model._targets(row) == {
        "test_auc": True,
        "pointing_game": False,
        "lung2_p_cac": True,
        "lung2_peak_mm": False,
    }
    row["real_scans"] = "not run: no scans"
    assert default_model._targets(row)["lung2_p_cac"] is None


def test_a_bad_recipe_is_one_line(tmp_path, capsys):
    (tmp_path / "dm" / "cohort").mkdir(parents=True)
    (tmp_path / "dm" / "cohort" / "manifest.csv").write_text("subject,visit,path,agatston\n")
    code = default_model.main(
        ["--out", str(tmp_path / "dm"), "--recipe", str(tmp_path / "missing.yaml")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("default_model: error:")


@pytest.mark.slow
def test_seeds_side_by_side_train_at_once_on_one_split(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: tiny\nepochs: 1\nval_fraction: 0.2\ntest_fraction: 0.4\n")
    argv = ["--out", str(tmp_path / "dm"), "--subjects", "8", "--size", "small"]
    argv += ["--workers", "1", "--device", "cpu", "--recipe", str(recipe), "--seeds", "5,6"]
    argv += ["--scans", str(tmp_path / "no-scans"), "--side-by-side"]
    assert default_model.main(argv) == 0
    figures = json.loads((tmp_path / "dm" / "default_model.json").read_text())
    assert set(figures["seeds"]) == {"5", "6"} and figures["ensemble"]["test_scans"] > 0
    runs = [tmp_path / "dm" / f"seed-{s}" for s in (5, 6)]
    for run in runs:
        assert (run / "best.pt").exists() and "epoch 1/1" in (run / "train.log").read_text()
    assert (runs[0] / "splits.csv").read_text() == (runs[1] / "splits.csv").read_text()
    seeds = [yaml.safe_load((run / "config.yaml").read_text())["seed"] for run in runs]
    assert seeds == [5, 6]


def test_a_failed_training_side_by_side_is_one_line_naming_its_log(tmp_path):
    from aidnet.errors import AidnetError

    (tmp_path / "recipe.yaml").write_text("preset: tiny\n")
    args = argparse.Namespace(
        recipe=tmp_path / "recipe.yaml", out=tmp_path, device="cpu", epochs=None
    )
    runs = {0: tmp_path / "seed-0"}
    with pytest.raises(AidnetError) as err:
        default_model._train_side_by_side(
            args, tmp_path / "missing.csv", runs, tmp_path / "splits.csv"
        )
    message = str(err.value)
    assert message.startswith(str(runs[0] / "train.log")) and "seed 0" in message
    assert "\n" not in message and "missing.csv" in message


def test_side_by_side_trainings_share_the_cores():
    cores = default_model._threads(1)
    assert cores >= 1 and default_model._threads(2 * cores) == 1
    assert default_model._threads(1) >= default_model._threads(2) >= 1
