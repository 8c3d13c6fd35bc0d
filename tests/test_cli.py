"""The command line: help, the Agatston command, and one-line errors for bad input."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from aidnet.cli import app
from aidnet.io.nifti import write_nifti
from aidnet.io.volume import canonical_affine

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("aidnet: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("phantom", "agatston", "train", "evaluate", "explain", "demo"):
        assert command in result.output


@pytest.fixture
def scan(tmp_path):
    hu = np.full((5, 20, 20), -40, dtype=np.int16)
    hu[2, 4:8, 4:8] = 420  # 16 px at 0.5 mm = 4 mm^2, weight 4, thickness 2.5
    hu[3, 12:14, 12:14] = 150  # 4 px = 1 mm^2, weight 1
    labels = np.zeros_like(hu, dtype=np.uint8)
    labels[2, 4:8, 4:8] = 1
    labels[3, 12:14, 12:14] = 2
    aff = canonical_affine((2.5, 0.5, 0.5))
    write_nifti(hu, aff, tmp_path / "ct.nii.gz")
    write_nifti(labels, aff, tmp_path / "label.nii.gz")
    return tmp_path


def test_agatston_command(scan):
    result = run("agatston", scan / "ct.nii.gz", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = 4 * 4 * 2.5 / 3 + 1 * 1 * 2.5 / 3
    assert data["agatston"] == pytest.approx(expected)
    assert len(data["lesions"]) == 2
    masked = run("agatston", scan / "ct.nii.gz", "--mask", scan / "label.nii.gz", "--label", 1)
    assert masked.exit_code == 0
    assert f"Agatston score: {4 * 4 * 2.5 / 3:.2f}" in masked.output
    assert "risk category:  11-100" in masked.output


def test_agatston_missing_file(tmp_path):
    one_line_error(run("agatston", tmp_path / "nope.nii.gz"), "nope.nii.gz", "file not found")


def test_agatston_unreadable_image(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    one_line_error(run("agatston", tmp_path / "bad.nii.gz"), "bad.nii.gz", "not a readable image")


def test_agatston_mask_of_other_shape(scan, tmp_path):
    write_nifti(np.zeros((2, 3, 4), np.uint8), np.eye(4), tmp_path / "small.nii.gz")
    one_line_error(
        run("agatston", scan / "ct.nii.gz", "--mask", tmp_path / "small.nii.gz"), "does not match"
    )


def test_train_manifest_without_path_column(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,visit,file,agatston\nP1,scan,a.nii.gz,0\n")
    result = run("train", "--manifest", manifest, "--out", tmp_path / "run", "--preset", "tiny")
    one_line_error(result, "m.csv", "lacks the column(s) path")


def test_train_missing_manifest(tmp_path):
    result = run("train", "--manifest", tmp_path / "none.csv", "--out", tmp_path / "run")
    one_line_error(result, "none.csv", "manifest not found")


def test_evaluate_with_a_file_that_is_not_a_checkpoint(tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a checkpoint")
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,visit,path\n")
    result = run("evaluate", "--checkpoint", fake, "--manifest", manifest, "--out", tmp_path / "o")
    one_line_error(result, "model.pt", "not a readable aidnet checkpoint")


def test_bad_manifest_leaves_no_run_folder(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,visit,path,agatston\nP1,scan,missing.nii.gz,0\n")
    result = run("train", "--manifest", manifest, "--out", tmp_path / "run", "--preset", "tiny")
    one_line_error(result, "missing.nii.gz not found")
    assert not (tmp_path / "run").exists()


def test_phantom_command_and_bad_size(tmp_path):
    result = run("phantom", "--out", tmp_path / "c", "--subjects", 2, "--seed", 4)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "c" / "manifest.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("subject,visit,path,agatston")
    one_line_error(run("phantom", "--out", tmp_path / "d", "--size", "huge"), "--size")
    assert not (tmp_path / "d").exists()


def test_version():
    from aidnet import __version__

    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"aidnet {__version__}"
