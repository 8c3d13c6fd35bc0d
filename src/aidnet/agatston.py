"""The Agatston coronary calcium score, written down exactly (Agatston et al., JACC 1990).

Published implementations disagree on details, so ours is stated here and in
docs/agatston-and-phantom.md:

1. Work per axial slice. A voxel is a lesion candidate if its value is >= 130 HU.
2. Candidates form 2-D 8-connected components within their slice (no connection across slices).
3. A component counts if its area (pixel count × row spacing × column spacing) is >= 1 mm².
4. Its weight comes from its peak HU: 1 for 130–199, 2 for 200–299, 3 for 300–399, 4 for >= 400.
5. Its score is area_mm² × weight × slice_thickness_mm / 3 (the slice-thickness normalisation to
   the original 3 mm protocol); the scan's score is the sum over components.
6. With a label map, only components that overlap at least one voxel of the chosen label count
   (the whole component is then scored).

Risk categories: "0", "1-10", "11-100", "101-400", ">400".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

THRESHOLD_HU = 130.0
MIN_AREA_MM2 = 1.0
_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True


@dataclass(frozen=True)
class Lesion:
    """One scored 2-D component."""

    slice_index: int
    area_mm2: float
    peak_hu: float
    weight: int
    score: float
    voxels: int


@dataclass(frozen=True)
class AgatstonResult:
    score: float
    category: str
    lesions: tuple[Lesion, ...]

    def to_dict(self) -> dict:
        return {
            "agatston": self.score,
            "category": self.category,
            "lesions": [asdict(lesion) for lesion in self.lesions],
        }


def density_weight(peak_hu: np.ndarray) -> np.ndarray:
    """Agatston density factor (0 below 130 HU)."""
    peak = np.asarray(peak_hu, dtype=np.float64)
    return np.select(
        [peak >= 400, peak >= 300, peak >= 200, peak >= THRESHOLD_HU], [4, 3, 2, 1], default=0
    ).astype(np.int64)


def risk_category(score: float) -> str:
    """The usual clinical category of an Agatston score."""
    if score <= 0:
        return "0"
    if score <= 10:
        return "1-10"
    if score <= 100:
        return "11-100"
    if score <= 400:
        return "101-400"
    return ">400"


def score_class(score: float) -> int:
    """The paper's 3 classes: 0 (score 0), 1 (1–399), 2 (>= 400)."""
    if score <= 0:
        return 0
    return 1 if score < 400 else 2


def _in_plane_neighbours(mask: np.ndarray) -> np.ndarray:
    """uint8 count of each voxel's 8 in-plane neighbours that are set in ``mask``."""
    counts = np.zeros(mask.shape, dtype=np.uint8)
    bits = mask.view(np.uint8)
    ny, nx = mask.shape[1:]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                dst = (
                    slice(None),
                    slice(max(dy, 0), ny + min(dy, 0)),
                    slice(max(dx, 0), nx + min(dx, 0)),
                )
                src = (
                    slice(None),
                    slice(max(-dy, 0), ny - max(dy, 0)),
                    slice(max(-dx, 0), nx - max(dx, 0)),
                )
                counts[dst] += bits[src]
    return counts


def drop_small_components(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """``mask`` without its in-plane 8-connected components smaller than 1 mm².

    Where such components have at most two pixels (pixels of 0.5 mm² or more, i.e. every
    diagnostic chest CT) they are found from neighbour counts, which is several times faster
    than labelling; finer grids are labelled.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    pixel_mm2 = float(spacing[1]) * float(spacing[2])
    too_small = 0  # the largest pixel count of a component under 1 mm²
    while (too_small + 1) * pixel_mm2 < MIN_AREA_MM2:
        too_small += 1
    if too_small == 0:
        return mask
    if too_small <= 2:
        counts = _in_plane_neighbours(mask)
        out = mask & (counts > 0)
        if too_small == 2:
            single = mask & (counts == 1)  # a pair is two such pixels next to each other
            out &= ~(single & (_in_plane_neighbours(single) > 0))
        return out
    labels, n = ndimage.label(mask, structure=_IN_PLANE_8)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    big = sizes * pixel_mm2 >= MIN_AREA_MM2
    big[0] = False
    return big[labels]


def agatston(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    mask: np.ndarray | None = None,
    label: int = 1,
    slice_thickness: float | None = None,
) -> AgatstonResult:
    """Agatston score of a (z, y, x) HU array with ``spacing`` = (sz, sy, sx) mm.

    ``slice_thickness`` defaults to the slice spacing ``sz``. With ``mask`` (a label map of the
    same shape) only components that touch ``label`` count, and voxels that carry another
    nonzero label are no part of them: a coronary plaque that touches the aortic wall's calcium
    in a slice is scored without it, as a reader separates the two, while its unlabelled rim
    above 130 HU still counts.
    """
    from scipy import ndimage

    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) array, got shape {hu.shape}")
    if mask is not None and np.shape(mask) != hu.shape:
        raise ValueError(f"mask shape {np.shape(mask)} does not match image shape {hu.shape}")
    thickness = float(spacing[0] if slice_thickness is None else slice_thickness)
    pixel_area = float(spacing[1]) * float(spacing[2])

    candidates = hu >= THRESHOLD_HU
    if mask is not None:
        mask = np.asarray(mask)
        candidates &= (mask == 0) | (mask == label)
    labels, n = ndimage.label(candidates, structure=_IN_PLANE_8)
    if n == 0:
        return AgatstonResult(score=0.0, category=risk_category(0.0), lesions=())
    where = np.nonzero(candidates)
    ids = labels[where]
    values = hu[where].astype(np.float64)
    counts = np.bincount(ids, minlength=n + 1)[1:]
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, ids, values)
    peaks = peaks[1:]
    slice_of = np.zeros(n + 1, dtype=np.int64)
    slice_of[ids] = where[0]
    slice_of = slice_of[1:]
    keep = counts * pixel_area >= MIN_AREA_MM2
    if mask is not None:
        hits = mask[where] == label
        keep &= np.bincount(ids, weights=hits, minlength=n + 1)[1:] > 0
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        return AgatstonResult(score=0.0, category=risk_category(0.0), lesions=())
    areas = counts[kept] * pixel_area
    weights = density_weight(peaks[kept])
    scores = areas * weights * thickness / 3.0
    lesions = tuple(
        Lesion(
            slice_index=int(slice_of[i]),
            area_mm2=float(a),
            peak_hu=float(p),
            weight=int(w),
            score=float(s),
            voxels=int(c),
        )
        for i, a, p, w, s, c in zip(
            kept, areas, peaks[kept], weights, scores, counts[kept], strict=True
        )
    )
    total = float(np.sum(scores))
    return AgatstonResult(score=total, category=risk_category(total), lesions=lesions)
