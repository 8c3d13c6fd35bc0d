"""End to end on a tiny phantom cohort: train, resume, evaluate, explain, demo report."""

import csv
import json

import numpy as np
import pytest
import torch

from aidnet.config import load_config
from aidnet.errors import AidnetError
from aidnet.phantom import make_cohort
from aidnet.pipeline import evaluate_run, explain_manifest
from aidnet.training.checkpoint import load_checkpoint
from aidnet.training.loop import train

# the module's run fixture trains a model; most tests evaluate or explain it end to end
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, subjects=12, seed=5, size="small", dicom_fraction=0.1)


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = load_config("tiny", epochs=2, val_fraction=0.25, test_fraction=0.25)
    train(config, cohort, out, progress=False)
    return out


def test_training_writes_a_run(run):
    for name in ("best.pt", "last.pt", "config.yaml", "splits.csv", "log.csv"):
        assert (run / name).exists(), name
    with (run / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    with (run / "splits.csv").open() as fh:
        splits = {r["subject"]: r["split"] for r in csv.DictReader(fh)}
    assert set(splits.values()) == {"train", "val", "test"}
    assert load_checkpoint(run / "best.pt")["model_spec"]["name"] == "aidnet"


def test_existing_run_is_not_overwritten(run, cohort):
    with pytest.raises(AidnetError, match="a run already exists"):
        train(load_config("tiny"), cohort, run, progress=False)


def test_resume_gives_the_same_weights(cohort, tmp_path):
    config = load_config("tiny", epochs=2, val_fraction=0.25, test_fraction=0.25)
    train(config, cohort, tmp_path / "straight", progress=False, cache_dir=tmp_path / "cache")
    train(
        load_config("tiny", epochs=1, val_fraction=0.25, test_fraction=0.25),
        cohort,
        tmp_path / "split",
        progress=False,
        cache_dir=tmp_path / "cache",
    )
    # the saved config says 1 epoch; extend it as a user would by editing the run's config
    cfg = tmp_path / "split" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("epochs: 1", "epochs: 2"))
    train(
        config,
        cohort,
        tmp_path / "split",
        resume=True,
        progress=False,
        cache_dir=tmp_path / "cache",
    )
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_evaluate_in_bfloat16_stays_close_to_float32(run, cohort, tmp_path, monkeypatch, capsys):
    import aidnet.training.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    real_error = precision.bf16_error
    checked = []  # (input depth, with gradients) of each convolution checked

    def error(conv, shape, backward, *rest):
        checked.append((shape[2], backward))
        return real_error(conv, shape, backward, *rest)

    monkeypatch.setattr(precision, "bf16_error", error)
    fp32 = evaluate_run(run, cohort, tmp_path / "fp32", split="all", n_boot=0, localise=False)
    bf16 = evaluate_run(
        run, cohort, tmp_path / "bf16", split="all", n_boot=0, localise=False, bf16=True
    )
    assert (fp32["precision"], bf16["precision"]) == ("float32", "bfloat16")
    assert checked and not any(grad for _, grad in checked)  # inference: the forward pass only
    assert "no native bfloat16" not in capsys.readouterr().err
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)  # float32, and it says so
    kw = {"split": "all", "n_boot": 0, "localise": False, "bf16": True}
    assert evaluate_run(run, cohort, tmp_path / "none", **kw)["precision"] == "float32"
    assert "--bf16: this CPU has no native bfloat16" in capsys.readouterr().err

    def p_cac(folder):
        with (folder / "predictions.csv").open() as fh:
            return np.array([float(r["p_cac"]) for r in csv.DictReader(fh)])

    a, b = p_cac(tmp_path / "fp32"), p_cac(tmp_path / "bf16")
    assert len(a) == 24
    assert not np.array_equal(a, b)  # it did run in bfloat16
    assert np.abs(a - b).max() < 0.05


