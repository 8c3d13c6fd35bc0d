"""Decoding one DICOM slice to Hounsfield units, compressed transfer syntaxes included.

pydicom decodes native, RLE and (through Pillow) JPEG 2000 data itself; for syntaxes it has no
installed plugin for (JPEG Lossless, JPEG-LS …) the file is decoded by SimpleITK's GDCM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aidnet.errors import AidnetError
from aidnet.io.dicom_files import reason


def slice_hu(path: Path, rows: int, columns: int) -> np.ndarray:
    """HU (float32, rows × columns) of the single-frame image in ``path``."""
    ds, syntax = _read(path)
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise AidnetError(f"{path}: a multi-frame image where one slice was expected")
    compressed = syntax is not None and syntax.is_transfer_syntax and syntax.is_compressed
    use_gdcm = compressed and not _pydicom_can_decode(syntax)
    try:
        hu = _gdcm_hu(path) if use_gdcm else _pydicom_hu(ds)
    except Exception as exc:  # decoders raise many types for broken data
        # pydicom's plugin may fail on a file GDCM reads; a broken file fails both
        retry = _gdcm_or_none(path) if compressed and not use_gdcm else None
        if retry is None:
            name = f" ({syntax.name})" if compressed else ""
            raise AidnetError(f"{path}: cannot decode pixel data{name}: {reason(exc)}") from None
        hu = retry
    if hu.shape != (rows, columns):
        raise AidnetError(
            f"{path}: pixel data of shape {hu.shape}, expected one {rows}×{columns} grey image"
        )
    return hu


def frames_hu(path: Path, frames: list[Any], rows: int, columns: int) -> np.ndarray:
    """HU (float32, len(frames) × rows × columns) of the given frames of the multi-frame image in
    ``path``, each rescaled with its own RescaleSlope/RescaleIntercept (see
    :func:`aidnet.io.dicom_frames.frame_headers`). The file is decoded once."""
    ds, syntax = _read(path)
    compressed = syntax is not None and syntax.is_transfer_syntax and syntax.is_compressed
    if compressed and not _pydicom_can_decode(syntax):
        raise AidnetError(
            f"{path}: cannot decode multi-frame pixel data compressed as {syntax.name}; "
            "decompress the file first (e.g. gdcmconv --raw IN OUT)"
        )
    try:
        stored = ds.pixel_array
    except Exception as exc:  # decoders raise many types for broken data
        raise AidnetError(f"{path}: cannot decode pixel data: {reason(exc)}") from None
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if stored.shape != (n, rows, columns):
        raise AidnetError(
            f"{path}: pixel data of shape {stored.shape}, expected {n} frames of {rows}×{columns}"
        )
    out = np.empty((len(frames), rows, columns), dtype=np.float32)
    for k, frame in enumerate(frames):
        out[k] = _rescaled(stored[frame.frame], frame)
    return out


def _read(path: Path) -> tuple[Any, Any]:
    """The whole dataset in ``path`` and its transfer syntax (None when not given)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        return ds, ds.file_meta.get("TransferSyntaxUID")
    except Exception as exc:  # pydicom raises many types for broken files
        raise AidnetError(f"{path}: corrupt DICOM file ({reason(exc)})") from None


def _rescaled(stored: np.ndarray, header: Any) -> np.ndarray:
    """Stored values → HU with the header's RescaleSlope/RescaleIntercept (float32)."""
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def _pydicom_can_decode(syntax: Any) -> bool:
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


def _pydicom_hu(ds: Any) -> np.ndarray:
    return _rescaled(ds.pixel_array, ds)


def _gdcm_or_none(path: Path) -> np.ndarray | None:
    try:
        return _gdcm_hu(path)
    except Exception:  # SimpleITK raises RuntimeError; anything else is a failure too
        return None


def _gdcm_hu(path: Path) -> np.ndarray:
    """Decode with SimpleITK (GDCM), which applies RescaleSlope/Intercept itself."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path), imageIO="GDCMImageIO"))
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    return np.asarray(array, dtype=np.float32)
