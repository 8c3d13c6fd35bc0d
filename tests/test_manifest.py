"""Manifest validation, subject-level splits and presets."""

import pytest

from aidnet.config import PRESETS, load_config
from aidnet.data.manifest import read_manifest
from aidnet.data.splits import split_subjects
from aidnet.errors import AidnetError


def write(tmp_path, text, images=("a.nii.gz", "b.nii.gz")):
    for name in images:
        (tmp_path / name).write_bytes(b"x")
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_reads_rows_and_resolves_paths(tmp_path):
    path = write(
        tmp_path,
        "subject,visit,path,agatston,site\nP1,scan,a.nii.gz,0,A\nP1,rescan,b.nii.gz,12.5,A\n",
    )
    records = read_manifest(path)
    assert [r.visit for r in records] == ["scan", "rescan"]
    assert records[0].path == (tmp_path / "a.nii.gz").resolve()
    assert records[1].agatston == 12.5 and records[1].label == 1
    assert records[0].extras == {"site": "A"}
    assert records[0].key == "P1_scan"


def test_unlabelled_rows_are_allowed(tmp_path):
    path = write(tmp_path, "subject,visit,path,agatston\nP1,scan,a.nii.gz,\n")
    assert read_manifest(path)[0].label is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subject,visit,file\nP1,scan,a.nii.gz\n", "lacks the column"),
        ("subject,visit,path\n", "no rows"),
        (
            "subject,visit,path,agatston\nP1,scan,a.nii.gz,abc\n",
            "line 2: agatston 'abc' is not a number",
        ),
        ("subject,visit,path,agatston\nP1,scan,a.nii.gz,-3\n", "must be a finite number"),
        (
            "subject,visit,path\nP1,scan,a.nii.gz\nP1,scan,b.nii.gz\n",
            "duplicate subject/visit P1/scan",
        ),
        ("subject,visit,path\nP1,scan,missing.nii.gz\n", "image missing.nii.gz not found"),
        ("subject,visit,path\n,scan,a.nii.gz\n", "must not be empty"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path, text, message):
    with pytest.raises(AidnetError, match=message):
        read_manifest(write(tmp_path, text))


@pytest.mark.parametrize(
    ("cell", "label"),
    [
        ("0", 0),
        ("1-99", 1),
        ("100–399", 1),
        ("100 to 399", 1),
        (">=400", 2),
        ("≥ 400", 2),
        ("400+", 2),
        ("> 1000", 2),
    ],
)
def test_report_categories_within_one_class_give_that_class(tmp_path, cell, label):
    path = write(tmp_path, f"subject,visit,path,agatston\nP1,scan,a.nii.gz,{cell}\n")
    assert read_manifest(path)[0].label == label


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        (">=300", "'>=300' spans the classes 1–399 and ≥ 400"),  # CAC-DRS
        ("0-10", "'0-10' spans the classes 0 and 1–399"),
        (">0", "spans the classes 1–399 and ≥ 400"),
        ("0-1000", "spans the classes 0, 1–399 and ≥ 400"),
        ("99-1", "range '99-1' runs backwards"),
        ("1-x", "'1-x' is not a number, nor a range"),
    ],
)
def test_categories_across_classes_are_refused(tmp_path, cell, message):
    path = write(tmp_path, f"subject,visit,path,agatston\nP1,scan,a.nii.gz,{cell}\n")
    with pytest.raises(AidnetError) as caught:
        read_manifest(path)
    assert str(caught.value).startswith(f"{path}, line 2: agatston ")
    assert message in str(caught.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(AidnetError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_split_is_by_subject_stratified_and_seeded(tmp_path):
    lines = ["subject,visit,path,agatston"]
    for i in range(60):
        score = [0, 50, 800][i % 3]
        lines += [f"S{i},scan,a.nii.gz,{score}", f"S{i},rescan,b.nii.gz,{score}"]
    records = read_manifest(write(tmp_path, "\n".join(lines) + "\n"))
    a = split_subjects(records, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert a == split_subjects(records, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert a != split_subjects(records, val_fraction=0.2, test_fraction=0.2, seed=2)
    assert set(a) == {f"S{i}" for i in range(60)}
    for cls in range(3):
        subjects = [f"S{i}" for i in range(60) if i % 3 == cls]
        assert sum(a[s] == "test" for s in subjects) == 4
        assert sum(a[s] == "val" for s in subjects) == 4


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset):
    config = load_config(preset)
    assert config.preset == preset
    assert len(config.input_size) == 3
    assert config.num_classes == 3


def test_paper_preset_matches_the_paper():
    config = load_config("paper")
    assert config.input_size == (64, 128, 192)
    assert (config.lr, config.batch_size, config.epochs, config.lambda_) == (1e-4, 2, 100, 0.001)
    # nothing added: the last stage's map, no penalty, no clipping, no schedule, no window
    assert (config.model, config.head, config.strategy) == ("aidnet", "stage", 2)
    assert (config.negative_evidence, config.grad_clip, config.select_from) == (0.0, 0.0, 0.0)
    assert (config.lr_schedule, config.augment, config.dropout) == ("constant", False, 0.0)


def test_full_preset_is_ours_at_the_papers_size():
    full, paper = load_config("full"), load_config("paper")
    assert full.input_size == paper.input_size and full.features == paper.features
    assert (full.head, full.negative_mode) == ("calcium", "relative")
    assert full.negative_evidence > 0 and full.grad_clip > 0 and full.epochs == 100


def test_overrides_and_bad_config(tmp_path):
    assert load_config("tiny", strategy=1, lambda_=0.0).num_classes == 2
    with pytest.raises(AidnetError, match="strategy must be 1 or 2"):
        load_config("tiny", strategy=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(AidnetError, match="unknown configuration keys: learning_rate"):
        load_config(str(bad))
    with pytest.raises(AidnetError, match="not a preset"):
        load_config("huge")
