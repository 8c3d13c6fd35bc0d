"""CT I/O: canonical orientation, NIfTI and DICOM round trips, clear errors."""

import zlib

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
    # nibabel's view of the file: (i, j, k) = (x, y, z) voxels, affine columns in that order
    raw = nib.load(tmp_path / "a.nii.gz")
    assert np.array_equal(np.asarray(raw.dataobj), ramp().transpose(2, 1, 0))
    assert np.allclose(raw.affine, aff[:, [2, 1, 0, 3]])
    vol = read_nifti(tmp_path / "a.nii.gz")
    assert np.array_equal(vol.array, ramp())
    assert np.allclose(vol.affine, aff)
    assert vol.spacing == pytest.approx((2.5, 0.6, 0.7))


def _random_grid(rng, oblique: bool) -> np.ndarray:
    """A (z, y, x) affine: any rotation (or a signed axis permutation), possibly left-handed."""
    if oblique:
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    else:
        rotation = np.eye(3)[:, rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(rng.uniform(0.3, 5.0, 3))
    affine[:3, 3] = rng.normal(0.0, 100.0, 3)
    return affine


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64, np.uint16, bool])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_written_nifti_reads_the_same_in_nibabel_and_itk(tmp_path, dtype, suffix):
    """Our NIfTI-1 writer against two independent readers: nibabel (qform and sform) and ITK
    (SimpleITK, what 3D Slicer uses), on oblique, permuted and left-handed grids."""
    import SimpleITK as sitk

    from aidnet.io.itk import itk_affine

    rng = np.random.default_rng(zlib.crc32(f"{np.dtype(dtype)}{suffix}".encode()))
    for trial in range(12):
        affine = _random_grid(rng, oblique=trial % 2 == 0)
        array = (rng.normal(0.0, 300.0, (4, 5, 6))).astype(dtype)
        path = write_nifti(array, affine, tmp_path / f"t{trial}{suffix}")
        img = nib.load(path)
        expected = affine[:, [2, 1, 0, 3]]  # nibabel's (i, j, k) = our (x, y, z)
        assert img.header["qform_code"] == 1 and img.header["sform_code"] == 1
        assert np.allclose(img.get_sform(), expected, atol=1e-4)
        # the qform's quaternion is float32: near a half turn it keeps ~1e-4 (nibabel's too)
        assert np.allclose(img.get_qform(), expected, atol=1e-3)
        assert img.header.get_xyzt_units()[0] == "mm"
        stored = np.asarray(img.dataobj)
        assert stored.dtype == (np.uint8 if dtype is bool else dtype)
        assert np.array_equal(stored, array.transpose(2, 1, 0))
        itk = sitk.ReadImage(str(path))
        assert np.allclose(itk_affine(itk), affine, atol=1e-3)
        assert np.array_equal(sitk.GetArrayFromImage(itk), array)


def test_nifti_writer_refuses_what_nifti_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="complex"):
        write_nifti(np.zeros((2, 3, 4), np.complex64), np.eye(4), tmp_path / "c.nii")
    with pytest.raises(ValueError, match="2-D"):
        write_nifti(np.zeros((3, 4), np.uint8), np.eye(4), tmp_path / "d.nii")
    assert not list(tmp_path.iterdir())


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
    # SimpleITK (GDCM) reads the same series: each of our voxels, placed in the world by our
    # affine, holds ITK's value at that position
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    assert np.array_equal(values_at_world_positions(itk_ras(reader.Execute()), back), back.array)


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


def itk_image(array, affine):
    """A SimpleITK image of a (k, j, i) array with RAS ``affine`` (columns in k, j, i order)."""
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine)[:3]
    columns = lps[:, :3][:, ::-1]  # ITK orders axes (i, j, k)
    spacing = np.linalg.norm(columns, axis=0)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((columns / spacing).ravel().tolist())
    img.SetOrigin(lps[:, 3].tolist())
    return img


def itk_ras(img):
    """A SimpleITK image as (array, RAS affine) in its own (k, j, i) voxel order, straight from
    ITK's origin, spacing and direction (LPS): no aidnet code involved."""
    import SimpleITK as sitk

    columns = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ columns[:, ::-1]  # (i, j, k) -> (k, j, i)
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(img.GetOrigin())
    return sitk.GetArrayFromImage(img), affine


def values_at_world_positions(source, vol):
    """The ``(array, affine)`` source's values at the RAS positions of ``vol``'s voxels, found
    through the source's own affine (no reorientation code involved)."""
    array, affine = source
    index = np.indices(vol.shape).reshape(3, -1)
    world = vol.affine[:3, :3] @ index + vol.affine[:3, 3:]
    at = np.linalg.solve(affine[:3, :3], world - affine[:3, 3:])
    voxel = np.rint(at).astype(int)
    assert np.abs(at - voxel).max() < 1e-3  # the same grid
    assert (voxel >= 0).all() and (voxel < np.array(array.shape)[:, None]).all()  # inside it
    return array[tuple(voxel)].reshape(vol.shape)


def rotation_z(degrees):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def layout(i, j, k):
    """Affine columns (k, j, i) of a file whose i, j, k axes run along these RAS vectors."""
    return np.array([k, j, i], dtype=np.float64).T


# RAS-ish, LPS (DICOM-like), flipped, permuted (sagittal stack) and slightly oblique sources
LAYOUTS = {
    "ras": layout((0.8, 0, 0), (0, 0.7, 0), (0, 0, 2.0)),
    "lps": layout((-0.8, 0, 0), (0, -0.7, 0), (0, 0, 2.0)),
    "feet-first": layout((-0.8, 0, 0), (0, 0.7, 0), (0, 0, -2.0)),
    "permuted": layout((0, 0, 2.0), (0.8, 0, 0), (0, -0.7, 0)),
    "oblique": rotation_z(7) @ layout((-0.8, 0, 0), (0, -0.7, 0), (0, 0, -2.0)),
}


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_itk_files_read_like_the_equivalent_nifti(tmp_path, suffix, layout):
    import SimpleITK as sitk

    source = ramp((6, 7, 8))
    affine = np.eye(4)
    affine[:3, :3] = LAYOUTS[layout]
    affine[:3, 3] = [12.5, -40, 7]
    write_nifti(source, affine, tmp_path / "ref.nii.gz")
    sitk.WriteImage(itk_image(source, affine), str(tmp_path / f"img{suffix}"))
    ref = read_volume(tmp_path / "ref.nii.gz")
    vol = read_volume(tmp_path / f"img{suffix}")
    for v in (ref, vol):  # each voxel holds the source's value at its world position
        assert np.array_equal(v.array, values_at_world_positions((source, affine), v))
        assert v.array.dtype == np.float32
        assert v.affine[0, 2] < 0 and v.affine[1, 1] < 0 and v.affine[2, 0] < 0  # canonical
    assert np.array_equal(vol.array, ref.array)  # SimpleITK's file and nibabel's agree
    assert np.allclose(vol.affine, ref.affine, atol=1e-5)
    # the affine survives read → write_nifti → read
    write_nifti(vol.array, vol.affine, tmp_path / "again.nii.gz")
    again = read_volume(tmp_path / "again.nii.gz")
    assert np.array_equal(again.array, vol.array)
    assert np.allclose(again.affine, vol.affine, atol=1e-5)
    # and maps back onto the file's own layout
    back, back_affine = vol.to_source(vol.array)
    assert np.array_equal(back, source)
    assert np.allclose(back_affine, affine, atol=1e-5)