def test_evaluate_writes_the_design_outputs(run, cohort, tmp_path):
    metrics = evaluate_run(run, cohort, tmp_path, split="all", n_boot=50)
    with (tmp_path / "predictions.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = reader.fieldnames
    assert header[:8] == [
        "subject",
        "visit",
        "p_cac",
        "p_class0",
        "p_class1",
        "p_class2",
        "predicted",
        "label",
    ]
    assert len(rows) == 24
    assert "noise_hu" not in header  # the model reads scans without the noise ceiling
    for r in rows:
        probs = [float(r[f"p_class{i}"]) for i in range(3)]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert float(r["p_cac"]) == pytest.approx(probs[1] + probs[2], abs=1e-4)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "auc",
        "accuracy",
        "sensitivity",
        "specificity",
        "n",
        "confusion_2x2",
        "confusion_3x3",
        "auc_ci95",
        "accuracy_ci95",
    ):
        assert key in saved, key
    assert saved["n"] == 24 == metrics["n"]
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_explain_writes_maps_on_the_original_grid(run, cohort, tmp_path):
    from aidnet.data.manifest import read_manifest
    from aidnet.io.read import read_volume

    written = explain_manifest(run, cohort, tmp_path, limit=2)
    assert len(written) == 2
    record = read_manifest(cohort)[0]
    ct = read_volume(record.path)
    heat = read_volume(tmp_path / f"{record.key}_gradcam.nii.gz")
    assert heat.shape == ct.shape
    assert np.allclose(heat.affine, ct.affine, atol=1e-4)
    assert heat.array.min() >= 0.0 and heat.array.max() <= 1.0 + 1e-6
    assert (tmp_path / f"{record.key}_attention.nii.gz").exists()
    assert (tmp_path / f"{record.key}_gradcam.png").stat().st_size > 1000


def test_explain_with_workers_writes_the_same_maps(run, cohort, tmp_path):
    """Worker processes write the files while the network runs: the same maps, in scan order."""
    from aidnet.io.read import read_volume

    one = explain_manifest(run, cohort, tmp_path / "one", limit=3)
    two = explain_manifest(run, cohort, tmp_path / "two", limit=3, workers=2)
    assert [w["key"] for w in two] == [w["key"] for w in one]
    for a, b in zip(one, two, strict=True):
        assert set(a) == set(b)
        for name in ("gradcam", "attention"):
            assert np.array_equal(read_volume(a[name]).array, read_volume(b[name]).array)


