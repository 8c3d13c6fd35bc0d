"""Writing a :class:`Volume` as a DICOM CT series (used by the phantom generator and tests)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from aidnet.atomic import umask
from aidnet.io.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


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
