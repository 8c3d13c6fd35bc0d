"""Air components of a chest CT and which of them are lungs (DSB2017 step 1, simplified).

All functions work on the coarse working grid: boolean or HU arrays (Z, Y, X) and the working
``spacing`` (sz, sy, sx) in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

AIR_HU = -600.0
BODY_HU = -500.0
OUTSIDE_AIR_HU = -950.0  # air outside the body reads about −1000 HU; lung about −850
SLICE_2D = np.zeros((3, 3, 3), dtype=bool)
SLICE_2D[1] = True  # 8-connected within an axial slice, nothing across slices
SLICE_2D_4 = np.zeros((3, 3, 3), dtype=bool)
SLICE_2D_4[1] = ndimage.generate_binary_structure(2, 1)
FACES_3D = ndimage.generate_binary_structure(3, 1)


def smooth_hu(hu: np.ndarray, spacing: tuple[float, float, float], sigma_mm: float = 1.0):
    """Gaussian smoothing of ``sigma_mm`` (skipped along axes where it is < 0.3 voxel)."""
    sigma = [sigma_mm / s if sigma_mm / s >= 0.3 else 0.0 for s in spacing]
    if not any(sigma):
        return hu
    return ndimage.gaussian_filter(hu, sigma=sigma, truncate=2.0)


def body_axis(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice (y, x) centroid of tissue (HU > −500); empty slices take the volume's centroid."""
    body = hu > BODY_HU
    count = body.sum(axis=(1, 2)).astype(np.float64)
    ys = (body.sum(axis=2) * np.arange(hu.shape[1])).sum(axis=1)
    xs = (body.sum(axis=1) * np.arange(hu.shape[2])).sum(axis=1)
    if count.sum() == 0:
        return np.full(hu.shape[0], (hu.shape[1] - 1) / 2), np.full(
            hu.shape[0], (hu.shape[2] - 1) / 2
        )
    cy, cx = ys.sum() / count.sum(), xs.sum() / count.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, ys / count, cy), np.where(count > 0, xs / count, cx)


