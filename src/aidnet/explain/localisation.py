"""Where a heat map points, measured against voxel annotations (beyond the paper, issue 5).

For one heat map on the scan's own (canonical) grid, its label map (0 background, 1 coronary
calcium, 2 other calcium, other values ignored) and the voxel spacing in mm:

* **pointing game**: a hit when the map's maximum voxel lies within ``hit_radius_mm`` (5 mm) of
  a coronary-calcium voxel, distances between voxel centres in physical mm (anisotropic spacing
  respected). Ties in the maximum go to the first maximal voxel in (z, y, x) C order, the
  ``numpy.argmax`` rule. A map with no positive value is a miss (no peak distance, shares 0).
* **mass shares**: the share of the map's total value on voxels within ``mass_radius_mm``
  (10 mm) of coronary calcium, and of non-coronary calcium (label 2). The two regions may
  overlap (a plaque beside aortic calcium), so the shares need not add up to 1 or less.

* **best single cell** (Grad-CAM only): would a map that marks one cell of Grad-CAM's grid, and
  nothing else, win the pointing game? Such a map peaks at one voxel per cell (see
  :func:`aidnet.explain.gradcam.cell_peaks`), and a real Grad-CAM within about a network voxel
  of one of them. With cells centimetres wide (a map before pooling on a coarse stage), most
  plaques lie more than 5 mm from every one of them, so the share of scans where one does
  roughly bounds Grad-CAM's hit rate on that grid, whatever the network learned.

Only scans whose label map holds coronary calcium are scored. Summaries give the hit rate with a
95% Wilson score interval (scans counted as independent trials) and the median and mean shares.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aidnet.errors import AidnetError

LABEL_CORONARY, LABEL_NONCORONARY = 1, 2
HIT_RADIUS_MM = 5.0
MASS_RADIUS_MM = 10.0
CSV_COLUMNS = (
    "subject",
    "visit",
    "map",
    "hit",
    "peak_distance_mm",
    "coronary_share",
    "noncoronary_share",
)


@dataclass(frozen=True)
class Localisation:
    """Scores of one heat map; ``peak_distance_mm`` is NaN for a map with no positive value."""

    hit: bool
    peak: tuple[int, int, int] | None
    peak_distance_mm: float
    coronary_share: float
    noncoronary_share: float
    best_cell_hit: bool | None = None


def _region(support: np.ndarray, shape: tuple[int, ...], margin: Sequence[int]) -> tuple:
    """Bounding box of ``support`` (not empty) grown by ``margin`` voxels per axis (clipped to
    ``shape``); read from the mask's projection on each axis."""
    box = []
    for axis, (m, n) in enumerate(zip(margin, shape, strict=True)):
        others = tuple(a for a in range(support.ndim) if a != axis)
        hit = np.flatnonzero(support.any(axis=others))
        box.append(slice(max(int(hit[0]) - m, 0), min(int(hit[-1]) + m + 1, n)))
    return tuple(box)


_SLAB_VOXELS = 1 << 24  # distance transforms run on z-slabs of about this many voxels


