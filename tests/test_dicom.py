"""DICOM series folders: series choice, slice checks, broken files, compression, rescaling."""

import copy
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from aidnet.errors import AidnetError
from aidnet.io.dicom import read_dicom_series, write_dicom_series
from aidnet.io.read import read_volume
from aidnet.io.volume import Volume, canonical_affine

SPACING = (2.0, 0.75, 0.75)


def ramp(shape=(6, 16, 16)):
    return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 1500) - 1000


def series(tmp_path, name="s", slices=6, seed=0, description="aidnet phantom", number=1):
    """A written test series and the volume it holds."""
    vol = Volume(ramp((slices, 16, 16)), SPACING, canonical_affine(SPACING, (10, 20, 30)))
    folder = write_dicom_series(
        vol,
        tmp_path / name,
        patient_name="X^Y",
        patient_id="1",
        seed=seed,
        series_description=description,
    )
    if number != 1:
        edit(folder, lambda ds: setattr(ds, "SeriesNumber", number))
    return vol, folder


def edit(folder, change):
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f)


def by_position(folder):
    return sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


def merge(target, *folders):
    target.mkdir()
    for k, folder in enumerate(folders):
        for f in folder.iterdir():
            shutil.move(f, target / f"{k}_{f.name}")
    return target


def tags(folder):
    """(orientation, pixel spacing, positions head first) as written in the files."""
    files = [pydicom.dcmread(f) for f in by_position(folder)][::-1]
    return (
        [float(v) for v in files[0].ImageOrientationPatient],
        [float(v) for v in files[0].PixelSpacing],
        [[float(v) for v in ds.ImagePositionPatient] for ds in files],
    )


# The canonical affine of series() worked out by hand from its tags (PS3.3 C.7.6.2.1.1; LPS to
# RAS negates x and y): columns run along the first orientation vector, +x LPS (the patient's
# left) 0.75 mm apart; rows along the second, +y LPS (posterior) 0.75 mm apart; slices 2 mm
# apart from z = 30 (head) down; the head slice's first voxel at LPS (-10, -20, 30).
SERIES_AFFINE = np.array([[0, 0, -0.75, 10], [0, -0.75, 0, 20], [-2, 0, 0, 30], [0, 0, 0, 1]])


def test_round_trip_and_source_layout(tmp_path):
    vol, folder = series(tmp_path)
    orientation, spacing, positions = tags(folder)
    assert orientation == [1, 0, 0, 0, 1, 0] and spacing == [0.75, 0.75]
    assert positions == [[-10, -20, 30 - 2 * k] for k in range(6)]
    back = read_volume(folder)
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.affine, SERIES_AFFINE, atol=1e-3)
    assert back.source is not None  # the stack as read: slices head → feet, rows, columns
    array, affine = back.to_source(back.array)
    assert np.array_equal(array, vol.array) and np.allclose(affine, SERIES_AFFINE, atol=1e-3)


def test_rows_running_to_the_right_are_flipped_and_mapped_back(tmp_path):
    vol, folder = series(tmp_path)
    edit(folder, lambda ds: setattr(ds, "ImageOrientationPatient", [-1, 0, 0, 0, 1, 0]))
    back = read_volume(folder)
    assert np.array_equal(back.array, vol.array[:, :, ::-1])
    # by hand: file column c lies at LPS x = -10 - 0.75 c, RAS x = 10 + 0.75 c; canonical x
    # still runs to the patient's left, so it starts at column 15, RAS x = 21.25
    by_hand = SERIES_AFFINE.copy()
    by_hand[0, 3] = 10 + 15 * 0.75
    assert np.allclose(back.affine, by_hand, atol=1e-3)
    array, affine = back.to_source(back.array)
    assert np.array_equal(array, vol.array)
    assert np.allclose(affine @ [0, 0, 0, 1], back.affine @ [0, 0, 15, 1])


