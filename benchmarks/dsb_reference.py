"""A reference for the preprocessing benchmark: the DSB2017 step-1 recipe done the usual way.

Written from the published description (not their code), the way research pipelines run it:
slice by slice at full resolution — per-slice Gaussian smoothing and thresholding at −600 HU,
per-slice removal of air touching the border, 3-D components filtered by volume, per-slice hole
filling, per-slice convex hull, then ten 6-connected binary dilations at full resolution. It
exists only to give ``aidnet.preprocess`` a same-process yardstick (``ratio_to_dsb_style``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image


def dsb_style_mask(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Dilated lung convex-hull mask (Z, Y, X) of ``hu``, full resolution throughout."""
    sz, sy, sx = spacing
    air = np.zeros(hu.shape, dtype=bool)
    for z in range(hu.shape[0]):
        smooth = ndimage.gaussian_filter(hu[z].astype(np.float32), sigma=1.0 / sy, truncate=2.0)
        labels, _ = ndimage.label(smooth < -600)
        border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        air[z] = (labels > 0) & ~np.isin(labels, border)
    labels, n = ndimage.label(air)
    voxel_l = sz * sy * sx / 1e6
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_l
    keep = (sizes > 0.68) & (sizes < 7.5)
    keep[0] = False
    lungs = keep[labels]
    hull = np.zeros_like(lungs)
    for z in range(lungs.shape[0]):
        if lungs[z].any():
            filled = ndimage.binary_fill_holes(lungs[z])
            convex = convex_hull_image(filled)
            hull[z] = convex if convex.sum() < 2.0 * filled.sum() else filled
    return ndimage.binary_dilation(
        hull, structure=ndimage.generate_binary_structure(3, 1), iterations=10
    )
