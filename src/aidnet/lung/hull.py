"""The dilated per-slice convex hull of the lungs (the region AID-Net looks at, paper §2.1)."""

from __future__ import annotations

import numpy as np


def slice_hulls(mask: np.ndarray, max_ratio: float = 2.0) -> np.ndarray:
    """Per axial slice, the convex hull of the mask (both lungs together, so it holds the
    mediastinum and the heart).

    DSB2017 keeps a slice's hull only where it is less than ``max_ratio`` times the mask's area,
    so that a thin crescent at the apex or the base does not swallow the neck or the abdomen. A
    rejected slice here takes its hull clipped to the nearest accepted slice's hull instead of the
    bare mask: at the lower heart the lungs shrink to crescents around a large heart, and the
    bare mask would blank the heart (and its calcium) from the network input.
    """
    from skimage.morphology import convex_hull_image  # slow to import: only where it is used

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


def city_block_distance(
    mask: np.ndarray, steps: tuple[float, float, float] = (1.0, 1.0, 1.0), limit: float = np.inf
) -> np.ndarray:
    """float32 distance of every voxel to ``mask`` along 6-connected paths where one step
    along axis ``a`` costs ``steps[a]`` (exact: separable 1-D passes); values above ``limit``
    are clipped to just above it."""
    cap = np.float32(min(limit + 1.0, 3.0e38))
    dist = np.where(mask, np.float32(0.0), cap).astype(np.float32)
    for axis, step in enumerate(steps):
        d = np.moveaxis(dist, axis, 0)  # a view: the passes write into ``dist``
        w = np.float32(step)
        for i in range(1, d.shape[0]):
            np.minimum(d[i], d[i - 1] + w, out=d[i])
        for i in range(d.shape[0] - 2, -1, -1):
            np.minimum(d[i], d[i + 1] + w, out=d[i])
    return dist


def lung_hull(
    mask: np.ndarray, dilation_iterations: int = 10, steps: tuple[int, int, int] = (1, 1, 1)
) -> np.ndarray:
    """Boolean (Z, Y, X): per-slice convex hull of ``mask`` (nonzero = lung), dilated in 3-D.

    The dilation is DSB2017's: ``dilation_iterations`` 6-connected steps on the scan's own grid.
    When ``mask`` lies on a coarser working grid, ``steps`` gives the scan voxels per working
    voxel along (z, y, x), so the margin stays that of the scan's grid (about 7 mm in-plane
    and 10–25 mm across slices on a typical chest CT), whatever the working resolution.
    """
    hull = slice_hulls(mask)
    if dilation_iterations <= 0 or not hull.any():
        return hull
    steps_f = tuple(float(s) for s in steps)
    distance = city_block_distance(hull, steps_f, limit=float(dilation_iterations))  # type: ignore[arg-type]
    return distance <= dilation_iterations
