"""Phantom realism: phantom and real chest CTs side by side on what a network can key on.

``python -m benchmarks.realism --real A.nrrd B.nrrd --phantom DIR_OR_MANIFEST [--n 6]
--out OUT.json [--markdown OUT.md]``

Every scan, phantom or real, is measured the same way, with no label map: regions come from
aidnet's own lung segmentation (:func:`aidnet.lung.segment_lungs`) and the network's region of
interest. The phantom is summarised by the median and range over ``--n`` scans (one per subject
first), each real scan by its own value; a real value outside the phantom's range is flagged.

Regions (z runs head → feet; "slab" = the heart's slices, 40–75 % of the lungs' height from the
apex, as in the contrast check; "box" = the lungs' bounding box):

* lungs: ``segment_lungs`` (nonzero). ROI: what channel 0 of the network shows — the lungs'
  dilated per-slice convex hull less the lungs, inside the box (as ``_region_of_interest``).
* body: HU > −500 block-averaged to about 2.5 mm in-plane, opened by two 3×3 in-plane steps
  (drops the table and thin lines), the largest 3-D component, holes filled per slice.
  "inner body" is the body eroded by one such step (no skin partial volume).
* local mean / std: 5×5 in-plane box over native pixels. Tissue classes are chosen on the local
  mean, their statistics taken on the raw HU (so a class window does not clip its own spread).
* heart region: on the slab, inside the undilated per-slice hull of the lungs, outside the lungs,
  local mean 0–100 HU; its largest 3-D component (heart with the great vessels beside it).

Measurements (``hu.*`` give median, 5th and 95th percentile of raw HU, and the class's share of
the non-lung body):

1. ``hu.lung``: lung voxels. ``hu.fat``: inner body outside lungs, local mean −190…−30.
   ``hu.soft``: inner body outside lungs and ROI, local mean 0…100 (muscle, liver).
   ``hu.blood``: the heart region. ``hu.bone``: body outside the ROI and lungs, HU > 300.
   ``roi.*``: the network's own view — median HU in the ROI and the share of it that is fat,
   soft tissue (0…100) and over 130 HU (the calcium channel).
2. ``noise.soft_std``: median local std over ``hu.soft`` voxels; ``noise.air_std``: the same
   in air outside the body (local mean < −900, inside the reconstructed field). ``nps.*``:
   radially averaged 2-D noise power spectrum of square patches (≈24 mm) that lie wholly in soft
   tissue (heart included), each less its best-fit quadratic surface: its peak and
   power-weighted mean radial frequency up to the pixel's Nyquist frequency (cycles/mm; a soft
   kernel puts the power low, a sharp one high), and — comparable across pixel sizes — the mean
   frequency and the noise std (HU) within |f_x|, |f_y| ≤ 0.25 cycles/mm, the band a 2 mm grid
   (about the network's) keeps: ``nps.mean_band_cpmm``, ``nps.std_band``.
3. ``ca_roi.*`` / ``ca_out.*``: calcium components — HU > 130 in the body, in-plane pieces under
   1 mm² dropped, 26-connected in 3-D — inside the ROI and outside it (ribs, spine, sternum,
   shoulders): count, size (mm³) and peak HU quartiles, and the median centroid in the box
   (0…1 along z, y, x). ``ca_roi.volume_ml``: their total volume.
   ``channel.*``: the calcium channel as the ``full`` preset builds it
   (:func:`aidnet.preprocess.calcium_candidates` with its bone options, on the scan's grid,
   before resampling): what of the calcium-range material the network is shown. Its
   26-connected components: count, the largest (mm³), the volume in components over 1 mL
   (``big_ml``: bone left in, such as a vertebral body) and the total (mL).
4. ``heart.*``: the heart region's centroid and extent (5th–95th percentile of its voxels'
   coordinates) in the box (0…1); z is bounded by the slab. ``heart.volume_ml`` on the slab.
5. ``geo.*``: field of view (mm), lung box (mm), body width (median over slab slices) and its
   share of the field, the share of slab slices where the body touches the field's edge, body
   beyond the lungs' box on each side (mm), ``geo.arms`` — share of slab slices with a separate
   tissue component ≥ 10 cm² lateral to the lungs' box —, ``geo.table`` — share of slab slices
   with dense material (HU > −200, not body) ≥ 100 mm wide at or below the patient's back —,
   slice spacing and pixel size (mm), scan length above the apex and below the base (mm).
   ``edge.*``: profiles along the normal (gradient of the image smoothed by 1.5 mm) through the
   lungs' outer boundary on the slab (±6 mm, 0.25 mm steps, linear interpolation), kept where
   the lung side is < −600 HU and the other side −150…150 HU (fat or soft tissue, not bone; the
   medians at 3.5–6 mm): median 10–90 % rise distance (mm), and the profile's maximum within
   3.5 mm on the tissue side less that plateau (HU; > 0 a sharp kernel's overshoot, < 0 an
   edge still rising at 3.5 mm).
   ``streak.*``: components > 1000 HU (volume, mL); median local std in soft tissue (local mean
   −150…150) 3–10 mm in-plane from them (distances on the 2.5 mm grid of the body mask),
   divided by ``noise.soft_std`` (1 = no streaks).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from aidnet.preprocess.contrast import HEART_SLAB
from aidnet.preprocess.noise import local_mean_std

BODY_HU, TABLE_HU, CALCIUM_HU, BONE_HU, DENSE_HU = -500.0, -200.0, 130.0, 300.0, 1000.0
FAT, SOFT, EDGE_TISSUE = (-190.0, -30.0), (0.0, 100.0), (-150.0, 150.0)
NPS_PATCH_MM, BAND_CPMM, EDGE_HALF_MM, EDGE_STEP_MM = 24.0, 0.25, 6.0, 0.25
PLANE = np.ones((1, 3, 3), dtype=bool)
DIAGNOSTIC = (".patches", ".profiles")  # how many samples a measurement rests on


def _stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"median": None, "p5": None, "p95": None}
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return {"median": float(p50), "p5": float(p5), "p95": float(p95)}


def _quartiles(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"q25": None, "q50": None, "q75": None}
    q = np.percentile(values, [25, 50, 75])
    return {"q25": float(q[0]), "q50": float(q[1]), "q75": float(q[2])}


def _largest(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _in_plane(mask: np.ndarray, steps: int, grow: bool) -> np.ndarray:
    op = ndimage.binary_dilation if grow else ndimage.binary_erosion
    return op(mask, structure=PLANE, iterations=steps) if steps > 0 else mask


def find_regions(volume, lungs: np.ndarray | None = None) -> dict:
    """Masks and boxes every measurement shares (see the module docstring)."""
    from aidnet.lung import segment_lungs
    from aidnet.lung.grid import block_any, block_mean, upsample_nearest, working_factors
    from aidnet.lung.hull import slice_hulls
    from aidnet.preprocess.config import PreprocessConfig
    from aidnet.preprocess.sample import lung_box, on_original_grid, region_hull

    hu = np.asarray(volume.array, dtype=np.float32)
    lungs = (segment_lungs(volume) if lungs is None else np.asarray(lungs)) != 0
    box = lung_box(lungs)
    z0, z1, y0, y1, x0, x1 = box
    crop = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    margin = PreprocessConfig(size=(1, 1, 1)).hull_margin_mm
    hull = region_hull(lungs[crop], volume.spacing, margin)
    roi = on_original_grid(hull & ~lungs[crop], box, hu.shape)

    f = working_factors((1e9, *volume.spacing[1:]), hu.shape)  # in-plane blocks only
    small = block_mean(hu, f) > BODY_HU
    opened = ndimage.binary_opening(small, structure=PLANE, iterations=2)
    body_small = ndimage.binary_fill_holes(_largest(opened), structure=PLANE)
    inner_small = _in_plane(body_small, 1, grow=False)
    near_small = _in_plane(body_small, 2, grow=True)
    body = upsample_nearest(body_small, hu.shape, f)
    inner = upsample_nearest(inner_small, hu.shape, f)

    height = z1 - z0
    s0, s1 = z0 + int(np.floor(HEART_SLAB[0] * height)), z0 + int(np.ceil(HEART_SLAB[1] * height))
    mean, std = local_mean_std(hu, (1, 5, 5))  # in-plane 5 × 5
    between = slice_hulls(lungs[s0:s1]) & ~lungs[s0:s1]
    soft_between = between & (mean[s0:s1] >= SOFT[0]) & (mean[s0:s1] <= SOFT[1])
    heart = np.zeros(hu.shape, dtype=bool)
    heart[s0:s1] = _largest(soft_between)
    soft = inner & ~lungs & ~roi & (mean >= SOFT[0]) & (mean <= SOFT[1])
    return {
        "hu": hu,
        "mean": mean,
        "std": std,
        "lungs": lungs,
        "box": box,
        "roi": roi,
        "body": body,
        "inner": inner,
        "slab": (s0, s1),
        "heart": heart,
        "soft": soft,
        "small": (f, small, opened, body_small, near_small),
        "tissue_any": block_any(hu > TABLE_HU, f),
    }


def hu_classes(r: dict) -> dict:
    hu, mean, lungs, roi, inner = r["hu"], r["mean"], r["lungs"], r["roi"], r["inner"]
    tissue = r["body"] & ~lungs
    n_tissue = max(int(tissue.sum()), 1)
    classes = {
        "lung": lungs,
        "fat": inner & ~lungs & (mean >= FAT[0]) & (mean <= FAT[1]),
        "soft": r["soft"],
        "blood": r["heart"],
        "bone": tissue & ~roi & (hu > BONE_HU),
    }
    out = {}
    for name, mask in classes.items():
        for key, value in _stats(hu[mask]).items():
            out[f"hu.{name}.{key}"] = value
        if name != "lung":
            out[f"hu.{name}.share"] = float(mask.sum()) / n_tissue
    inside = hu[roi]
    n_roi = max(inside.size, 1)
    out["roi.median"] = float(np.median(inside)) if inside.size else None
    out["roi.fat_share"] = float(((inside >= FAT[0]) & (inside <= FAT[1])).sum()) / n_roi
    out["roi.soft_share"] = float(((inside >= SOFT[0]) & (inside <= SOFT[1])).sum()) / n_roi
    out["roi.over130_share"] = float((inside > CALCIUM_HU).sum()) / n_roi
    return out


def noise_power_spectrum(
    hu: np.ndarray, soft: np.ndarray, pixel_mm: float, max_patches: int = 400
) -> dict:
    """2-D NPS of square soft-tissue patches (each less its best-fit quadratic surface, which
    takes out slow anatomy); see the module docstring for what is reported."""
    none = {k: None for k in ("peak_cpmm", "mean_cpmm", "mean_band_cpmm", "std_band")}
    n = max(8, int(round(NPS_PATCH_MM / pixel_mm)))
    stride = n // 2
    cover = ndimage.uniform_filter(soft.astype(np.float32), size=(1, n, n))
    centres = np.argwhere(cover[:, n // 2 :: stride, n // 2 :: stride] > 0.999)
    fits = (centres[:, 1] * stride + n <= hu.shape[1]) & (centres[:, 2] * stride + n <= hu.shape[2])
    centres = centres[fits]
    if len(centres) == 0:
        return {f"nps.{k}": v for k, v in none.items()} | {"nps.patches": 0}
    pick = centres[np.linspace(0, len(centres) - 1, min(max_patches, len(centres))).astype(int)]
    yy, xx = (c.ravel() / n for c in np.mgrid[0:n, 0:n].astype(np.float64))
    design = np.stack([np.ones(n * n), yy, xx, yy * yy, xx * xx, yy * xx], axis=1)
    power = np.zeros((n, n))
    for z, j, i in pick:  # the patch whose box mean is cover[z, j * stride + n // 2, ...]
        patch = hu[z, j * stride : j * stride + n, i * stride : i * stride + n].ravel()
        coef, *_ = np.linalg.lstsq(design, patch, rcond=None)
        power += np.abs(np.fft.fft2((patch - design @ coef).reshape(n, n))) ** 2
    power *= pixel_mm * pixel_mm / (n * n * len(pick))  # HU² mm²
    freq = np.fft.fftfreq(n, d=pixel_mm)
    radius = np.hypot(freq[:, None], freq[None, :])
    step = 1.0 / (n * pixel_mm)
    bins = np.round(radius / step).astype(int).ravel()
    radial = np.bincount(bins, power.ravel()) / np.maximum(np.bincount(bins), 1)
    nyquist = 0.5 / pixel_mm
    peak = (int(np.argmax(radial[1 : int(nyquist / step) + 1])) + 1) * step
    keep = (radius > 0) & (radius <= nyquist)
    band = (np.abs(freq[:, None]) <= BAND_CPMM) & (np.abs(freq[None, :]) <= BAND_CPMM)
    inner = band & (radius > 0)
    return {
        "nps.peak_cpmm": float(peak),
        "nps.mean_cpmm": float((radius[keep] * power[keep]).sum() / power[keep].sum()),
        "nps.mean_band_cpmm": float((radius[inner] * power[inner]).sum() / power[inner].sum()),
        "nps.std_band": float(np.sqrt(power[band].sum() * step * step)),
        "nps.patches": int(len(pick)),
    }


def noise(r: dict, spacing: tuple[float, float, float]) -> dict:
    std, mean, hu = r["std"], r["mean"], r["hu"]
    f, _, _, _, near_small = r["small"]
    from aidnet.lung.grid import upsample_nearest

    near = upsample_nearest(near_small | r["tissue_any"], hu.shape, f)
    air = ~near & (mean < -900) & (mean > -1100)
    out = {
        "noise.soft_std": float(np.median(std[r["soft"]])) if r["soft"].any() else None,
        "noise.air_std": float(np.median(std[air])) if air.any() else None,
    }
    soft_any = r["inner"] & ~r["lungs"] & (mean >= -20) & (mean <= 120)
    out.update(noise_power_spectrum(hu, soft_any, float(spacing[2])))
    return out


def _box_position(coords: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    lo = np.array(box[0::2], dtype=np.float64)
    hi = np.array(box[1::2], dtype=np.float64)
    return (coords - lo) / np.maximum(hi - lo, 1.0)


def _components(labels: np.ndarray, n: int, hu: np.ndarray) -> tuple[np.ndarray, ...]:
    """Voxel count, peak HU and centroid (z, y, x) of labels 1…n (bincounts, not ndimage)."""
    where = np.nonzero(labels)
    lab = labels[where] - 1
    count = np.bincount(lab, minlength=n).astype(np.float64)
    centres = np.stack(
        [np.bincount(lab, weights=c, minlength=n) / np.maximum(count, 1) for c in where], axis=1
    )
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(n))
    peaks = np.maximum.reduceat(hu[where][order], starts) if n else np.zeros(0)
    return count, peaks.astype(np.float64), centres


def calcium(r: dict, spacing: tuple[float, float, float]) -> dict:
    from aidnet.agatston import drop_small_components

    hu, roi = r["hu"], r["roi"]
    dense = drop_small_components((hu > CALCIUM_HU) & r["body"], spacing)
    voxel_mm3 = float(np.prod(spacing))
    out = {}
    for name, mask in (("ca_roi", dense & roi), ("ca_out", dense & ~roi)):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        out[f"{name}.count"] = int(n)
        if name == "ca_roi":
            out["ca_roi.volume_ml"] = float(mask.sum()) * voxel_mm3 / 1000.0
        sizes, peaks, centres = _components(labels, n, hu)
        sizes *= voxel_mm3
        for key, value in _quartiles(sizes).items():
            out[f"{name}.size_mm3.{key}"] = value
        for key, value in _quartiles(peaks).items():
            out[f"{name}.peak_hu.{key}"] = value
        position = _box_position(centres, r["box"]) if n else np.full((1, 3), np.nan)
        for axis, name_axis in enumerate("zyx"):
            value = float(np.median(position[:, axis]))
            out[f"{name}.pos_{name_axis}"] = None if np.isnan(value) else value
    return out


def heart(r: dict, spacing: tuple[float, float, float]) -> dict:
    mask = r["heart"]
    out: dict = {"heart.volume_ml": float(mask.sum()) * float(np.prod(spacing)) / 1000.0}
    if not mask.any():
        return out | {f"heart.{k}_{a}": None for k in ("centre", "size") for a in "zyx"}
    coords = np.argwhere(mask).astype(np.float64)
    lo, hi = np.percentile(coords, 5, axis=0), np.percentile(coords, 95, axis=0)
    extent = np.array(r["box"][1::2]) - np.array(r["box"][0::2])
    centre = _box_position(coords.mean(axis=0), r["box"])
    for a, axis in enumerate("zyx"):
        out[f"heart.centre_{axis}"] = float(centre[a])
        out[f"heart.size_{axis}"] = float((hi[a] - lo[a] + 1) / max(extent[a], 1))
    return out


def geometry(r: dict, spacing: tuple[float, float, float]) -> dict:
    hu = r["hu"]
    f, _, opened, body_small, near_small = r["small"]
    sz, sy, sx = (float(s) for s in spacing)
    py, px = sy * f[1], sx * f[2]
    z0, z1, y0, y1, x0, x1 = r["box"]
    bx0, bx1 = x0 // f[2], (x1 - 1) // f[2]
    s0, s1 = r["slab"]
    widths, cut, sides, arms, table = [], [], [], [], []
    for z in range(s0, s1):
        body = body_small[z]
        cols = np.flatnonzero(body.any(axis=0))
        rows = np.flatnonzero(body.any(axis=1))
        if cols.size == 0:
            continue
        widths.append((cols[-1] - cols[0] + 1) * px)
        cut.append(cols[0] == 0 or cols[-1] == body.shape[1] - 1)
        sides.append(((bx0 - cols[0]) * px + (cols[-1] - bx1) * px) / 2)
        labels, n = ndimage.label(opened[z] & ~body)
        found = False
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            comp = labels[sl] == i
            area = comp.sum() * py * px / 100.0
            cx = (sl[1].start + sl[1].stop - 1) / 2
            lateral = cx < bx0 or cx > bx1
            above_back = sl[0].stop - 1 < rows[-1]
            found |= bool(area >= 10.0 and lateral and above_back)
        arms.append(found)
        below = r["tissue_any"][z] & ~near_small[z]
        below[: max(rows[-1] - int(round(10.0 / py)), 0)] = False
        table.append(np.flatnonzero(below.any(axis=0)).size * px >= 100.0)
    nz, ny, nx = hu.shape
    width = float(np.median(widths)) if widths else None
    return {
        "geo.fov_x_mm": nx * sx,
        "geo.fov_y_mm": ny * sy,
        "geo.box_z_mm": (z1 - z0) * sz,
        "geo.box_y_mm": (y1 - y0) * sy,
        "geo.box_x_mm": (x1 - x0) * sx,
        "geo.lung_volume_l": float(r["lungs"].sum()) * sz * sy * sx / 1e6,
        "geo.body_width_mm": width,
        "geo.body_over_fov": None if width is None else width / (nx * sx),
        "geo.body_cut_share": float(np.mean(cut)) if cut else None,
        "geo.beyond_box_mm": float(np.median(sides)) if sides else None,
        "geo.arms": float(np.mean(arms)) if arms else None,
        "geo.table": float(np.mean(table)) if table else None,
        "geo.slice_mm": sz,
        "geo.pixel_mm": sx,
        "geo.above_apex_mm": z0 * sz,
        "geo.below_base_mm": (nz - z1) * sz,
    }


def edge(r: dict, spacing: tuple[float, float, float], max_profiles: int = 3000) -> dict:
    """10–90 % rise distance and overshoot of lung → soft tissue profiles (module docstring)."""
    hu, lungs = r["hu"], r["lungs"]
    s0, s1 = r["slab"]
    sy, sx = float(spacing[1]), float(spacing[2])
    lung = lungs[s0:s1]
    boundary = lung & ~_in_plane(lung, 1, grow=False)
    points = np.argwhere(boundary)
    none = {"edge.rise_mm": None, "edge.overshoot_hu": None, "edge.profiles": 0}
    if len(points) == 0:
        return none
    points = points[np.linspace(0, len(points) - 1, min(max_profiles, len(points))).astype(int)]
    t = np.arange(-EDGE_HALF_MM, EDGE_HALF_MM + 1e-6, EDGE_STEP_MM)
    widths, overshoots = [], []
    for z in np.unique(points[:, 0]):
        image = hu[s0 + z].astype(np.float64)
        smooth = ndimage.gaussian_filter(image, (1.5 / sy, 1.5 / sx))
        gy, gx = np.gradient(smooth, sy, sx)
        for _, y, x in points[points[:, 0] == z]:
            g = np.array([gy[y, x], gx[y, x]])
            norm = np.hypot(*g)
            if norm == 0:
                continue
            d = g / norm  # towards higher HU: lung → tissue, in mm
            coords = np.stack([y + t * d[0] / sy, x + t * d[1] / sx])
            profile = ndimage.map_coordinates(image, coords, order=1, mode="nearest")
            low = np.median(profile[t <= -3.5])
            high = np.median(profile[t >= 3.5])
            if low > -600 or not (EDGE_TISSUE[0] <= high <= EDGE_TISSUE[1]):
                continue
            p = (profile - low) / (high - low)
            above = np.flatnonzero(p >= 0.9)
            if above.size == 0:
                continue
            k90 = above[0]
            below = np.flatnonzero(p[:k90] < 0.1)
            if below.size == 0 or k90 == 0:
                continue
            k10 = below[-1]
            x10 = t[k10] + (0.1 - p[k10]) / (p[k10 + 1] - p[k10]) * EDGE_STEP_MM
            x90 = t[k90 - 1] + (0.9 - p[k90 - 1]) / (p[k90] - p[k90 - 1]) * EDGE_STEP_MM
            widths.append(x90 - x10)
            overshoots.append(profile[(t >= 0) & (t < 3.5)].max() - high)
    if len(widths) < 20:
        return none | {"edge.profiles": len(widths)}
    return {
        "edge.rise_mm": float(np.median(widths)),
        "edge.overshoot_hu": float(np.median(overshoots)),
        "edge.profiles": len(widths),
    }


def streaks(r: dict, spacing: tuple[float, float, float], soft_std: float | None) -> dict:
    hu, mean, std = r["hu"], r["mean"], r["std"]
    dense = (hu > DENSE_HU) & r["body"]
    out: dict = {"streak.dense_ml": float(dense.sum()) * float(np.prod(spacing)) / 1000.0}
    if not dense.any() or not soft_std:
        return out | {"streak.ring_ratio": None}
    from aidnet.lung.grid import block_any, upsample_nearest

    f = r["small"][0]
    steps = (1e6, float(spacing[1]) * f[1], float(spacing[2]) * f[2])  # in-plane distance only
    distance = ndimage.distance_transform_edt(~block_any(dense, f), sampling=steps)
    ring = upsample_nearest((distance >= 3.0) & (distance <= 10.0), hu.shape, f)
    ring &= r["body"] & ~r["lungs"] & (mean >= -150) & (mean <= 150)
    if not ring.any():
        return out | {"streak.ring_ratio": None}
    return out | {"streak.ring_ratio": float(np.median(std[ring])) / soft_std}


def channel(volume, lungs: np.ndarray) -> dict:
    """``channel.*`` (see the module docstring)."""
    from aidnet.config import load_config
    from aidnet.preprocess import calcium_candidates
    from aidnet.preprocess.config import for_training

    mask = calcium_candidates(volume, for_training(load_config("full")), lungs)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * float(np.prod(volume.spacing))
    return {
        "channel.count": int(n),
        "channel.largest_mm3": float(sizes.max()) if n else 0.0,
        "channel.big_ml": float(sizes[sizes > 1000.0].sum()) / 1000.0,
        "channel.total_ml": float(sizes.sum()) / 1000.0,
    }


def measure(volume, lungs: np.ndarray | None = None) -> dict:
    """Every measurement of one scan, as a flat ``{name: number or None}``."""
    spacing = tuple(float(s) for s in volume.spacing)
    r = find_regions(volume, lungs)
    out = hu_classes(r)
    out |= noise(r, spacing)  # type: ignore[arg-type]
    out |= calcium(r, spacing)  # type: ignore[arg-type]
    out |= channel(volume, r["lungs"])
    out |= heart(r, spacing)  # type: ignore[arg-type]
    out |= geometry(r, spacing)  # type: ignore[arg-type]
    out |= edge(r, spacing)  # type: ignore[arg-type]
    out |= streaks(r, spacing, out["noise.soft_std"])  # type: ignore[arg-type]
    return out


def phantom_paths(source: Path, n: int) -> list[Path]:
    """``n`` scans of a phantom cohort (folder with manifest.csv, or the manifest): the first
    visit of each subject first, then the next visits."""
    from aidnet.data.manifest import read_manifest

    manifest = source / "manifest.csv" if source.is_dir() else source
    records = read_manifest(manifest)
    order: dict[str, int] = {}
    ranked = []
    for record in records:
        rank = order.get(record.subject, 0)
        order[record.subject] = rank + 1
        ranked.append((rank, len(ranked), record.path))
    return [path for _, _, path in sorted(ranked)[:n]]


def _measure_file(path: Path) -> tuple[dict, float]:
    from aidnet.io.read import read_volume

    start = time.perf_counter()
    result = measure(read_volume(path))
    return result, time.perf_counter() - start


def summarise(phantom: list[dict], real: dict[str, dict]) -> dict:
    """Per measurement: the phantom's median, range and n, and each real scan's value. ``gap``:
    how far the farthest real value lies outside the phantom's range, in units of that range
    (at least 10 % of the phantom's median; "inf" when every phantom gives the same value);
    0 inside the range, None for counts that only say how much a measurement rests on."""
    keys = list(dict.fromkeys(k for m in [*phantom, *real.values()] for k in m))
    out = {}
    for key in keys:
        values = np.array([m[key] for m in phantom if m.get(key) is not None], dtype=np.float64)
        row: dict = {"phantom": None, "real": {m: real[m].get(key) for m in real}, "gap": None}
        if values.size:
            lo, hi, mid = float(values.min()), float(values.max()), float(np.median(values))
            row["phantom"] = {"median": mid, "min": lo, "max": hi, "n": int(values.size)}
        if values.size and not key.endswith(DIAGNOSTIC):
            scale = max(hi - lo, 0.1 * abs(mid))
            gap = 0.0
            for value in row["real"].values():
                if value is not None and not lo <= value <= hi:
                    gap = max(gap, max(lo - value, value - hi) / scale if scale else np.inf)
            row["gap"] = "inf" if np.isinf(gap) else gap
        out[key] = row
    return out


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}"


def markdown(summary: dict, real_names: list[str]) -> str:
    """The summary as a Markdown table; real values outside the phantom's range in bold."""
    head = ["measurement", "phantom median [min – max]", *real_names, "gap"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in summary.items():
        p = row["phantom"]
        cell = "–" if p is None else f"{_fmt(p['median'])} [{_fmt(p['min'])} – {_fmt(p['max'])}]"
        reals = []
        for name in real_names:
            value = row["real"].get(name)
            outside = (
                row["gap"] is not None and value is not None and not p["min"] <= value <= p["max"]
            )
            reals.append(f"**{_fmt(value)}**" if outside else _fmt(value))
        gap = row["gap"]
        gap = "∞" if gap == "inf" else (f"{gap:.1f}" if gap else "")
        lines.append(f"| `{key}` | {cell} | " + " | ".join(reals) + f" | {gap} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, nargs="+", required=True, help="real CT files")
    parser.add_argument("--phantom", type=Path, required=True, help="cohort folder or manifest")
    parser.add_argument("--n", type=int, default=6, help="phantom scans to measure")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    args = parser.parse_args(argv)
    from aidnet.errors import AidnetError

    start = time.perf_counter()
    try:
        if args.n < 1 or args.workers < 1:
            raise AidnetError("--n and --workers must be at least 1")
        for path in args.real:
            if not path.exists():
                raise AidnetError(f"{path}: real scan not found")
        phantoms = phantom_paths(args.phantom, args.n)
        paths = [*phantoms, *args.real]
        if args.workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(args.workers) as pool:
                results = list(pool.map(_measure_file, paths))
        else:
            results = [_measure_file(path) for path in paths]
    except AidnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = [path.stem.split(".")[0] for path in args.real]
    measured = dict(zip([str(p) for p in paths], (m for m, _ in results), strict=True))
    real = {name: measured[str(p)] for name, p in zip(names, args.real, strict=True)}
    summary = summarise([measured[str(p)] for p in phantoms], real)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    report = {
        "command": " ".join(["python -m benchmarks.realism", *(argv or sys.argv[1:])]),
        "commit": commit or None,
        "date": time.strftime("%Y-%m-%d"),
        "phantom": [str(p) for p in phantoms],
        "real": {name: str(p) for name, p in zip(names, args.real, strict=True)},
        "seconds_per_scan": {str(p): round(s, 2) for p, (_, s) in zip(paths, results, strict=True)},
        "seconds_total": round(time.perf_counter() - start, 2),
        "scans": measured,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(summary, names))
    print(f"{len(paths)} scans in {report['seconds_total']:.1f} s → {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover - manual run: python -m benchmarks.realism
    raise SystemExit(main())
