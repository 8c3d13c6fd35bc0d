"""Refuse contrast-enhanced CT: the Agatston score and AID-Net are defined on non-contrast scans.

With iodine in the blood the heart chambers and great vessels pass the 130 HU calcium threshold,
so the calcium channel fills with blood and every prediction would be meaningless. The check
looks where the heart is: the soft tissue between the lungs, on the slices from 40% to 75% of
the lungs' height (apex to base), outside the lungs and inside their per-slice convex hull.
Unenhanced blood, myocardium, vessel walls and muscle all measure about 30–70 HU, so the most
common value of that tissue lies there; an iodine-enhanced blood pool (about 150 HU in the
venous phase, 250–500 HU in the arterial phase) moves it well above. Fat (below 0 HU) and
bone or calcium above 600 HU are left out; what bone lies between 0 and 600 HU is spread over
that range and does not make the most common value.
"""

from __future__ import annotations

import numpy as np

from aidnet.errors import AidnetError
from aidnet.lung.hull import slice_hulls

#: The most common soft-tissue value between the lungs above which a scan is refused: unenhanced
#: tissue there measures about 30–70 HU, an enhanced blood pool 150 HU and more.
ENHANCED_HU = 100.0
#: The heart's slices, as fractions of the lungs' height from the apex.
HEART_SLAB = (0.40, 0.75)
#: Below this much soft tissue (mL) between the lungs the check says nothing.
MIN_TISSUE_ML = 20.0

_BIN_HU = 5.0
_RANGE_HU = (0.0, 600.0)


def soft_tissue_mode_hu(
    hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]
) -> float | None:
    """The most common value (HU) of the soft tissue between the lungs on the heart's slices.

    ``hu`` and ``lungs`` (nonzero = lung) share one canonical grid (z from head to feet) of
    ``spacing`` mm; a coarse working grid (2–2.5 mm) is enough and smooths the noise. None when
    there is too little such tissue to tell (under :data:`MIN_TISSUE_ML`).
    """
    lung = np.asarray(lungs) != 0
    rows = np.flatnonzero(lung.any(axis=(1, 2)))
    if rows.size == 0:
        return None
    height = int(rows[-1] - rows[0] + 1)
    z0 = int(rows[0] + np.floor(HEART_SLAB[0] * height))
    z1 = int(rows[0] + np.ceil(HEART_SLAB[1] * height))
    # hulls of all slices first: a slab of crescents around a large heart borrows its hull from
    # the nearest slice that has one (see slice_hulls)
    between = slice_hulls(lung)[z0:z1] & ~lung[z0:z1]
    values = np.asarray(hu[z0:z1], dtype=np.float32)[between]
    values = values[(values >= _RANGE_HU[0]) & (values <= _RANGE_HU[1])]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if values.size * voxel_ml < MIN_TISSUE_ML:
        return None
    bins = int(round((_RANGE_HU[1] - _RANGE_HU[0]) / _BIN_HU))
    counts, _ = np.histogram(values, bins=bins, range=_RANGE_HU)
    # a 3-bin (15 HU) running mean: noise does not split the peak
    smooth = np.convolve(counts.astype(np.float64), np.ones(3) / 3.0, mode="same")
    return float(_RANGE_HU[0] + (int(np.argmax(smooth)) + 0.5) * _BIN_HU)


def check_unenhanced(
    hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]
) -> float | None:
    """:func:`soft_tissue_mode_hu`, or AidnetError when it says the scan is contrast-enhanced."""
    mode = soft_tissue_mode_hu(hu, lungs, spacing)
    if mode is not None and mode > ENHANCED_HU:
        raise AidnetError(
            f"looks contrast-enhanced: the soft tissue between the lungs measures {mode:.0f} HU "
            f"(unenhanced blood and myocardium 30–70 HU); the Agatston score and AID-Net need "
            "a non-contrast CT"
        )
    return mode