def _near(labels: np.ndarray, label: int, spacing: np.ndarray, radius: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius`` mm of a voxel of ``label``.

    Exact: a Euclidean distance transform with the voxel spacing, run on the label's bounding
    box grown by the radius, in z-slabs that overlap by the radius (bounded memory on
    full-resolution scans; a voxel's nearest target within the radius is always in its slab).
    """
    from scipy.ndimage import distance_transform_edt

    target = labels == label
    near = np.zeros(labels.shape, dtype=bool)
    if not target.any():
        return near
    margin = [int(math.ceil(radius / s)) for s in spacing]
    box = _region(target, labels.shape, margin)
    background = ~target[box]
    nz = background.shape[0]
    step = max(1, _SLAB_VOXELS // (background.shape[1] * background.shape[2]))
    inside = np.zeros(background.shape, dtype=bool)
    for z0 in range(0, nz, step):
        z1 = min(z0 + step, nz)
        lo, hi = max(z0 - margin[0], 0), min(z1 + margin[0], nz)
        slab = background[lo:hi]
        if slab.all():  # no target within reach of this slab
            continue
        distance = np.asarray(distance_transform_edt(slab, sampling=spacing))
        inside[z0:z1] = distance[z0 - lo : z1 - lo] <= radius
    near[box] = inside
    return near


def nearest_distance_mm(
    point: Sequence[int], mask: np.ndarray, spacing: Sequence[float] | np.ndarray
) -> float:
    """Physical distance (mm) from voxel ``point`` to the nearest voxel of ``mask``; inf if none."""
    return _nearest_mm(point, np.argwhere(mask), np.asarray(spacing, dtype=np.float64))


def _nearest_mm(point: Sequence[int], where: np.ndarray, spacing: np.ndarray) -> float:
    """Physical distance (mm) from voxel ``point`` to the nearest of the voxels ``where``
    (N×3 indices); inf if there are none."""
    if where.size == 0:
        return math.inf
    delta = (where - np.asarray(point)[None]) * spacing[None]
    return float(np.sqrt((delta**2).sum(axis=1)).min())


def best_cell_hit(
    cell_axes: Sequence[np.ndarray],
    labels: np.ndarray,
    spacing: Sequence[float],
    hit_radius_mm: float = HIT_RADIUS_MM,
) -> bool:
    """Whether any point of the grid ``cell_axes`` (per-axis voxel indices, see
    :func:`aidnet.explain.gradcam.cell_peaks`) lies within ``hit_radius_mm`` of coronary calcium
    (distances between voxel centres in mm, as in the pointing game).

    The grid is the product of its axes, so the grid point nearest to a voxel is the nearest
    index along each axis: exact, without listing the grid's points (a calcium head's grid is
    the whole network input, millions of cells)."""
    coronary = np.argwhere(labels == LABEL_CORONARY)
    if coronary.size == 0:
        return False
    squared = np.zeros(len(coronary), dtype=np.float64)
    for axis, (cells, step) in enumerate(zip(cell_axes, spacing, strict=True)):
        grid = np.unique(np.asarray(cells, dtype=np.int64))
        if grid.size == 0:
            return False
        where = coronary[:, axis]
        right = np.clip(np.searchsorted(grid, where), 0, grid.size - 1)
        left = np.clip(right - 1, 0, grid.size - 1)
        gap = np.minimum(np.abs(grid[right] - where), np.abs(grid[left] - where))
        squared += (gap * float(step)) ** 2
    return bool(np.sqrt(squared.min()) <= hit_radius_mm)


def score_maps(
    maps: Mapping[str, np.ndarray],
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    hit_radius_mm: float = HIT_RADIUS_MM,
    mass_radius_mm: float = MASS_RADIUS_MM,
) -> dict[str, Localisation]:
    """Score heat maps that share one label map (distances are computed once for all)."""
    spacing_mm = np.asarray(spacing, dtype=np.float64)
    if spacing_mm.shape != (3,) or not np.all(spacing_mm > 0):
        raise ValueError(f"spacing must be three positive numbers (mm), not {tuple(spacing)}")
    if labels.ndim != 3:
        raise ValueError(f"label map must be 3-D, got shape {labels.shape}")
    for name, heat in maps.items():
        if heat.shape != labels.shape:
            raise ValueError(f"{name} map shape {heat.shape} differs from labels {labels.shape}")
        if not np.all(np.isfinite(heat)) or heat.min() < 0:
            raise ValueError(f"{name} map must be finite and non-negative")
    coronary = np.argwhere(labels == LABEL_CORONARY)  # once for every map's peak
    support = np.zeros(labels.shape, dtype=bool)
    for heat in maps.values():
        support |= heat > 0
    near_coronary = near_other = None
    if support.any():
        # masks within the radius are exact on the support's box grown by the radius
        margin = [int(math.ceil(mass_radius_mm / s)) + 1 for s in spacing_mm]
        box = _region(support, labels.shape, margin)
        inner = _region(support, labels.shape, [0, 0, 0])
        local = tuple(
            slice(i.start - b.start, i.stop - b.start) for i, b in zip(inner, box, strict=True)
        )
        near_coronary = _near(labels[box], LABEL_CORONARY, spacing_mm, mass_radius_mm)[local]
        near_other = _near(labels[box], LABEL_NONCORONARY, spacing_mm, mass_radius_mm)[local]
    out: dict[str, Localisation] = {}
    for name, heat in maps.items():
        if near_coronary is None or near_other is None or float(heat.max()) <= 0:
            out[name] = Localisation(False, None, math.nan, 0.0, 0.0)
            continue
        flat = int(np.argmax(heat))  # the first maximum in C order
        pz, py, px = (int(i) for i in np.unravel_index(flat, heat.shape))
        peak = (pz, py, px)
        distance = _nearest_mm(peak, coronary, spacing_mm)
        values = heat[inner]  # a view; sums in float64
        total = float(values.sum(dtype=np.float64))
        out[name] = Localisation(
            hit=bool(distance <= hit_radius_mm),
            peak=peak,
            peak_distance_mm=distance,
            coronary_share=float(values[near_coronary].sum(dtype=np.float64)) / total,
            noncoronary_share=float(values[near_other].sum(dtype=np.float64)) / total,
        )
    return out


def score_map(
    heat: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    hit_radius_mm: float = HIT_RADIUS_MM,
    mass_radius_mm: float = MASS_RADIUS_MM,
) -> Localisation:
    """Pointing game and mass shares of one heat map (see the module docstring)."""
    return score_maps(
        {"map": heat},
        labels,
        spacing,
        hit_radius_mm=hit_radius_mm,
        mass_radius_mm=mass_radius_mm,
    )["map"]


def wilson_interval(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``hits / n`` (n ≥ 1)."""
    if n < 1:
        raise ValueError("a proportion needs n >= 1")
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    lo = 0.0 if hits == 0 else max(0.0, centre - half)
    hi = 1.0 if hits == n else min(1.0, centre + half)  # exact at the ends, no rounding
    return lo, hi


def summarise(
    scores: Sequence[Localisation],
    *,
    hit_radius_mm: float = HIT_RADIUS_MM,
    mass_radius_mm: float = MASS_RADIUS_MM,
) -> dict:
    """The ``metrics.json`` entry of one kind of map over CAC-positive scans (n ≥ 1)."""
    if not scores:
        raise ValueError("no scores to summarise")
    hits = sum(s.hit for s in scores)
    coronary = np.array([s.coronary_share for s in scores])
    other = np.array([s.noncoronary_share for s in scores])
    lo, hi = wilson_interval(hits, len(scores))
    best_cell = [s.best_cell_hit for s in scores]
    extra = {}
    if all(b is not None for b in best_cell):
        extra["pointing_hit_rate_best_cell"] = sum(bool(b) for b in best_cell) / len(scores)
    return {
        "n": len(scores),
        "pointing_hit_rate": hits / len(scores),
        "pointing_hit_rate_ci95": [lo, hi],
        **extra,
        "coronary_mass_share_median": float(np.median(coronary)),
        "coronary_mass_share_mean": float(np.mean(coronary)),
        "noncoronary_mass_share_median": float(np.median(other)),
        "noncoronary_mass_share_mean": float(np.mean(other)),
        "hit_radius_mm": float(hit_radius_mm),
        "mass_radius_mm": float(mass_radius_mm),
    }


def load_label_map(
    path: Path,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    scan: str = "the scan",
) -> np.ndarray:
    """A label map file (any format :func:`read_volume` reads) as int16 on the canonical grid.

    It must lie on the scan's own grid: same shape and voxel positions within half a voxel;
    anything else is one AidnetError line naming the file.
    """
    from aidnet.io.read import read_volume

    volume = read_volume(path)
    if volume.shape != tuple(shape):
        got = "×".join(map(str, volume.shape))
        want = "×".join(map(str, shape))
        raise AidnetError(
            f"{path}: label map has shape {got} but {scan} has {want}; "
            "label_path must be a label map on the scan's own voxel grid"
        )
    corners = np.array(
        [
            [z, y, x, 1.0]
            for z in (0, shape[0] - 1)
            for y in (0, shape[1] - 1)
            for x in (0, shape[2] - 1)
        ]
    )
    offset = np.abs((corners @ volume.affine.T - corners @ np.asarray(affine).T)[:, :3]).max()
    if offset > 0.5 * min(volume.spacing):
        raise AidnetError(
            f"{path}: label map lies {offset:.1f} mm off {scan} (different affine); "
            "label_path must be a label map on the scan's own voxel grid"
        )
    values = volume.array
    rounded = np.rint(values)
    if not np.array_equal(rounded, values):
        raise AidnetError(
            f"{path}: label map has non-integer values (resampled with interpolation?); "
            "use integer labels 0 background, 1 coronary calcium, 2 other calcium"
        )
    return rounded.astype(np.int16)


def write_localisation_csv(path: Path, rows: Sequence[Mapping]) -> Path:
    """``subject, visit, map, hit, peak_distance_mm, coronary_share, noncoronary_share``."""
    from aidnet.atomic import atomic_path

    with (
        atomic_path(path, suffix=".csv") as tmp,
        tmp.open("w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in CSV_COLUMNS})
    return path


def csv_row(subject: str, visit: str, name: str, score: Localisation) -> dict:
    """One ``localisation.csv`` row (peak distance empty for a map with no positive value)."""
    distance = score.peak_distance_mm
    return {
        "subject": subject,
        "visit": visit,
        "map": name,
        "hit": int(score.hit),
        "peak_distance_mm": "" if not math.isfinite(distance) else f"{distance:.2f}",
        "coronary_share": f"{score.coronary_share:.4f}",
        "noncoronary_share": f"{score.noncoronary_share:.4f}",
    }