def test_two_series_reads_the_larger_and_says_so(tmp_path, caplog):
    vol, big = series(tmp_path, "big", slices=8, description="Lung 1mm", number=3)
    _, small = series(tmp_path, "small", slices=5, seed=1, description="Scout", number=9)
    folder = merge(tmp_path / "mixed", big, small)
    with caplog.at_level(logging.WARNING, logger="aidnet"):
        back = read_dicom_series(folder)
    assert np.array_equal(back.array, vol.array)
    notes = [r.getMessage() for r in caplog.records if r.name.startswith("aidnet")]
    assert len(notes) == 1
    for fragment in (str(folder), "series 3 'Lung 1mm' (8 slices)", "skipped 1 other"):
        assert fragment in notes[0]


def test_localizer_in_the_same_series_is_skipped(tmp_path, caplog):
    vol, folder = series(tmp_path)
    ds = pydicom.dcmread(next(folder.iterdir()))
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "scout.dcm")
    with caplog.at_level(logging.WARNING, logger="aidnet"):
        back = read_dicom_series(folder)
    assert np.array_equal(back.array, vol.array)
    assert "skipped 1 other" in caplog.text


def test_two_series_of_equal_size_fail_listing_both(tmp_path):
    _, a = series(tmp_path, "a", description="Lung", number=2)
    _, b = series(tmp_path, "b", seed=1, description="Soft tissue", number=4)
    folder = merge(tmp_path / "mixed", a, b)
    with pytest.raises(AidnetError, match="cannot choose") as err:
        read_dicom_series(folder)
    message = str(err.value)
    assert message.startswith(str(folder))
    assert "series 2 'Lung' (6 slices)" in message
    assert "series 4 'Soft tissue' (6 slices)" in message


def test_non_dicom_files_are_ignored(tmp_path, caplog):
    from pydicom.dataset import Dataset, FileMetaDataset

    vol, folder = series(tmp_path)
    (folder / "notes.txt").write_text("exported from PACS\n")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(600))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # type: ignore[assignment]
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dicomdir = Dataset()
    dicomdir.file_meta = meta
    dicomdir.FileSetID = "PACS"
    dicomdir.save_as(folder / "DICOMDIR", enforce_file_format=True)
    with caplog.at_level(logging.WARNING, logger="aidnet"):
        assert np.array_equal(read_volume(folder).array, vol.array)
    assert not [r for r in caplog.records if r.name.startswith("aidnet")]  # nothing skipped


@pytest.mark.parametrize("keep", [0.5, -100, 140], ids=["half", "pixels-cut", "meta-cut"])
def test_truncated_file_is_named(tmp_path, keep):
    _, folder = series(tmp_path)
    victim = by_position(folder)[2]
    data = victim.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    victim.write_bytes(data[:size])
    with pytest.raises(AidnetError, match="truncated or corrupt") as err:
        read_volume(folder)
    assert str(err.value).startswith(f"{victim}: ")


def test_missing_slice_says_where(tmp_path):
    _, folder = series(tmp_path)
    by_position(folder)[2].unlink()  # slices at z = 20, 22, (24), 26, 28, 30 mm
    with pytest.raises(AidnetError, match="irregular slice spacing") as err:
        read_volume(folder)
    message = str(err.value)
    assert message.startswith(str(folder))
    assert "4.00 mm between the slices at z = 22.00 and z = 26.00 mm" in message
    assert "2.00 mm apart" in message


def test_duplicate_positions_fail(tmp_path):
    _, folder = series(tmp_path)
    ds = pydicom.dcmread(by_position(folder)[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "copy.dcm")
    with pytest.raises(AidnetError, match="same position z = 26.00 mm"):
        read_volume(folder)


def test_gantry_tilt_fails(tmp_path):
    _, folder = series(tmp_path)

    def shear(ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (z - 30) * np.tan(np.radians(15)), z]

    edit(folder, shear)
    with pytest.raises(AidnetError, match="gantry tilt of 15.0°"):
        read_volume(folder)


def test_mr_series_fails(tmp_path):
    _, folder = series(tmp_path)
    edit(folder, lambda ds: setattr(ds, "Modality", "MR"))
    with pytest.raises(AidnetError, match="not a CT series \\(modality MR\\)"):
        read_volume(folder)


def test_coronal_only_fails(tmp_path):
    _, folder = series(tmp_path)
    edit(folder, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]))
    with pytest.raises(AidnetError, match="no axial CT stack"):
        read_volume(folder)


