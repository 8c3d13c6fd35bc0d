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
    mask: np.ndarray,
    margin_mm: float = 10.0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Boolean (Z, Y, X): per-slice convex hull of ``mask`` (nonzero = lung), dilated in 3-D.

    The dilation is DSB2017's 6-connected one with its 10 steps counted in millimetres: a voxel
    joins when a 6-connected path of at most ``margin_mm`` reaches the hull, one step along axis
    ``a`` costing ``spacing[a]`` (the mask's voxel size in mm). DSB2017 counted voxels of the
    scan's own grid, so its margin shrank with the pixel size (6 mm in-plane on 0.6 mm pixels,
    16 mm on 1.6 mm) and the same chest gave scanners different regions.
    """
    hull = slice_hulls(mask)
    if margin_mm <= 0 or not hull.any():
        return hull
    steps = tuple(float(s) for s in spacing)
    distance = city_block_distance(hull, steps, limit=float(margin_mm))  # type: ignore[arg-type]
    return distance <= margin_mm
