"""The dilated per-slice convex hull of the lungs (the region AID-Net looks at, paper §2.1)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image


def slice_hulls(mask: np.ndarray, max_ratio: float = 2.0) -> np.ndarray:
    """Per axial slice, the convex hull of the mask, or the mask itself where the hull is at
    least ``max_ratio`` times larger (a thin crescent whose hull would swallow the abdomen)."""
    mask = np.asarray(mask) != 0
    out = mask.copy()
    if not mask.any():
        return out
    ys, xs = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    rows, cols = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
    areas = mask.sum(axis=(1, 2))
    for z in np.flatnonzero(areas):
        hull = convex_hull_image(mask[z, rows, cols])
        if hull.sum() < max_ratio * areas[z]:
            out[z, rows, cols] |= hull
    return out


def lung_hull(mask: np.ndarray, dilation_iterations: int = 10) -> np.ndarray:
    """Boolean (Z, Y, X): per-slice convex hull of ``mask`` (nonzero = lung), dilated in 3-D.

    The dilation repeats a 6-connected structuring element ``dilation_iterations`` times on the
    grid of ``mask``, i.e. it keeps every voxel within city-block distance ``dilation_iterations``
    of the hull (computed in one pass).
    """
    hull = slice_hulls(mask)
    if dilation_iterations <= 0 or not hull.any():
        return hull
    distance = ndimage.distance_transform_cdt(~hull, metric="taxicab")
    return distance <= dilation_iterations
