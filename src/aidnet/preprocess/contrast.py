"""Refuse contrast-enhanced CT: the Agatston score and AID-Net are defined on non-contrast scans.

With iodine in the blood the heart chambers and great vessels pass the 130 HU calcium threshold,
so the calcium channel fills with blood and every prediction would be meaningless. The check
looks where the heart is: the tissue between the lungs, on the slices from 40% to 75% of the
lungs' height (apex to base), outside the lungs and inside their per-slice convex hull. It runs
on the coarse working grid (2–3 mm voxels) and makes two measurements; either refuses a scan.

1. **The blood pool itself** (:func:`enhanced_regions`, :func:`blood_pool`). An enhanced blood
   pool (about 130–200 HU in the venous phase, 250–500 HU in the arterial phase) is the one large,
   compact, homogeneous thing between the lungs in that range: heart chambers of tens to hundreds
   of mL, an aorta of 2–3 cm. Unenhanced, nothing there lies in that range except bone and
   calcium. So: the voxels of 130–600 HU (after a 3 × 3 in-plane mean, so that noise does not
   break a venous-phase pool at 150 HU into specks), opened in-plane by a 5 mm disc: thin things
   — calcified plaque and vessel walls, valve and annulus calcium, costal cartilage, cortex, a rim
   of partial volume — drop out; what survives falls into 3-D connected regions. Vertebral
   marrow (100–300 HU) survives too, and is told apart by what surrounds it: a region is bone
   when it is marrow inside a cortex, i.e. when along most of the outline of its core (what the
   erosion left; a share of at least :data:`BONE_SHARE`) something at least
   :data:`CORTEX_STEP_HU` brighter than the region's median lies within :data:`CORTEX_REACH_MM`
   — the cortex of a vertebral body, the sternum or a rib head. A blood pool is bounded by darker
   tissue (wall, myocardium, fat, lung) and meets brighter matter only at calcium or where it lies
   against bone, a minority of its outline. Nothing uses a position. Regions of at least
   :data:`MIN_REGION_ML` that are not bone are the blood pool; an unenhanced chest has none of
   :data:`BLOOD_POOL_ML` or more, an enhanced one has its heart chambers and aorta there (over
   100 mL even with a small heart), so the scan is refused from :data:`BLOOD_POOL_ML` on, with
   the pool's volume and median HU. This holds when the enhanced pool is a minority of the tissue
   between the lungs (small heart, much muscle and myocardium), which the next test misses.
2. **The most common value** (:func:`soft_tissue_mode_hu`) of the soft tissue there (0–600 HU):
   unenhanced blood, myocardium, vessel walls and muscle all measure about 30–70 HU; above
   :data:`ENHANCED_HU` the scan is refused. It adds a late (delayed) phase, whose blood at
   100–130 HU sits below the blood-pool range but still moves the most common value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aidnet.errors import AidnetError
from aidnet.lung.hull import slice_hulls

#: The most common soft-tissue value between the lungs above which a scan is refused: unenhanced
#: tissue there measures about 30–70 HU, an enhanced blood pool 150 HU and more.
ENHANCED_HU = 100.0
#: The heart's slices, as fractions of the lungs' height from the apex.
HEART_SLAB = (0.40, 0.75)
#: Below this much soft tissue (mL) between the lungs the most common value says nothing.
MIN_TISSUE_ML = 20.0

#: HU range of an enhanced blood pool on the in-plane 3 × 3 mean of the working grid.
BLOOD_HU = (130.0, 600.0)
#: In-plane opening radius (mm): structures thinner than about twice this drop out.
OPEN_MM = 5.0
#: Bone: within this distance (mm, along each in-plane axis) of its core's outline, i.e. up to
#: about 3 mm past the region's edge, lies the cortex...
CORTEX_REACH_MM = OPEN_MM + 3.0
#: ...at least this much brighter (HU) than the region's median...
CORTEX_STEP_HU = 150.0
#: ...around at least this share of the outline.
BONE_SHARE = 0.5
#: Regions smaller than this (mL) are not counted (calcified nodes, bone fragments).
MIN_REGION_ML = 5.0
#: A blood pool this large (mL) or larger on the heart's slices means contrast: an enhanced chest
#: holds its heart chambers (hundreds of mL) and a descending aorta (25 mL per 5 cm at 2.5 cm).
BLOOD_POOL_ML = 30.0

_BIN_HU = 5.0
_RANGE_HU = (0.0, 600.0)


@dataclass(frozen=True)
class Region:
    """One region of enhanced-range tissue between the lungs (see :func:`enhanced_regions`):
    volume (mL), median HU, the share of its core's outline with a brighter cortex nearby, and
    its centroid as (z, y, x) indices of the grid it was measured on."""

    volume_ml: float
    median_hu: float
    cortex_share: float
    centroid: tuple[float, float, float]

    @property
    def bone(self) -> bool:
        return self.cortex_share >= BONE_SHARE


def _heart_slab(hu: np.ndarray, lungs: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
    """First slice, HU (float32) and the between-the-lungs mask on the heart's slices."""
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
    return z0, np.asarray(hu[z0:z1], dtype=np.float32), between


def _mode(values: np.ndarray, voxel_ml: float) -> float | None:
    values = values[(values >= _RANGE_HU[0]) & (values <= _RANGE_HU[1])]
    if values.size * voxel_ml < MIN_TISSUE_ML:
        return None
    bins = int(round((_RANGE_HU[1] - _RANGE_HU[0]) / _BIN_HU))
    counts, _ = np.histogram(values, bins=bins, range=_RANGE_HU)
    # a 3-bin (15 HU) running mean: noise does not split the peak
    smooth = np.convolve(counts.astype(np.float64), np.ones(3) / 3.0, mode="same")
    return float(_RANGE_HU[0] + (int(np.argmax(smooth)) + 0.5) * _BIN_HU)


