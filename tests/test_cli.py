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


def ras_nifti(volume, path):
    """Write a canonical volume as a NIfTI stored in RAS order (i → right, j → anterior)."""
    import nibabel as nib

    data = np.transpose(volume.array, (2, 1, 0))[::-1, ::-1, ::-1].astype(np.int16)
    sz, sy, sx = volume.spacing
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-100.0, -80.0, -150.0]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)
    return data.shape, affine


def test_lungs_command_writes_the_mask_on_the_input_grid(tmp_path):
    import nibabel as nib

    from test_lung import synthetic_chest

    volume, truth = synthetic_chest((40, 64, 64), (6.0, 6.0, 6.0))
    shape, affine = ras_nifti(volume, tmp_path / "chest.nii.gz")
    result = run("lungs", tmp_path / "chest.nii.gz", "--out", tmp_path / "lungs.nii.gz")
    assert result.exit_code == 0, result.output
    out = nib.load(tmp_path / "lungs.nii.gz")
    assert out.shape == shape
    assert np.allclose(out.affine, affine)
    mask = np.asarray(out.dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1, 2}
    # the right lung (1) lies at the patient's right: larger i in a RAS file = further right
    truth_ras = np.transpose(truth, (2, 1, 0))[::-1, ::-1, ::-1]
    assert ((mask == 1) & (truth_ras == 1)).sum() > 0.9 * (truth_ras == 1).sum()
    litres = [(mask == k).sum() * 6.0**3 / 1e6 for k in (1, 2)]
    line = result.output.strip()
    assert line == (
        f"wrote {tmp_path / 'lungs.nii.gz'} "
        f"(right lung {litres[0]:.2f} L, left lung {litres[1]:.2f} L)"
    )


def test_lungs_command_on_a_head_names_the_file(tmp_path):
    from aidnet.io.volume import Volume

    shape, spacing = (30, 64, 64), (4.0, 3.0, 3.0)
    z, y, x = np.meshgrid(*(np.arange(n) - n / 2 for n in shape), indexing="ij")
    r = np.sqrt((z * 4.0 / 90) ** 2 + (y * 3.0 / 95) ** 2 + (x * 3.0 / 75) ** 2)
    hu = np.where(r <= 1.0, 700.0, -1000.0)
    hu[r <= 0.93] = 35.0
    head = Volume(hu.astype(np.float32), spacing, canonical_affine(spacing))
    ras_nifti(head, tmp_path / "head.nii.gz")
    result = run("lungs", tmp_path / "head.nii.gz", "--out", tmp_path / "m.nii.gz")
    one_line_error(result, f"{tmp_path / 'head.nii.gz'}: no lungs found")
    assert not (tmp_path / "m.nii.gz").exists()


def test_lungs_command_bad_output_name(tmp_path):
    result = run("lungs", tmp_path / "ct.nii.gz", "--out", tmp_path / "m.nrrd")
    one_line_error(result, "m.nrrd", "NIfTI")


def test_lungs_command_notes_the_chosen_dicom_series(tmp_path):
    import shutil

    from aidnet.io.dicom import write_dicom_series
    from test_lung import synthetic_chest

    chest, _ = synthetic_chest((40, 64, 64), (6.0, 6.0, 6.0))
    small, _ = synthetic_chest((12, 64, 64), (6.0, 6.0, 6.0))
    folder = tmp_path / "export"
    folder.mkdir()
    for name, vol, seed in (("chest", chest, 0), ("other", small, 1)):
        written = write_dicom_series(
            vol, tmp_path / name, patient_name="X^Y", patient_id="7", seed=seed
        )
        edit_description(written, name)
        for f in written.iterdir():
            shutil.move(f, folder / f"{name}_{f.name}")
    result = run("lungs", folder, "--out", tmp_path / "lungs.nii.gz")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"aidnet: note: {folder}: reading series 1 'chest' (40 slices)")
    assert "skipped 1 other" in lines[0]
    assert lines[1].startswith(f"wrote {tmp_path / 'lungs.nii.gz'} (right lung")


def edit_description(folder, text):
    import pydicom

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = text
        ds.save_as(f)