def inner_air(air: np.ndarray, hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(air not connected to the image border, border air that is lung-dense) per slice.

    Per-slice 8-connected components, as in DSB2017: removing the air connected to the
    in-plane border removes the air around the body, the air that wraps around it and the air
    under and beside the table, while a scan that reaches the neck and face (airway open to the
    outside) still keeps its lungs. Border components whose mean is lung, not air (above
    ``OUTSIDE_AIR_HU``), are returned apart: a field of view that cuts through the lungs, as in
    a dedicated cardiac calcium-scoring scan, leaves the lungs touching the border.
    """
    labels, n = ndimage.label(air, structure=SLICE_2D)
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[edge.ravel()] = True
    outside[0] = True
    count = np.bincount(labels.ravel(), minlength=n + 1)
    total = np.bincount(labels.ravel(), weights=hu.ravel(), minlength=n + 1)
    cut = outside & (total > OUTSIDE_AIR_HU * np.maximum(count, 1))
    cut[0] = False
    return ~outside[labels], cut[labels]


def slice_stats(ids: np.ndarray, z: np.ndarray, dist_mm: np.ndarray, n: int, nz: int):
    """Area (voxels) and minimum ``dist_mm`` of every (component, slice): arrays (n + 1, nz).

    ``ids``, ``z`` and ``dist_mm`` describe the labelled voxels: component id, slice index and
    distance of each.
    """
    key = ids.astype(np.int64) * nz + z
    area = np.bincount(key, minlength=(n + 1) * nz).reshape(n + 1, nz)
    mind = np.full((n + 1) * nz, np.inf)
    _min_sorted(mind, key, dist_mm)
    return area, mind.reshape(n + 1, nz)


def _min_sorted(out: np.ndarray, key: np.ndarray, values: np.ndarray) -> None:
    order = np.argsort(key, kind="stable")
    key, values = key[order], values[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    out[key[starts]] = np.minimum.reduceat(values, starts)


def axis_distance_mm(
    zyx: tuple[np.ndarray, np.ndarray, np.ndarray], spacing: tuple[float, float, float], axis_yx
) -> np.ndarray:
    """In-plane distance (mm) of the voxels ``zyx`` (index arrays) from the per-slice body
    axis, float32."""
    z, y, x = zyx
    cy, cx = axis_yx
    dy = (y - cy[z]) * spacing[1]
    dx = (x - cx[z]) * spacing[2]
    return np.sqrt(dy * dy + dx * dx).astype(np.float32)


def select_lungs(
    candidates: np.ndarray,
    spacing: tuple[float, float, float],
    axis_yx,
    *,
    volume_l: tuple[float, float] = (0.2, 10.0),
    area_mm2: float = 6000.0,
    dist_mm: float = 80.0,
) -> np.ndarray:
    """Keep 3-D components (6-connected) of lung-like volume that lie near the body axis.

    A component is kept when its volume is within ``volume_l`` litres and its minimum distance to
    the body axis, averaged over its large slices (area > ``area_mm2``, or > half its largest
    slice for small lungs), is below ``dist_mm`` (DSB2017 ``all_slice_analysis``).
    """
    labels, n = ndimage.label(candidates, structure=FACES_3D)
    if n == 0:
        return np.zeros_like(candidates, dtype=bool)
    index = np.flatnonzero(labels)  # the statistics need only the labelled voxels
    ids = labels.ravel()[index]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(ids, minlength=n + 1) * voxel_ml / 1000.0
    ok = (sizes >= volume_l[0]) & (sizes <= volume_l[1])
    ok[0] = False
    if not ok.any():
        return np.zeros_like(candidates, dtype=bool)
    keep = ok[ids]
    zyx = np.unravel_index(index[keep], labels.shape)
    dist = axis_distance_mm(zyx, spacing, axis_yx)
    area, mind = slice_stats(ids[keep], zyx[0], dist, n, labels.shape[0])
    area_mm = area * (spacing[1] * spacing[2])
    big = area_mm > np.minimum(area_mm2, 0.5 * area_mm.max(axis=1, keepdims=True))
    with np.errstate(invalid="ignore"):
        mean_dist = np.where(big, mind, 0.0).sum(axis=1) / big.sum(axis=1)
    ok &= mean_dist < dist_mm
    return ok[labels]


def blob_sizes_and_centres(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel count and mean z and x index of components 1…n of ``labels`` (Z, Y, X).

    What ``ndimage.sum_labels`` and ``ndimage.center_of_mass`` give, from one pass over the
    labelled voxels; the sums are of integers, so they are exact in any order.
    """
    index = np.flatnonzero(labels)
    ids = labels.ravel()[index]
    area = np.bincount(ids, minlength=n + 1)[1:].astype(np.float64)
    z_sum = np.bincount(ids, weights=index // (labels.shape[1] * labels.shape[2]), minlength=n + 1)
    x_sum = np.bincount(ids, weights=index % labels.shape[2], minlength=n + 1)
    return area, z_sum[1:] / area, x_sum[1:] / area


def remove_trachea(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    axis_x: np.ndarray,
    *,
    max_area_mm2: float = 800.0,
    max_offset_mm: float = 25.0,
) -> np.ndarray:
    """Drop small in-slice blobs near the midline above the lungs' widest slice (the airway)."""
    if not mask.any():
        return mask
    per_slice = mask.sum(axis=(1, 2))
    top = int(np.argmax(per_slice))
    labels, n = ndimage.label(mask[: top + 1], structure=SLICE_2D)
    if n == 0:
        return mask
    area, cz, cx = blob_sizes_and_centres(labels, n)
    offset = np.abs(cx - axis_x[np.round(cz).astype(int)]) * spacing[2]
    airway = np.zeros(n + 1, dtype=bool)
    airway[1:] = (area * spacing[1] * spacing[2] < max_area_mm2) & (offset < max_offset_mm)
    out = mask.copy()
    out[: top + 1] &= ~airway[labels]
    return out