def test_signed_pixels_and_float_slope(tmp_path):
    _, folder = series(tmp_path)
    stored = {}

    def signed(ds):
        values = (np.arange(256, dtype=np.int16).reshape(16, 16) - 128) * 16
        values += int(ds.InstanceNumber)
        stored[float(ds.ImagePositionPatient[2])] = values
        ds.PixelRepresentation = 1
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-1000.25"
        ds.PixelData = values.tobytes()

    edit(folder, signed)
    back = read_volume(folder)
    for k, z in enumerate(sorted(stored, reverse=True)):  # canonical z: head → feet
        assert np.array_equal(back.array[k], stored[z].astype(np.float32) * 0.5 - 1000.25)
    assert back.array.min() < -1000


def _gdcm_encode(compressor):
    """Re-encode one dataset's pixels with SimpleITK's GDCM (JPEG Lossless or JPEG 2000)."""
    import SimpleITK as sitk

    def change(ds):
        image = sitk.GetImageFromArray(ds.pixel_array[None])
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
        scratch = Path(ds.filename).with_suffix(".enc")
        writer.SetFileName(str(scratch))
        writer.Execute(image)
        encoded = pydicom.dcmread(scratch)
        scratch.unlink()
        assert (encoded.BitsStored, encoded.PixelRepresentation) == (16, 0)
        ds.file_meta.TransferSyntaxUID = encoded.file_meta.TransferSyntaxUID
        ds.PixelData = encoded.PixelData
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    return change


def _rle(ds):
    ds.compress(pydicom.uid.RLELossless)


@pytest.mark.parametrize(
    ("change", "syntax"),
    [
        (_rle, pydicom.uid.RLELossless),
        (_gdcm_encode("JPEG"), pydicom.uid.JPEGLosslessSV1),
        (_gdcm_encode("JPEG2000"), pydicom.uid.JPEG2000Lossless),
    ],
    ids=["rle", "jpeg-lossless", "jpeg2000"],
)
def test_compressed_series_reads_the_same_hu(tmp_path, change, syntax):
    vol, folder = series(tmp_path)
    edit(folder, change)
    assert all(pydicom.dcmread(f).file_meta.TransferSyntaxUID == syntax for f in folder.iterdir())
    assert np.array_equal(read_volume(folder).array, vol.array)


def test_corrupt_compressed_pixels_name_the_file(tmp_path):
    _, folder = series(tmp_path)
    edit(folder, _gdcm_encode("JPEG"))
    victim = by_position(folder)[1]
    ds = pydicom.dcmread(victim)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xc3" + bytes(20)])
    ds.save_as(victim)
    with pytest.raises(AidnetError, match="cannot decode pixel data") as err:
        read_volume(folder)
    assert str(err.value).startswith(f"{victim}: ")


def test_single_file_asks_for_the_folder(tmp_path):
    _, folder = series(tmp_path)
    one = next(folder.iterdir())
    with pytest.raises(AidnetError, match="give the folder"):
        read_volume(one)


