"""CT I/O: canonical orientation, NIfTI and DICOM round trips, clear errors."""

import nibabel as nib
import numpy as np
import pytest

from aidnet.errors import AidnetError
from aidnet.io.dicom import read_dicom_series, write_dicom_series
from aidnet.io.nifti import read_nifti, write_nifti
from aidnet.io.orient import reorient_canonical
from aidnet.io.read import read_volume
from aidnet.io.volume import Volume, canonical_affine


def ramp(shape=(6, 7, 8)):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 500


def test_canonical_affine_directions():
    aff = canonical_affine((2.0, 0.7, 0.8), (10, 20, 30))
    # +x index goes to patient left (RAS x decreases), +y posterior, +z towards the feet
    assert aff[0, 2] == pytest.approx(-0.8)
    assert aff[1, 1] == pytest.approx(-0.7)
    assert aff[2, 0] == pytest.approx(-2.0)
    assert np.allclose(aff[:3, 3], [10, 20, 30])


def test_reorient_is_identity_on_canonical():
    aff = canonical_affine((2.0, 0.7, 0.8))
    arr, new = reorient_canonical(ramp(), aff)
    assert np.array_equal(arr, ramp())
    assert np.allclose(new, aff)


def test_reorient_keeps_world_positions_of_voxels():
    # an RAS-oriented (x, y, z)-indexed array, as nibabel often gives
    data = ramp((8, 7, 6))
    aff = np.diag([0.8, 0.7, 2.0, 1.0])
    aff[:3, 3] = [-5, 3, 100]
    arr, new = reorient_canonical(data, aff)
    assert arr.shape == (6, 7, 8)
    for idx in [(0, 0, 0), (5, 6, 7), (2, 3, 4)]:
        world = new @ np.array([*idx, 1.0])
        src = np.linalg.solve(aff, world)[:3].round().astype(int)
        assert arr[idx] == data[tuple(src)]


def test_nifti_round_trip(tmp_path):
    aff = canonical_affine((2.5, 0.6, 0.7), (100, -50, 20))
    write_nifti(ramp().astype(np.int16), aff, tmp_path / "a.nii.gz")
    vol = read_nifti(tmp_path / "a.nii.gz")
    assert np.array_equal(vol.array, ramp())
    assert np.allclose(vol.affine, aff)
    assert vol.spacing == pytest.approx((2.5, 0.6, 0.7))


def test_nifti_in_other_orientation_is_reoriented(tmp_path):
    # (x, y, z) array in RAS: x index to the patient's right... stored as NIfTI directly
    data = ramp((8, 7, 6))
    aff = np.diag([0.8, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "ras.nii.gz")
    vol = read_nifti(tmp_path / "ras.nii.gz")
    assert vol.array.shape == (6, 7, 8)
    assert vol.affine[0, 2] < 0 and vol.affine[1, 1] < 0 and vol.affine[2, 0] < 0
    # the voxel at RAS origin keeps its value
    idx = np.linalg.solve(vol.affine, [0, 0, 0, 1])[:3].round().astype(int)
    assert vol.array[tuple(idx)] == data[0, 0, 0]


def test_dicom_round_trip_matches_nifti(tmp_path):
    aff = canonical_affine((2.0, 0.75, 0.75), (120, 80, -30))
    vol = Volume(ramp(), (2.0, 0.75, 0.75), aff)
    folder = write_dicom_series(
        vol, tmp_path / "series", patient_name="PHANTOM^0001", patient_id="PH0001", seed=3
    )
    assert len(list(folder.iterdir())) == 6
    back = read_dicom_series(folder)
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.affine, aff, atol=1e-3)


def test_dicom_reader_ignores_file_order_and_instance_numbers(tmp_path):
    import pydicom

    vol = Volume(ramp(), (2.0, 0.75, 0.75), canonical_affine((2.0, 0.75, 0.75)))
    folder = write_dicom_series(vol, tmp_path / "s", patient_name="X^Y", patient_id="1")
    for i, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = 100 - 7 * i
        ds.save_as(f)
    assert np.array_equal(read_dicom_series(folder).array, vol.array)


def test_dicom_missing_slice_is_detected(tmp_path):
    import pydicom

    vol = Volume(ramp(), (2.0, 0.75, 0.75), canonical_affine((2.0, 0.75, 0.75)))
    folder = write_dicom_series(vol, tmp_path / "s", patient_name="X^Y", patient_id="1")
    files = sorted(
        folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2])
    )
    files[2].unlink()
    with pytest.raises(AidnetError, match="irregular slice spacing"):
        read_dicom_series(folder)


def test_dicom_non_ct_modality_fails(tmp_path):
    import pydicom

    vol = Volume(ramp(), (2.0, 0.75, 0.75), canonical_affine((2.0, 0.75, 0.75)))
    folder = write_dicom_series(vol, tmp_path / "s", patient_name="X^Y", patient_id="1")
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    with pytest.raises(AidnetError, match="not a CT series"):
        read_volume(folder)


def test_read_volume_errors(tmp_path):
    with pytest.raises(AidnetError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(AidnetError, match="file is empty"):
        read_volume(tmp_path / "empty.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"this is not an image" * 10)
    with pytest.raises(AidnetError, match="not a readable image"):
        read_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(AidnetError, match="unsupported file type"):
        read_volume(tmp_path / "x.txt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(AidnetError, match="no DICOM images"):
        read_volume(tmp_path / "emptydir")


def test_nan_image_is_rejected(tmp_path):
    arr = ramp()
    arr[1, 1, 1] = np.nan
    write_nifti(arr, canonical_affine((1, 1, 1)), tmp_path / "nan.nii.gz")
    with pytest.raises(AidnetError, match="NaN"):
        read_volume(tmp_path / "nan.nii.gz")
