"""The dilated per-slice convex hull of the lungs (the region AID-Net looks at, paper §2.1)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image


def slice_hulls(mask: np.ndarray, max_ratio: float = 2.0) -> np.ndarray:
    """Per axial slice, the convex hull of the mask (both lungs together, so it holds the
    mediastinum and the heart).

    DSB2017 keeps a slice's hull only where it is less than ``max_ratio`` times the mask's area,
    so that a thin crescent at the apex or the base does not swallow the neck or the abdomen. A
    rejected slice here takes its hull clipped to the nearest accepted slice's hull instead of the
    bare mask: at the lower heart the lungs shrink to crescents around a large heart, and the
    bare mask would blank the heart (and its calcium) from the network input.
    """
    mask = np.asarray(mask) != 0
    out = mask.copy()
    if not mask.any():
        return out
    ys, xs = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    rows, cols = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
    areas = mask.sum(axis=(1, 2))
    hulls = {int(z): convex_hull_image(mask[z, rows, cols]) for z in np.flatnonzero(areas)}
    kept = {z for z, hull in hulls.items() if hull.sum() < max_ratio * areas[z]}
    for z, hull in hulls.items():
        if z not in kept:
            if not kept:
                continue
            hull = hull & hulls[min(kept, key=lambda k: (abs(k - z), k))]
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
