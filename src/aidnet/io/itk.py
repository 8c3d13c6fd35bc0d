"""NRRD and MHA/MHD through SimpleITK (LPS physical space converted to our RAS affine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aidnet.io.orient import reorient_canonical, spacing_of
from aidnet.io.volume import Volume


def read_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, found {img.GetDimension()}-D")
    array = sitk.GetArrayFromImage(img).astype(np.float32)  # (k, j, i)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = (direction * spacing)[:, ::-1]  # columns in (k, j, i) order
    lps[:3, 3] = img.GetOrigin()
    ras = lps.copy()
    ras[:3, :] = np.diag([-1.0, -1.0, 1.0]) @ lps[:3, :]
    array, affine = reorient_canonical(array, ras)
    return Volume(array=array, spacing=spacing_of(affine), affine=affine)
