"""NIfTI reading and writing (nibabel), converting to and from the canonical (z, y, x) layout."""

from __future__ import annotations

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
    """Write a (z, y, x) array with its (z, y, x) affine as NIfTI, atomically.

    The array's dtype is kept (use int16 for HU, uint8 for label maps, float32 for heat maps).
    A ``.nii.gz`` is compressed at gzip level 1 (nibabel's default), the fastest: higher levels
    make a label map smaller but take several times longer to write.
    """
    import nibabel as nib

    path = Path(path)
    # NIfTI stores (i, j, k) in Fortran order: the transposed view of a C-ordered (z, y, x)
    # array is already that order, so nibabel writes it without copying
    ijk, aff = nifti_layout(array, affine)
    img = nib.Nifti1Image(ijk, aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path


def write_volume(volume: Volume, path: Path | str) -> Path:
    """Write a :class:`Volume` as NIfTI with its own dtype and affine."""
    return write_nifti(volume.array, volume.affine, path)
