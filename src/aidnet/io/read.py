"""One entry point for every supported CT format."""

from __future__ import annotations

from pathlib import Path

from aidnet.errors import AidnetError
from aidnet.io.volume import Volume, all_finite

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def read_volume(path: Path | str) -> Volume:
    """Read a DICOM series folder (or an enhanced multi-frame CT file), NIfTI, NRRD or MHA/MHD
    file as a canonical HU volume.

    Every failure is an :class:`AidnetError` naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise AidnetError(f"{path}: file not found")
    if path.is_dir():
        from aidnet.io.dicom import read_dicom_series

        try:
            volume = read_dicom_series(path)
        except AidnetError:
            raise
        except Exception as exc:  # a DICOM header we did not foresee
            raise AidnetError(f"{path}: cannot read this DICOM series ({_reason(exc)})") from None
    else:
        name = path.name.lower()
        if path.stat().st_size == 0:
            raise AidnetError(f"{path}: file is empty")
        try:
            if name.endswith(NIFTI_SUFFIXES):
                from aidnet.io.nifti import read_nifti

                volume = read_nifti(path)
            elif name.endswith(ITK_SUFFIXES):
                from aidnet.io.itk import read_itk

                volume = read_itk(path)
            elif name.endswith(".dcm") or _has_dicom_preamble(path):
                volume = _single_dicom_file(path)
            else:
                raise AidnetError(
                    f"{path}: unsupported file type (expected a DICOM folder, .nii, .nii.gz, "
                    ".nrrd, .mha or .mhd)"
                )
        except AidnetError:
            raise
        except Exception as exc:  # readers raise many exception types for broken files
            raise AidnetError(f"{path}: not a readable image ({_reason(exc)})") from None
    if not all_finite(volume.array):
        raise AidnetError(f"{path}: image contains NaN or infinite values")
    return volume


def _single_dicom_file(path: Path) -> Volume:
    """An enhanced (multi-frame) CT file holds a whole series; one slice file does not."""
    from aidnet.io.dicom import read_dicom_series
    from aidnet.io.dicom_files import read_header
    from aidnet.io.dicom_frames import number_of_frames

    ds = read_header(path)
    if ds is None or number_of_frames(ds) < 2:
        raise AidnetError(
            f"{path}: a single DICOM file; give the folder that holds the whole series"
        )
    return read_dicom_series(path)


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as fp:
        return fp.read(132)[128:] == b"DICM"


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
