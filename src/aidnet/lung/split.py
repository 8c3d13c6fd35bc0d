"""Split the lung air into right and left lung, then fill each lung's holes (DSB2017 step 1)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from aidnet.lung.components import FACES_3D, SLICE_2D_4

RIGHT, LEFT = 1, 2


def _largest(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Component ids sorted by decreasing size, and their sizes."""
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(sizes)[::-1]
    return order + 1, sizes[order]


def _mean_x(mask: np.ndarray) -> float:
    counts = mask.sum(axis=(0, 1))
    return float((counts * np.arange(mask.shape[2])).sum() / max(counts.sum(), 1))


def _two_sided(a: np.ndarray, b: np.ndarray, midline_x: float) -> bool:
    return (_mean_x(a) - midline_x) * (_mean_x(b) - midline_x) < 0


def split_by_erosion(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    midline_x: float,
    *,
    max_ratio: float = 4.8,
    max_iterations: int = 10,
) -> np.ndarray | None:
    """Erode one joined lung component until it falls apart into two lungs of comparable size.

    Returns labels (0, 1, 2 in no particular side order) where every voxel of ``mask`` goes to
    the nearer eroded part, or None when no erosion depth separates two lungs.
    """
    zs, ys, xs = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    box = tuple(slice(max(v[0] - 1, 0), v[-1] + 2) for v in (zs, ys, xs))
    sub = mask[box]
    eroded = sub
    for _ in range(max_iterations):
        eroded = ndimage.binary_erosion(eroded, structure=FACES_3D)
        labels, n = ndimage.label(eroded, structure=FACES_3D)
        if n == 0:
            return None
        if n < 2:
            continue
        ids, sizes = _largest(labels, n)
        a, b = labels == ids[0], labels == ids[1]
        if sizes[0] <= max_ratio * sizes[1] and _two_sided(a, b, midline_x - box[2].start):
            seeds = np.where(a, 1, 0) + np.where(b, 2, 0)
            _, nearest = ndimage.distance_transform_edt(
                seeds == 0, sampling=spacing, return_indices=True
            )
            parts = seeds[tuple(nearest)] * sub
            out = np.zeros(mask.shape, dtype=np.uint8)
            out[box] = parts
            return out
    return None


def split_lungs(
    mask: np.ndarray, spacing: tuple[float, float, float], midline_x: np.ndarray
) -> np.ndarray:
    """uint8 labels: 1 = right lung (smaller x), 2 = left lung; other air is dropped.

    The two largest 3-D components are the lungs when they are of comparable size (ratio < 4.8)
    and lie on both sides of the body midline; otherwise the largest component is eroded until it
    splits, and as a last resort it is cut at the per-slice body midline ``midline_x``.
    """
    labels, n = ndimage.label(mask, structure=FACES_3D)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if n == 0:
        return out
    ids, sizes = _largest(labels, n)
    centre = float(np.mean(midline_x))
    first = labels == ids[0]
    if n >= 2 and sizes[0] <= 4.8 * sizes[1]:
        second = labels == ids[1]
        if _two_sided(first, second, centre):
            out[first] = 1
            out[second] = 2
            return _right_left(out)
    parts = split_by_erosion(first, spacing, centre)
    if parts is None:
        left = np.arange(mask.shape[2])[None, None, :] > midline_x[:, None, None]
        parts = np.where(first, np.where(left, 2, 1), 0).astype(np.uint8)
    return _right_left(parts)


def _right_left(parts: np.ndarray) -> np.ndarray:
    """Relabel so that 1 is the part with the smaller mean x (the patient's right)."""
    xa, xb = _mean_x(parts == 1), _mean_x(parts == 2)
    if (parts == 1).any() and (parts == 2).any() and xa > xb:
        return np.where(parts == 0, 0, 3 - parts).astype(np.uint8)
    return parts


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes inside every axial slice (vessels, nodules), one lung at a time."""
    if not mask.any():
        return mask
    zs, ys, xs = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    sub = np.pad(mask[box], ((0, 0), (1, 1), (1, 1)))
    labels, n = ndimage.label(~sub, structure=SLICE_2D_4)
    outside = np.zeros(n + 1, dtype=bool)
    outside[labels[:, 0, :].ravel()] = True
    outside[labels[:, -1, :].ravel()] = True
    outside[labels[:, :, 0].ravel()] = True
    outside[labels[:, :, -1].ravel()] = True
    outside[0] = False
    filled = ~outside[labels]
    out = mask.copy()
    out[box] = filled[:, 1:-1, 1:-1]
    return out
