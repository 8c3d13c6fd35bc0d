"""NRRD and MHA/MHD through SimpleITK (LPS physical space converted to our RAS affine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aidnet.errors import AidnetError
from aidnet.io.nifti import check_3d
from aidnet.io.orient import reorient_with_grid, spacing_of
from aidnet.io.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def read_itk(path: Path) -> Volume:
    """Read an NRRD or MHA/MHD file as a canonical float32 :class:`Volume`."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    components = img.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise AidnetError(
            f"{path}: {components} values per voxel (a vector or colour image); "
            "aidnet needs a grey-value CT volume"
        )
    size = tuple(int(n) for n in img.GetSize())  # (i, j, k, ...)
    check_3d(path, size)
    if len(size) > 3:  # trailing singleton axes
        img = sitk.Extract(img, [*size[:3], *([0] * (len(size) - 3))], [0] * len(size))
    # a view of the image's buffer, (k, j, i): converted and reoriented in one copy below
    view = sitk.GetArrayViewFromImage(img)
    array, affine, grid = reorient_with_grid(view, itk_affine(img), dtype=np.float32)
    return Volume(array=array, spacing=spacing_of(affine), affine=affine, source=grid)


def itk_affine(img: Any) -> np.ndarray:
    """RAS affine of a 3-D SimpleITK image for its (k, j, i) array (``GetArrayFromImage``)."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = (direction * spacing)[:, ::-1]  # columns in (k, j, i) order
    lps[:3, 3] = img.GetOrigin()
    ras = lps.copy()
    ras[:3, :] = LPS_TO_RAS @ lps[:3, :]
    return ras