def test_explain_resumes_after_a_kill(run, cohort, tmp_path, monkeypatch):
    """Killed after its first scan, explain run again computes only the rest; a scan whose map
    file was deleted meanwhile is computed again."""
    import aidnet.pipeline.explain as explain_module

    real, calls = explain_module.explain_item, []

    def dies_after_one(trained, item, out, base=None):
        if calls:
            raise KeyboardInterrupt
        calls.append(item.record.key)
        return real(trained, item, out, base=base)

    def counted(trained, item, out, base=None):
        calls.append(item.record.key)
        return real(trained, item, out, base=base)

    monkeypatch.setattr(explain_module, "explain_item", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        explain_manifest(run, cohort, tmp_path, limit=3)
    assert (tmp_path / explain_module.EXPLAIN_LOG).is_file() and len(calls) == 1
    monkeypatch.setattr(explain_module, "explain_item", counted)
    written = explain_manifest(run, cohort, tmp_path, limit=3)
    keys = [w["key"] for w in written]
    assert len(keys) == 3 and sorted(calls) == sorted(keys)  # none twice
    assert all(w["gradcam"] == tmp_path / f"{w['key']}_gradcam.nii.gz" for w in written)
    assert not (tmp_path / explain_module.EXPLAIN_LOG).exists()
    # a log left by another kill, and a map deleted by hand: that scan is computed again
    monkeypatch.setattr(explain_module, "explain_item", dies_after_one)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        explain_manifest(run, cohort, tmp_path, limit=3)
    (tmp_path / f"{keys[0]}_attention.png").unlink()
    monkeypatch.setattr(explain_module, "explain_item", counted)
    calls.clear()
    explain_manifest(run, cohort, tmp_path, limit=3)
    assert sorted(calls) == sorted(keys)  # the first scan's log entry lost a file


def test_seed_ensemble_on_one_split(run, cohort, tmp_path):
    """A second seed trained with splits= on the first run's split; evaluate and predict with
    both average the members' class probabilities; a member on another split, or with another
    input size, is refused with one line."""
    import shutil

    from aidnet.data.manifest import read_manifest
    from aidnet.data.splits import read_splits, write_splits
    from aidnet.pipeline.predict import predict_scans

    config = load_config("tiny", epochs=1, seed=1, val_fraction=0.25, test_fraction=0.25)
    second = tmp_path / "seed1"
    train(config, cohort, second, progress=False, splits=run / "splits.csv")
    assert read_splits(second / "splits.csv") == read_splits(run / "splits.csv")
    # resuming on another split is refused
    other = read_splits(run / "splits.csv")
    a_test = min(s for s, v in other.items() if v == "test")
    a_train = min(s for s, v in other.items() if v == "train")
    other[a_test], other[a_train] = "train", "test"  # one subject each way
    write_splits(tmp_path / "other.csv", other)
    with pytest.raises(AidnetError, match="started on another subject split"):
        train(config, cohort, second, resume=True, progress=False, splits=tmp_path / "other.csv")

    single = [
        evaluate_run(r, cohort, tmp_path / r.name, split="test", n_boot=0) for r in (run, second)
    ]
    both = evaluate_run([run, second], cohort, tmp_path / "both", split="test", n_boot=0)
    assert both["model"] == "aidnet ×2" and both["n"] == single[0]["n"]
    assert both["checkpoint"] == [str(run / "best.pt"), str(second / "best.pt")]
    # the ensemble's heat maps are its members' averaged, as predict's: localised on the same scans
    assert both["localisation"]["gradcam"]["n"] == single[0]["localisation"]["gradcam"]["n"] > 0
    assert (tmp_path / "both" / "localisation.csv").exists()

    def p_cac(folder):
        with (folder / "predictions.csv").open() as fh:
            return {(r["subject"], r["visit"]): float(r["p_cac"]) for r in csv.DictReader(fh)}

    a, b, mean = p_cac(tmp_path / run.name), p_cac(tmp_path / second.name), p_cac(tmp_path / "both")
    assert mean.keys() == a.keys()
    assert all(mean[k] == pytest.approx((a[k] + b[k]) / 2, abs=2e-6) for k in mean)
    assert any(abs(a[k] - b[k]) > 1e-3 for k in mean), "the two seeds should differ"

    scan = read_manifest(cohort)[0].path
    one = [predict_scans(r, [scan], tmp_path / f"p-{r.name}")["p_cac"] for r in (run, second)]
    pair = predict_scans([run, second], [scan], tmp_path / "p-both")
    assert pair["p_cac"] == pytest.approx(sum(one) / 2, abs=2e-6)
    assert pair["model"] == "aidnet ×2" and len(pair["checkpoint_sha256"]) == 2
    assert (tmp_path / "p-both" / "scan_gradcam.nii.gz").exists()
    # explain of the ensemble: the same averaged maps as predict's, on the scan's own grid
    from aidnet.io.read import read_volume

    key = read_manifest(cohort)[0].key
    explained = explain_manifest([run, second], cohort, tmp_path / "x-both", keys=[key])
    assert [w["key"] for w in explained] == [key]
    for name in ("gradcam", "attention"):
        ours = read_volume(tmp_path / "x-both" / f"{key}_{name}.nii.gz").array
        predicted = read_volume(tmp_path / "p-both" / f"scan_{name}.nii.gz").array
        assert ours.max() > 0 and np.allclose(ours, predicted, atol=1e-5)

    # a member trained on another split cannot be evaluated on "the" test split
    moved = tmp_path / "moved"
    shutil.copytree(second, moved)
    write_splits(moved / "splits.csv", other)
    with pytest.raises(AidnetError, match="trained on another subject split"):
        evaluate_run([run, moved], cohort, tmp_path / "bad", split="test", n_boot=0)
    # a member with another input size cannot share the preprocessed scans
    small = tmp_path / "small"
    train(
        load_config("tiny", epochs=1, input_size=(16, 16, 16)),
        cohort,
        small,
        progress=False,
        splits=run / "splits.csv",
    )
    with pytest.raises(AidnetError, match=r"cannot be averaged with .*input 16×16×16"):
        evaluate_run([run, small], cohort, tmp_path / "bad2", n_boot=0)


def test_a_bad_split_file_fails_before_the_run_folder_exists(cohort, tmp_path):
    bad = tmp_path / "splits.csv"
    bad.write_text("subject,split\nP0001,holdout\n")
    with pytest.raises(AidnetError, match="unknown split.*holdout"):
        train(load_config("tiny"), cohort, tmp_path / "run", progress=False, splits=bad)
    assert not (tmp_path / "run").exists()
    with pytest.raises(AidnetError, match="split file not found"):
        train(load_config("tiny"), cohort, tmp_path / "run", splits=tmp_path / "none.csv")


def test_demo_leaves_a_report(tmp_path):
    from aidnet.pipeline import run_demo

    metrics = run_demo(tmp_path, subjects=16, preset="tiny")
    for name in ("report.html", "predictions.csv", "metrics.json", "run/best.pt", "roc.png"):
        assert (tmp_path / name).exists(), name
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # ROC, confusion, >= 3 overlays... at least
    assert metrics["n"] > 0


def test_demo_at_the_fewest_subjects_it_accepts_shows_what_its_test_split_has(tmp_path, caplog):
    """`aidnet demo --subjects 10`: one test subject, two scans, so two heat maps and a note,
    not a stop for want of a third."""
    from aidnet.pipeline import run_demo

    run_demo(tmp_path, subjects=10, preset="tiny")
    assert (tmp_path / "report.html").exists()
    assert len(list((tmp_path / "heatmaps").rglob("*.nii.gz"))) >= 2
    assert "gallery shows 2 heat maps" in caplog.text


def test_no_patient_name_or_id_leaks_into_outputs(run, cohort, tmp_path):
    import gzip

    from aidnet.data.manifest import read_manifest

    dicom = [r for r in read_manifest(cohort) if r.path.is_dir()]
    assert dicom, "the fixture cohort must contain DICOM series"
    evaluate_run(run, cohort, tmp_path / "eval", n_boot=20)
    explain_manifest(run, cohort, tmp_path / "maps", keys=[r.key for r in dicom])
    outputs = [p for root in (run, tmp_path) for p in root.rglob("*") if p.is_file()]
    assert len(outputs) > 10
    for path in outputs:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        assert b"PHANTOM^" not in data and b"PH00" not in data, path


def cache_state(folder):
    """Name → modification time of the finished cache files in ``folder``."""
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz") if p.name[0] != "."}


@pytest.fixture
def no_preprocessing(monkeypatch):
    """Any scan preprocessed (rather than found in the cache) fails the test."""
    import aidnet.data.job as job_module

    def refuse(job):
        raise AssertionError(f"{job.record.key} was preprocessed again")

    monkeypatch.setattr(job_module, "run_job", refuse)


def predictions(folder):
    with (folder / "predictions.csv").open() as fh:
        return {(r["subject"], r["visit"]): r for r in csv.DictReader(fh)}


def test_evaluate_of_a_run_reuses_its_training_cache(run, cohort, tmp_path, no_preprocessing):
    """Given the run folder, or a checkpoint inside it, evaluate and explain read the scans the
    training preprocessed: no scan is preprocessed again and no cache file is written."""
    before = cache_state(run / "cache")
    assert len(before) == 24
    metrics = evaluate_run(run, cohort, tmp_path / "a", split="test", n_boot=0, localise=False)
    assert metrics["n"] > 0 and metrics["device"] == "cpu"
    evaluate_run(run / "best.pt", cohort, tmp_path / "b", split="test", n_boot=0, localise=False)
    assert explain_manifest(run / "best.pt", cohort, tmp_path / "maps", limit=1)
    assert cache_state(run / "cache") == before
    for out in ("a", "b", "maps"):
        assert not (tmp_path / out / "cache").exists()


def test_evaluate_gives_each_scans_noise_reading_for_a_model_with_the_noise_ceiling(
    cohort, tmp_path
):
    out = tmp_path / "run"
    config = load_config(
        "tiny", epochs=1, val_fraction=0.25, test_fraction=0.25, noise_ceiling=True
    )
    train(config, cohort, out, progress=False)
    evaluate_run(out, cohort, tmp_path / "eval", split="test", n_boot=0, localise=False)
    rows = predictions(tmp_path / "eval")
    assert rows
    for row in rows.values():  # the phantom is rendered under the ceiling: read, not smoothed
        assert 0.0 < float(row["noise_hu"]) < 35.0, row
        assert float(row["smoothed_mm"]) == 0.0, row


def test_evaluate_finds_the_cache_training_was_given(run, cohort, tmp_path, monkeypatch):
    """A run whose training filled another cache folder (``train --cache DIR``) records it;
    evaluate and explain of the run use that folder, and an explicit cache_dir still wins."""
    import shutil

    from aidnet.data.cache import CACHE_RECORD, record_cache_dir, recorded_cache_dir

    moved = tmp_path / "run"
    moved.mkdir()
    for name in ("best.pt", "config.yaml", "splits.csv"):
        shutil.copy2(run / name, moved / name)
    elsewhere = tmp_path / "shared-cache"
    shutil.copytree(run / "cache", elsewhere)
    record_cache_dir(moved, elsewhere)
    assert (moved / CACHE_RECORD).read_text().strip() == str(elsewhere.resolve())
    assert recorded_cache_dir(moved) == elsewhere.resolve()
    record_cache_dir(moved, moved / "cache")  # inside the run: stored relative to it
    assert (moved / CACHE_RECORD).read_text().strip() == "cache"
    assert recorded_cache_dir(moved) is None  # that folder does not exist
    record_cache_dir(moved, elsewhere)

    before = cache_state(elsewhere)
    import aidnet.data.cache as cache_module

    real_run_job, calls = cache_module.run_job, []
    monkeypatch.setattr(cache_module, "run_job", lambda job: calls.append(job) or real_run_job(job))
    evaluate_run(moved, cohort, tmp_path / "eval", split="test", n_boot=0, localise=False)
    explain_manifest(moved / "best.pt", cohort, tmp_path / "maps", limit=1)
    assert calls == [] and cache_state(elsewhere) == before
    assert not (moved / "cache").exists() and not (tmp_path / "maps" / "cache").exists()
    explicit = tmp_path / "explicit"
    explain_manifest(moved, cohort, tmp_path / "maps2", limit=1, cache_dir=explicit)
    assert len(calls) == 1 and len(cache_state(explicit)) == 1


def test_evaluate_with_two_workers_predicts_as_with_one(run, cohort, tmp_path):
    """Uncached scans preprocessed in 2 processes (the command line, on the CPU) give the same
    cache files and predictions as in this process."""
    from aidnet.data.cache import load_cached
    from cli_runner import invoke

    evaluate_run(
        run, cohort, tmp_path / "one", split="test", cache_dir=tmp_path / "c1", n_boot=0, workers=1
    )
    args = ["evaluate", "--checkpoint", run, "--manifest", cohort, "--out", tmp_path / "two"]
    args += ["--split", "test", "--cache", tmp_path / "c2", "--device", "cpu", "--workers", "2"]
    result = invoke([str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "test AUC" in result.output
    one, two = cache_state(tmp_path / "c1"), cache_state(tmp_path / "c2")
    assert sorted(one) == sorted(two) and len(one) >= 4
    for name in one:
        a, b = load_cached(tmp_path / "c1" / name), load_cached(tmp_path / "c2" / name)
        assert np.array_equal(a.image, b.image) and a.geometry == b.geometry
    p1, p2 = predictions(tmp_path / "one"), predictions(tmp_path / "two")
    assert p1.keys() == p2.keys() and len(p1) == len(one)
    for key in p1:
        assert float(p1[key]["p_cac"]) == pytest.approx(float(p2[key]["p_cac"]), abs=1e-6)
        assert p1[key]["predicted"] == p2[key]["predicted"]
    saved = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert saved["device"] == "cpu" and saved["precision"] == "float32"
    assert saved["n"] == len(p1)


def test_predict_and_explain_on_the_cpu_with_two_workers(run, cohort, tmp_path):
    """`predict --device cpu --workers 2` with a scan and its rescan equals predicting each
    scan alone in this process; `explain --device cpu --workers 2` writes the maps."""
    from aidnet.data.manifest import read_manifest
    from aidnet.pipeline.predict import predict_scans
    from cli_runner import invoke

    records = read_manifest(cohort)
    scan, rescan = (r.path for r in records if r.subject == records[0].subject)
    single = [
        predict_scans(run, [p], tmp_path / f"alone-{i}") for i, p in enumerate((scan, rescan))
    ]
    args = ["predict", "--checkpoint", run, scan, rescan, "--out", tmp_path / "pair"]
    result = invoke([str(a) for a in [*args, "--device", "cpu", "--workers", "2"]])
    assert result.exit_code == 0, result.output
    pair = json.loads((tmp_path / "pair" / "prediction.json").read_text())
    for alone, in_pair in zip(single, pair["scans"], strict=True):
        assert in_pair["p_cac"] == pytest.approx(alone["p_cac"], abs=1e-6)
    assert pair["p_cac"] == pytest.approx((single[0]["p_cac"] + single[1]["p_cac"]) / 2, abs=1e-6)
    alone_map = read_volume_array(tmp_path / "alone-1" / "scan_gradcam.nii.gz")
    assert np.allclose(read_volume_array(tmp_path / "pair" / "rescan_gradcam.nii.gz"), alone_map)

    args = ["explain", "--checkpoint", run, "--manifest", cohort, "--out", tmp_path / "maps"]
    args += ["--limit", "2", "--cache", tmp_path / "c", "--device", "cpu", "--workers", "2"]
    result = invoke([str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "wrote heat maps for 2 scans" in result.output
    assert len(cache_state(tmp_path / "c")) == 2


def read_volume_array(path):
    from aidnet.io.read import read_volume

    return read_volume(path).array
