"""Right and left lung masks of a chest CT (DSB2017 step 1 as used by AID-Net, paper §2.1)."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from aidnet.errors import AidnetError
from aidnet.io.volume import Volume, all_finite
from aidnet.lung.components import (
    AIR_HU,
    FACES_3D,
    body_axis,
    inner_air,
    remove_trachea,
    select_lungs,
    smooth_hu,
)
from aidnet.lung.grid import block_mean, upsample_nearest, working_factors
from aidnet.lung.split import LEFT, RIGHT, fill_holes_per_slice, split_lungs


def check_finite(array: np.ndarray) -> None:
    """Raise AidnetError for NaN or infinite voxels (integer arrays cannot hold any)."""
    if not all_finite(array):
        raise AidnetError("image contains NaN or infinite values")


def _lung_components(air, spacing, axis_y, axis_x) -> np.ndarray:
    lungs = select_lungs(air, spacing, (axis_y, axis_x))
    return remove_trachea(lungs, spacing, axis_x)


def segment_working(volume: Volume) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Lung labels on the coarse working grid (2–2.5 mm voxels) and its block factors."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise AidnetError(f"expected a 3-D volume, got an array of shape {array.shape}")
    check_finite(array)
    factors = working_factors(volume.spacing, array.shape)
    sz, sy, sx = (float(s) * f for s, f in zip(volume.spacing, factors, strict=True))
    spacing = (sz, sy, sx)
    # padding outside the reconstruction circle (−2000, −3024 …) is air, not something darker
    hu = smooth_hu(np.maximum(block_mean(array, factors), -1024.0), spacing)
    axis_y, axis_x = body_axis(hu)
    inside, cut = inner_air(hu < AIR_HU, hu)
    candidates = _lung_components(inside, spacing, axis_y, axis_x)
    if cut.any():  # the field of view may cut through the lungs (a cardiac scan)
        wider = _lung_components(inside | cut, spacing, axis_y, axis_x)
        if wider.sum() > 1.5 * candidates.sum():
            logging.getLogger("aidnet").warning(
                "the field of view cuts through the lungs (a cardiac scan?): lung-dense air "
                "at the image edge is taken as lung"
            )
            candidates = wider
    if not candidates.any():
        darkest = float(hu.min())
        hint = (
            f" (its darkest region is {darkest:.0f}, where air should be about −1000 HU: were "
            "the values stored without their rescale intercept?)"
            if darkest > AIR_HU
            else ""
        )
        raise AidnetError(
            "no lungs found: no enclosed air region of lung-like volume (0.2–10 L) near the "
            f"body's centre; is this a non-contrast chest CT in Hounsfield units?{hint}"
        )
    parts = split_lungs(candidates, spacing, axis_x)
    labels = np.zeros(parts.shape, dtype=np.uint8)
    for side in (RIGHT, LEFT):
        labels[fill_holes_per_slice(parts == side)] = side
    return labels, factors


def segment_lungs(volume: Volume) -> np.ndarray:
    """uint8 mask on the volume's grid: 0 background, 1 right lung, 2 left lung.

    Follows DSB2017 step 1 (lfz/DSB2017) on a 2–2.5 mm working grid: Gaussian-smoothed (σ = 1 mm)
    threshold at −600 HU; air connected to the image border within its slice removed; 3-D
    components of 0.2–10 L near the body axis kept; the airway above the lungs dropped; a joined
    pair split by erosion (or at the midline); holes filled per slice; mapped back with nearest
    neighbour. The right lung is the one at smaller x (x runs patient right → left).

    Raises AidnetError when the image holds NaN or when no lungs are found.
    """
    labels, factors = segment_working(volume)
    if factors == (1, 1, 1):
        return labels
    return refine_boundary(np.asarray(volume.array), labels, factors)


def refine_boundary(
    hu: np.ndarray, small: np.ndarray, factors: tuple[int, int, int], air_hu: float = AIR_HU
) -> np.ndarray:
    """Full-resolution lung labels from the working-grid labels ``small``.

    Working-grid blocks deep inside a lung stay lung (vessels and nodules included); in a band
    of one working voxel on either side of the coarse boundary, a full-resolution voxel is lung
    when it is below ``air_hu``. This removes the ±1 mm staircase of nearest-neighbour
    upsampling at the cost of one threshold over the lungs' bounding box.
    """
    out = np.zeros(hu.shape, dtype=np.uint8)
    lung = small > 0
    if not lung.any():
        return out
    grown = ndimage.grey_dilation(small, footprint=FACES_3D)
    inner = ndimage.binary_erosion(lung, structure=FACES_3D, border_value=1)
    zs, ys, xs = (np.flatnonzero(grown.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    lo = [int(v[0]) for v in (zs, ys, xs)]
    hi = [int(v[-1]) + 1 for v in (zs, ys, xs)]
    box_small = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    fine_lo = [a * f for a, f in zip(lo, factors, strict=True)]
    fine_hi = [
        n if b == m else b * f
        for b, f, n, m in zip(hi, factors, hu.shape, small.shape, strict=True)
    ]
    box = tuple(slice(a, b) for a, b in zip(fine_lo, fine_hi, strict=True))
    shape = tuple(b - a for a, b in zip(fine_lo, fine_hi, strict=True))
    side = upsample_nearest(grown[box_small], shape, factors)  # type: ignore[arg-type]
    core = upsample_nearest(inner[box_small], shape, factors)  # type: ignore[arg-type]
    keep = core | (hu[box] < air_hu)
    out[box] = np.where(keep, side, 0)
    return out