def _disk(radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """In-plane disc footprint (1, ny, nx) of ``radius_mm`` on the grid's pixels."""
    ry, rx = (max(radius_mm / float(s), 1.0) for s in spacing[1:])
    yy, xx = np.mgrid[-int(ry) : int(ry) + 1, -int(rx) : int(rx) + 1]
    return ((yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0 + 1e-6)[None]


def _regions(
    z0: int, values: np.ndarray, between: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[list[Region], float | None]:
    """The regions (see :func:`enhanced_regions`) and the median HU of those not bone."""
    from scipy import ndimage as ndi

    plane = np.zeros((1, 3, 3), dtype=bool)
    plane[0, 1, :] = plane[0, :, 1] = True
    smooth = ndi.uniform_filter(values, size=(1, 3, 3), mode="nearest")
    inside = between & (smooth >= BLOOD_HU[0]) & (smooth <= BLOOD_HU[1])
    disk = _disk(OPEN_MM, spacing)
    core = ndi.binary_erosion(inside, disk)
    if not core.any():
        return [], None
    opened = ndi.binary_dilation(core, disk) & inside
    labels, n = ndi.label(opened)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_ml
    kept = np.flatnonzero(sizes >= MIN_REGION_ML)
    kept = kept[kept > 0]
    if kept.size == 0:
        return [], None
    medians = np.full(n + 1, np.inf, dtype=np.float32)
    for k in kept:
        medians[k] = np.median(values[labels == k])
    # the cortex test: how much of each core's outline has a voxel CORTEX_STEP_HU brighter than
    # its region's median within CORTEX_REACH_MM (a square neighbourhood: separable, fast)
    outline = core & ~ndi.binary_erosion(core, plane, border_value=1)
    reach = [2 * int(round(CORTEX_REACH_MM / float(s))) + 1 for s in spacing[1:]]
    brightest = ndi.maximum_filter(values, size=(1, *reach), mode="nearest")
    bright = outline & (brightest > medians[labels] + CORTEX_STEP_HU)
    share = np.bincount(labels[bright], minlength=n + 1) / np.maximum(
        np.bincount(labels[outline], minlength=n + 1), 1
    )
    where = np.nonzero(labels)
    counts = np.maximum(np.bincount(labels[where], minlength=n + 1), 1)
    centroids = [np.bincount(labels[where], weights=w, minlength=n + 1) / counts for w in where]
    regions = [
        Region(
            volume_ml=float(sizes[k]),
            median_hu=float(medians[k]),
            cortex_share=float(share[k]),
            centroid=(float(centroids[0][k]) + z0, float(centroids[1][k]), float(centroids[2][k])),
        )
        for k in kept
    ]
    pool = [k for k, r in zip(kept, regions, strict=True) if not r.bone]
    median = float(np.median(values[np.isin(labels, pool)])) if pool else None
    return regions, median


def _pool_volume(regions: list[Region]) -> float:
    return float(sum(r.volume_ml for r in regions if not r.bone))


def soft_tissue_mode_hu(
    hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]
) -> float | None:
    """The most common value (HU) of the soft tissue between the lungs on the heart's slices.

    ``hu`` and ``lungs`` (nonzero = lung) share one canonical grid (z from head to feet) of
    ``spacing`` mm; a coarse working grid (2–2.5 mm) is enough and smooths the noise. None when
    there is too little such tissue to tell (under :data:`MIN_TISSUE_ML`).
    """
    slab = _heart_slab(hu, lungs)
    if slab is None:
        return None
    _, values, between = slab
    return _mode(values[between], float(np.prod(spacing)) / 1000.0)


def enhanced_regions(
    hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]
) -> list[Region]:
    """The compact regions of blood-pool range (:data:`BLOOD_HU`) between the lungs on the
    heart's slices, of at least :data:`MIN_REGION_ML`, bone or not (see the module docstring).

    Same grids as :func:`soft_tissue_mode_hu`; centroids are indices of ``hu``.
    """
    slab = _heart_slab(hu, lungs)
    return [] if slab is None else _regions(*slab, spacing)[0]


def blood_pool(
    hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[float, float | None]:
    """(volume in mL, median HU or None when empty) of the enhanced blood pool between the
    lungs on the heart's slices: :func:`enhanced_regions` that are not bone."""
    slab = _heart_slab(hu, lungs)
    if slab is None:
        return 0.0, None
    regions, median = _regions(*slab, spacing)
    return _pool_volume(regions), median


def check_unenhanced(
    hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]
) -> float | None:
    """AidnetError (one line) when the scan looks contrast-enhanced: the most common value
    first, then the blood pool (see the module docstring); else :func:`soft_tissue_mode_hu`.
    Same grids as :func:`soft_tissue_mode_hu`."""
    slab = _heart_slab(hu, lungs)
    if slab is None:
        return None
    z0, values, between = slab
    mode = _mode(values[between], float(np.prod(spacing)) / 1000.0)
    if mode is not None and mode > ENHANCED_HU:
        raise AidnetError(
            f"looks contrast-enhanced: the soft tissue between the lungs measures {mode:.0f} HU "
            f"(unenhanced blood and myocardium 30–70 HU); the Agatston score and AID-Net need "
            "a non-contrast CT"
        )
    regions, median = _regions(z0, values, between, spacing)
    volume = _pool_volume(regions)
    if volume >= BLOOD_POOL_ML:
        raise AidnetError(
            f"looks contrast-enhanced: {volume:.0f} mL of blood pool between the lungs measures "
            f"{median:.0f} HU (unenhanced blood 30–70 HU); the Agatston score and AID-Net need "
            "a non-contrast CT"
        )
    return mode
