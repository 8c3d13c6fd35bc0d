"""NIfTI reading (nibabel) and writing (a NIfTI-1 writer of our own, which needs no import
beyond numpy), converting to and from the canonical (z, y, x) layout."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from aidnet.atomic import atomic_path
from aidnet.errors import AidnetError
from aidnet.io.orient import reorient_with_grid, spacing_of
from aidnet.io.volume import Volume

# A NIfTI array is indexed (i, j, k) = our (x, y, z): swap columns 0 and 2 of the affine.
_SWAP = [2, 1, 0, 3]


def read_nifti(path: Path) -> Volume:
    """Read a NIfTI file as a canonical float32 :class:`Volume` (scl_slope/inter applied)."""
    import nibabel as nib

    img: Any = nib.load(str(path))
    shape = tuple(int(n) for n in img.shape)
    check_3d(path, shape)
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape[:3])
    affine = np.asarray(img.affine, dtype=np.float64)[:, _SWAP]
    array, affine, grid = reorient_with_grid(np.transpose(data, (2, 1, 0)), affine)
    return Volume(array=array, spacing=spacing_of(affine), affine=affine, source=grid)


def check_3d(path: Path, shape: tuple[int, ...]) -> None:
    """Raise AidnetError unless ``shape`` is a 3-D volume (trailing singleton axes allowed)."""
    text = "×".join(str(n) for n in shape)
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise AidnetError(
            f"{path}: a {len(shape)}-D image of shape {text} (several volumes); "
            "aidnet needs one 3-D CT volume"
        )
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise AidnetError(f"{path}: a 2-D image of shape {text}; aidnet needs a 3-D CT volume")


def nifti_layout(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (z, y, x) array and its (z, y, x) affine → the (i, j, k) array view and affine a NIfTI
    file holds (what nibabel's ``get_fdata()`` and ``affine`` give back)."""
    return np.transpose(array, (2, 1, 0)), np.asarray(affine, dtype=np.float64)[:, _SWAP]


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path | str) -> Path:
    """Write a (z, y, x) array with its (z, y, x) affine as NIfTI-1, atomically.

    The array's dtype is kept (use int16 for HU, uint8 for label maps, float32 for heat maps;
    bool is stored as uint8). Both the sform and the qform hold the affine (code 1, scanner),
    units are mm. A ``.nii.gz`` is compressed at gzip level 1, the fastest: higher levels make
    a label map smaller but take several times longer to write.
    """
    path = Path(path)
    data = np.asarray(array)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    code = _NIFTI_DTYPES.get(data.dtype.newbyteorder("=").str[1:])
    if data.ndim != 3 or code is None:
        raise ValueError(f"cannot write a {data.ndim}-D {data.dtype} array as a NIfTI volume")
    # NIfTI stores (i, j, k) in Fortran order, which is the C order of our (z, y, x) array
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    header = nifti1_header(
        data.shape[::-1], code, data.dtype.itemsize, nifti_layout(data, affine)[1]
    )
    gz = path.name.endswith(".gz")
    with atomic_path(path, suffix=".nii.gz" if gz else path.suffix) as tmp, open(tmp, "wb") as raw:
        out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) if gz else raw
        out.write(header)
        out.write(data.reshape(-1).view(np.uint8).data)
        if gz:
            out.close()
    return path


#: NIfTI-1 datatype codes by numpy type (native byte order)
_NIFTI_DTYPES = {
    "u1": 2,
    "i2": 4,
    "i4": 8,
    "f4": 16,
    "f8": 64,
    "i1": 256,
    "u2": 512,
    "u4": 768,
    "i8": 1024,
    "u8": 1280,
}


def nifti1_header(
    shape_ijk: tuple[int, ...], datatype: int, itemsize: int, affine_ijk: np.ndarray
) -> bytes:
    """The 352 bytes before a single-file NIfTI-1 image's data: the 348-byte header, little
    endian, and an empty extension flag. ``affine_ijk`` maps (i, j, k, 1) to RAS+ mm."""
    affine = np.asarray(affine_ijk, dtype=np.float64)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    quaternion, qfac = _quaternion(affine[:3, :3] / np.where(zooms > 0, zooms, 1.0))
    dim = [3, *shape_ijk, 1, 1, 1, 1]
    pixdim = [qfac, *zooms, 1.0, 1.0, 1.0, 1.0]
    parts = [
        struct.pack("<i10s18sihcB", 348, b"", b"", 0, 0, b"r", 0),
        struct.pack("<8h", *dim),
        struct.pack("<3f4h", 0.0, 0.0, 0.0, 0, datatype, 8 * itemsize, 0),
        struct.pack("<8f", *pixdim),
        struct.pack("<3fhBB", 352.0, math.nan, math.nan, 0, 0, 2),  # offset, no scaling, mm
        struct.pack("<4f2i", 0.0, 0.0, 0.0, 0.0, 0, 0),
        struct.pack("<80s24s2h", b"", b"", 1, 1),  # qform and sform: scanner
        struct.pack("<6f", *quaternion, *affine[:3, 3]),
        struct.pack("<12f", *affine[:3, :4].reshape(-1)),
        struct.pack("<16s4s4x", b"", b"n+1"),
    ]
    header = b"".join(parts)
    assert len(header) == 352
    return header


def _quaternion(rotation: np.ndarray) -> tuple[tuple[float, float, float], float]:
    """(b, c, d) of the NIfTI qform quaternion (a ≥ 0 implied) and qfac (±1) of a 3×3 matrix
    with unit columns; a sheared matrix is replaced by its nearest rotation (polar part)."""
    u, _, vt = np.linalg.svd(rotation)
    r = u @ vt
    qfac = 1.0
    if np.linalg.det(r) < 0:  # a left-handed grid: NIfTI flips k through qfac
        qfac = -1.0
        r[:, 2] = -r[:, 2]
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > -0.5:
        a = 0.5 * math.sqrt(trace + 1.0)
        b, c, d = (
            (r[2, 1] - r[1, 2]) / (4 * a),
            (r[0, 2] - r[2, 0]) / (4 * a),
            (r[1, 0] - r[0, 1]) / (4 * a),
        )
    elif r[0, 0] >= r[1, 1] and r[0, 0] >= r[2, 2]:
        b = 0.5 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        c, d, a = (
            (r[0, 1] + r[1, 0]) / (4 * b),
            (r[0, 2] + r[2, 0]) / (4 * b),
            (r[2, 1] - r[1, 2]) / (4 * b),
        )
    elif r[1, 1] >= r[2, 2]:
        c = 0.5 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        b, d, a = (
            (r[0, 1] + r[1, 0]) / (4 * c),
            (r[1, 2] + r[2, 1]) / (4 * c),
            (r[0, 2] - r[2, 0]) / (4 * c),
        )
    else:
        d = 0.5 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        b, c, a = (
            (r[0, 2] + r[2, 0]) / (4 * d),
            (r[1, 2] + r[2, 1]) / (4 * d),
            (r[1, 0] - r[0, 1]) / (4 * d),
        )
    if a < 0:
        b, c, d = -b, -c, -d
    return (float(b), float(c), float(d)), qfac


def write_volume(volume: Volume, path: Path | str) -> Path:
    """Write a :class:`Volume` as NIfTI with its own dtype and affine."""
    return write_nifti(volume.array, volume.affine, path)
