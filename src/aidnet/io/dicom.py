"""DICOM CT series: reading a folder into a canonical :class:`Volume`, and writing one.

Slices are ordered by ImagePositionPatient projected on the slice normal — never by file name
or InstanceNumber — and RescaleSlope/RescaleIntercept are applied.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from aidnet.atomic import umask
from aidnet.errors import AidnetError
from aidnet.io.orient import reorient_canonical, spacing_of
from aidnet.io.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _read_headers(folder: Path) -> list:
    import pydicom
    from pydicom.errors import InvalidDicomError

    datasets = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=False)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if "ImagePositionPatient" not in ds or "PixelData" not in ds:
            continue
        ds.filename = str(path)
        datasets.append(ds)
    return datasets


def read_dicom_series(folder: Path) -> Volume:
    """Read the CT series in ``folder`` (the one with most slices if there are several)."""
    datasets = _read_headers(folder)
    if not datasets:
        raise AidnetError(f"{folder}: no DICOM images found in this folder")
    series: dict[str, list] = defaultdict(list)
    for ds in datasets:
        series[str(ds.get("SeriesInstanceUID", "?"))].append(ds)
    ct = {uid: s for uid, s in series.items() if str(s[0].get("Modality", "")).upper() == "CT"}
    if not ct:
        modalities = sorted({str(s[0].get("Modality", "unknown")) for s in series.values()})
        raise AidnetError(f"{folder}: not a CT series (modality {', '.join(modalities)})")
    uid, slices = max(ct.items(), key=lambda item: len(item[1]))
    if len(slices) < 2:
        raise AidnetError(f"{folder}: a CT volume needs at least 2 slices, found {len(slices)}")

    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([np.asarray(s.ImagePositionPatient, dtype=np.float64) for s in slices])
    order = np.argsort(positions @ normal)
    slices = [slices[i] for i in order]
    positions = positions[order]
    steps = np.diff(positions @ normal)
    if np.any(steps <= 1e-3):
        raise AidnetError(f"{folder}: two slices share one position (duplicate slices)")
    if np.max(steps) - np.min(steps) > 0.05 * np.median(steps) + 0.01:
        raise AidnetError(
            f"{folder}: irregular slice spacing ({np.min(steps):.2f}–{np.max(steps):.2f} mm); "
            "a slice may be missing"
        )
    offset = positions[-1] - positions[0]
    if np.linalg.norm(np.cross(offset / np.linalg.norm(offset), normal)) > 1e-3:
        raise AidnetError(f"{folder}: gantry tilt is not supported")

    try:
        array = np.stack(
            [
                s.pixel_array.astype(np.float32) * float(s.get("RescaleSlope", 1.0))
                + float(s.get("RescaleIntercept", 0.0))
                for s in slices
            ]
        )
    except Exception as exc:  # pydicom raises many types for broken pixel data
        raise AidnetError(f"{folder}: cannot decode pixel data ({exc})") from None
    sy, sx = (float(v) for v in slices[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = offset / (len(slices) - 1)
    lps[:3, 1] = col_dir * sy
    lps[:3, 2] = row_dir * sx
    lps[:3, 3] = positions[0]
    ras = lps.copy()
    ras[:3, :] = _LPS_TO_RAS @ lps[:3, :]
    array, affine = reorient_canonical(array, ras)
    return Volume(array=array, spacing=spacing_of(affine), affine=affine)


def write_dicom_series(
    volume: Volume,
    folder: Path | str,
    *,
    patient_name: str,
    patient_id: str,
    seed: int = 0,
    series_description: str = "aidnet phantom",
) -> Path:
    """Write ``volume`` as a CT Image Storage series (one file per slice) into ``folder``.

    Stored values are HU + 1024 with RescaleIntercept −1024; file names are shuffled so that
    readers cannot rely on them. The folder appears complete or not at all.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    uid_seed = [str(seed), patient_id]
    study_uid = generate_uid(entropy_srcs=[*uid_seed, "study"])
    series_uid = generate_uid(entropy_srcs=[*uid_seed, "series"])
    frame_uid = generate_uid(entropy_srcs=[*uid_seed, "frame"])

    ras = np.asarray(volume.affine, dtype=np.float64)
    lps = ras.copy()
    lps[:3, :] = _LPS_TO_RAS @ ras[:3, :]
    sz, sy, sx = volume.spacing
    row_dir = lps[:3, 2] / sx
    col_dir = lps[:3, 1] / sy
    stored = np.clip(np.rint(volume.array) + 1024, 0, 65535).astype(np.uint16)
    nz = stored.shape[0]
    names = rng.permutation(nz)

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        for k in range(nz):
            meta = FileMetaDataset()
            sop_uid = generate_uid(entropy_srcs=[*uid_seed, "sop", str(k)])
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE  # type: ignore[assignment]
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = CT_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = "19600101"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.Modality = "CT"
            ds.SeriesDescription = series_description
            ds.SeriesNumber = 1
            ds.InstanceNumber = k + 1
            position = lps[:3, 3] + lps[:3, 0] * k
            ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
            ds.SliceThickness = f"{sz:.4f}"
            ds.KVP = "120"
            ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            ds.PixelData = stored[k].tobytes()
            ds.save_as(tmp / f"IM{names[k]:05d}.dcm", enforce_file_format=True)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; a series folder is shared data
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder
