"""Right and left lung masks of a chest CT (DSB2017 step 1 as used by AID-Net, paper §2.1)."""

from __future__ import annotations

import numpy as np

from aidnet.errors import AidnetError
from aidnet.io.volume import Volume
from aidnet.lung.components import (
    AIR_HU,
    body_axis,
    inner_air,
    remove_trachea,
    select_lungs,
    smooth_hu,
)
from aidnet.lung.grid import block_mean, upsample_nearest, working_factors
from aidnet.lung.split import LEFT, RIGHT, fill_holes_per_slice, split_lungs


def check_finite(array: np.ndarray) -> None:
    """Raise AidnetError for NaN voxels (integer arrays cannot hold any)."""
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise AidnetError("image contains NaN values")


def segment_working(volume: Volume) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Lung labels on the coarse working grid (~2 mm voxels) and its block factors."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise AidnetError(f"expected a 3-D volume, got an array of shape {array.shape}")
    check_finite(array)
    factors = working_factors(volume.spacing, array.shape)
    sz, sy, sx = (float(s) * f for s, f in zip(volume.spacing, factors, strict=True))
    spacing = (sz, sy, sx)
    hu = smooth_hu(block_mean(array, factors), spacing)
    axis_y, axis_x = body_axis(hu)
    candidates = select_lungs(inner_air(hu < AIR_HU), spacing, (axis_y, axis_x))
    candidates = remove_trachea(candidates, spacing, axis_x)
    if not candidates.any():
        raise AidnetError(
            "no lungs found: no enclosed air region of lung-like volume (0.2–10 L) near the "
            "body's centre; is this a non-contrast chest CT in Hounsfield units?"
        )
    parts = split_lungs(candidates, spacing, axis_x)
    labels = np.zeros(parts.shape, dtype=np.uint8)
    for side in (RIGHT, LEFT):
        labels[fill_holes_per_slice(parts == side)] = side
    return labels, factors


def segment_lungs(volume: Volume) -> np.ndarray:
    """uint8 mask on the volume's grid: 0 background, 1 right lung, 2 left lung.

    Follows DSB2017 step 1 (lfz/DSB2017) on a ~2 mm working grid: Gaussian-smoothed (σ = 1 mm)
    threshold at −600 HU; air connected to the image border within its slice removed; 3-D
    components of 0.2–10 L near the body axis kept; the airway above the lungs dropped; a joined
    pair split by erosion (or at the midline); holes filled per slice; mapped back with nearest
    neighbour. The right lung is the one at smaller x (x runs patient right → left).

    Raises AidnetError when the image holds NaN or when no lungs are found.
    """
    labels, factors = segment_working(volume)
    return upsample_nearest(labels, volume.shape, factors)