def to_enhanced(folder, target, order=None, change_frame=None):
    """The slices of ``folder`` as ONE enhanced (multi-frame) CT file in ``target``: geometry and
    rescale in the functional groups only, frames stored in ``order`` (default: by position)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    slices = [pydicom.dcmread(f) for f in by_position(folder)]
    order = list(range(len(slices))) if order is None else order
    ds = copy.deepcopy(slices[0])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    for keyword in (
        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
        "RescaleIntercept", "RescaleType", "SliceLocation", "InstanceNumber",
    ):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    ds.NumberOfFrames = len(order)

    def group(**items):
        item = Dataset()
        for name, (inner, value) in items.items():
            sub = Dataset()
            setattr(sub, inner, value)
            setattr(item, name, Sequence([sub]))
        return item

    first = slices[0]
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            group(
                PlaneOrientationSequence=("ImageOrientationPatient", first.ImageOrientationPatient),
                PixelMeasuresSequence=("PixelSpacing", first.PixelSpacing),
            )
        ]
    )
    frames = []
    for k in order:
        item = group(PlanePositionSequence=("ImagePositionPatient", slices[k].ImagePositionPatient))
        transform = Dataset()
        transform.RescaleSlope = slices[k].RescaleSlope
        transform.RescaleIntercept = slices[k].RescaleIntercept
        item.PixelValueTransformationSequence = Sequence([transform])
        stored = slices[k].pixel_array
        if change_frame is not None:
            stored = change_frame(item, stored)
        frames.append(stored)
        ds.setdefault("PerFrameFunctionalGroupsSequence", Sequence()).value.append(item)
    ds.PixelData = np.stack(frames).astype(slices[0].pixel_array.dtype).tobytes()
    target.mkdir()
    ds.save_as(target / "enhanced.dcm", enforce_file_format=True)
    return target


def test_enhanced_multiframe_ct_reads_like_its_slices(tmp_path):
    _, folder = series(tmp_path, slices=7)
    classic = read_volume(folder)
    # frames stored out of order: the position, not the frame number, places them
    enhanced = read_volume(to_enhanced(folder, tmp_path / "enh", order=[3, 0, 6, 1, 5, 2, 4]))
    assert np.array_equal(enhanced.array, classic.array)
    assert np.allclose(enhanced.affine, SERIES_AFFINE, atol=1e-3)  # the classic slices' tags
    assert enhanced.source == classic.source
    # the file itself holds the whole series, so it may be named instead of its folder
    assert np.array_equal(read_volume(tmp_path / "enh" / "enhanced.dcm").array, classic.array)


def test_enhanced_ct_uses_each_frames_own_rescale(tmp_path):
    _, folder = series(tmp_path)
    classic = read_volume(folder)

    def own_intercept(item, stored):  # each frame its own intercept, the same HU
        shift = 10 * (round(float(item.PlanePositionSequence[0].ImagePositionPatient[2])) % 7) + 3
        item.PixelValueTransformationSequence[0].RescaleIntercept = str(-1024 - shift)
        return stored.astype(np.int32) + shift

    read = read_volume(to_enhanced(folder, tmp_path / "enh", change_frame=own_intercept))
    assert np.array_equal(read.array, classic.array)


def test_enhanced_ct_without_frame_positions_fails(tmp_path):
    _, folder = series(tmp_path)
    enh = to_enhanced(folder, tmp_path / "enh")
    ds = pydicom.dcmread(enh / "enhanced.dcm")
    del ds.PerFrameFunctionalGroupsSequence[-1]
    ds.save_as(enh / "enhanced.dcm")
    with pytest.raises(AidnetError, match=r"enhanced\.dcm: multi-frame image of 6 frames with 5"):
        read_volume(enh)


def test_duplicate_frames_are_named_by_frame(tmp_path):
    _, folder = series(tmp_path)
    with pytest.raises(AidnetError, match=r"enhanced\.dcm frame \d and enhanced\.dcm frame \d"):
        read_volume(to_enhanced(folder, tmp_path / "enh", order=[0, 1, 2, 3, 4, 4]))


def test_multiframe_capture_beside_the_series_is_skipped(tmp_path):
    _, folder = series(tmp_path)
    alone = read_volume(folder)
    capture = pydicom.dcmread(next(folder.iterdir()))
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        delattr(capture, keyword)
    capture.SeriesInstanceUID = "1.2.3.4"
    capture.NumberOfFrames = 2
    capture.PixelData = capture.PixelData * 2
    capture.save_as(folder / "cine.dcm")
    assert np.array_equal(read_volume(folder).array, alone.array)