def test_ras_nifti_mask_goes_back_to_the_input_grid(tmp_path):
    data = ramp((8, 7, 6)).astype(np.int16)
    aff = np.diag([0.8, 0.7, 2.0, 1.0])
    aff[:3, 3] = [-30, 12, 80]
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "ras.nii.gz")
    vol = read_volume(tmp_path / "ras.nii.gz")
    assert vol.shape == (6, 7, 8)
    mask = vol.with_array((vol.array > 0).astype(np.uint8))
    assert mask.source is vol.source
    write_nifti(*vol.to_source(vol.array.astype(np.int16)), tmp_path / "back.nii.gz")
    back = nib.load(tmp_path / "back.nii.gz")
    assert back.shape == data.shape
    assert np.allclose(back.affine, aff)
    assert np.array_equal(np.asarray(back.dataobj), data)
    write_nifti(*mask.to_source(mask.array), tmp_path / "mask.nii.gz")
    assert np.array_equal(np.asarray(nib.load(tmp_path / "mask.nii.gz").dataobj), data > 0)


def test_volume_made_in_memory_maps_to_itself():
    vol = Volume(ramp(), (2.0, 0.7, 0.8), canonical_affine((2.0, 0.7, 0.8)))
    array, affine = vol.to_source(vol.array)
    assert np.array_equal(array, vol.array) and np.allclose(affine, vol.affine)
    with pytest.raises(ValueError, match="does not match"):
        vol.to_source(np.zeros((2, 2, 2)))


def test_nifti_with_a_singleton_fourth_axis_is_3d(tmp_path):
    data = ramp((8, 7, 6))
    nib.save(nib.Nifti1Image(data[..., None], np.diag([0.8, 0.7, 2.0, 1.0])), tmp_path / "t.nii")
    vol = read_volume(tmp_path / "t.nii")
    assert vol.shape == (6, 7, 8)
    assert np.array_equal(vol.array, read_volume_of(data, tmp_path).array)


def read_volume_of(data, tmp_path):
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.7, 2.0, 1.0])), tmp_path / "three.nii")
    return read_volume(tmp_path / "three.nii")


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [((8, 7, 6, 3), "a 4-D image of shape 8×7×6×3"), ((8, 7), "a 2-D image"), ((8, 7, 1), "2-D")],
)
def test_nifti_that_is_not_one_volume_fails(tmp_path, shape, fragment):
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    with pytest.raises(AidnetError, match=fragment) as err:
        read_volume(path)
    assert str(err.value).startswith(f"{path}: ")


def test_2d_mha_and_vector_nrrd_fail(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((7, 8), np.int16)), str(tmp_path / "a.mha"))
    with pytest.raises(AidnetError, match="a 2-D image"):
        read_volume(tmp_path / "a.mha")
    rgb = sitk.GetImageFromArray(np.zeros((4, 7, 8, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(AidnetError, match="3 values per voxel"):
        read_volume(tmp_path / "rgb.nrrd")


def test_nrrd_in_ras_space_matches_nifti(tmp_path):
    source = ramp((6, 7, 8)).astype(np.int16)
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\nsizes: 8 7 6\n"
        "space directions: (0.8,0,0) (0,0.7,0) (0,0,2)\nkinds: domain domain domain\n"
        "endian: little\nencoding: raw\nspace origin: (-30,12,80)\n\n"
    )
    (tmp_path / "ras.nrrd").write_bytes(header.encode() + source.tobytes())
    affine = np.eye(4)
    affine[:3, :3] = LAYOUTS["ras"]
    affine[:3, 3] = [-30, 12, 80]
    write_nifti(source, affine, tmp_path / "ras.nii.gz")
    vol, ref = read_volume(tmp_path / "ras.nrrd"), read_volume(tmp_path / "ras.nii.gz")
    # by hand: i, j, k run right, anterior and superior; the canonical (z, y, x) array runs to
    # the feet, posterior and to the patient's left, so all three axes flip, and its voxel 0 is
    # source voxel (k, j, i) = (5, 6, 7), at (-30 + 7 * 0.8, 12 + 6 * 0.7, 80 + 5 * 2) mm
    by_hand = np.array([[0, 0, -0.8, -24.4], [0, -0.7, 0, 16.2], [-2.0, 0, 0, 90.0], [0, 0, 0, 1]])
    for v in (vol, ref):
        assert np.array_equal(v.array, source[::-1, ::-1, ::-1])
        assert np.allclose(v.affine, by_hand)
