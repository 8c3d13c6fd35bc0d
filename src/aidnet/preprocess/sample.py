"""Scan → the two-channel AID-Net input on the lungs' bounding box (paper §2.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aidnet.agatston import drop_small_components
from aidnet.errors import AidnetError
from aidnet.io.volume import Volume
from aidnet.lung import lung_hull, segment_lungs
from aidnet.lung.grid import block_any, block_mean, upsample_nearest, working_factors
from aidnet.lung.segment import check_finite
from aidnet.preprocess.config import PreprocessConfig, as_config
from aidnet.preprocess.contrast import check_unenhanced
from aidnet.preprocess.geometry import CropGeometry
from aidnet.preprocess.noise import Noise, harmonise_noise
from aidnet.preprocess.resample import resample_max, resample_mean

HU_LOW, HU_HIGH, CALCIUM_HU = -200.0, 600.0, 130.0
DENSE_HU = 400.0  # where Agatston's top density band begins: full weight in the density channel
# lung on the path to the mediastinum that makes bone "outer": more than a ragged lung edge or a
# fissure, less than any lung a rib lies against
OUTER_LUNG_MM = 10.0
_PATH_CHUNK = 4096  # candidate voxels whose paths are traced at once


@dataclass
class Sample:
    """Network input ``image`` (2, Z, Y, X) float32 and where it sits in the scan; ``calcium``
    is the calcium channel before resampling, on the crop box of the scan's grid (bool)."""

    image: np.ndarray
    geometry: CropGeometry
    calcium: np.ndarray
    #: with ``noise_ceiling``: the soft tissue's noise (HU) as read, and the in-plane Gaussian
    #: sigma (mm) that brought it down (0: left as it was); None without the option
    noise: Noise | None = None


def lung_box(
    lungs: np.ndarray, margin: tuple[int, int, int] = (0, 0, 0)
) -> tuple[int, int, int, int, int, int]:
    """Half-open (z0, z1, y0, y1, x0, x1) bounding box of the nonzero voxels, plus ``margin``."""
    box: list[int] = []
    for axis, pad in zip(((1, 2), (0, 2), (0, 1)), margin, strict=True):
        hits = np.flatnonzero(lungs.any(axis=axis))
        n = lungs.shape[len(box) // 2]
        box += [max(int(hits[0]) - pad, 0), min(int(hits[-1]) + 1 + pad, n)]
    z0, z1, y0, y1, x0, x1 = box
    return z0, z1, y0, y1, x0, x1


def components(calcium: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a bool mask: (labels, count), as ``scipy.ndimage.label``."""
    from scipy import ndimage

    labels, count = ndimage.label(calcium, structure=np.ones((3, 3, 3), dtype=bool))
    return labels, int(count)


def wall_bone(
    calcium: np.ndarray, hull: np.ndarray, labelled: tuple[np.ndarray, int] | None = None
) -> np.ndarray:
    """The components of ``calcium`` (26-connected, bool, on the grid of ``hull``) that reach,
    in-plane, a voxel outside ``hull`` or the grid's in-plane border: bone that crosses the
    chest wall (ribs, sternum, costal cartilage, the spine with its arches). Calcium on the
    heart, the aorta or in lymph nodes lies inside the region and is not touched.
    ``labelled``: :func:`components` of ``calcium`` when already computed."""
    from scipy import ndimage

    outside = np.pad(~np.asarray(hull, dtype=bool), ((0, 0), (1, 1), (1, 1)), constant_values=True)
    cross = ndimage.generate_binary_structure(2, 1)[None]  # in-plane 4-neighbours
    edge = ndimage.binary_dilation(outside, structure=cross)[:, 1:-1, 1:-1]
    labels, _ = labelled or components(calcium)
    touching = np.unique(labels[edge & calcium])
    return np.isin(labels, touching[touching > 0])


def outer_bone(
    calcium: np.ndarray,
    lungs: np.ndarray,
    hull: np.ndarray,
    spacing: tuple[float, float, float],
    min_lung_mm: float = OUTER_LUNG_MM,
    labelled: tuple[np.ndarray, int] | None = None,
) -> np.ndarray:
    """The components of ``calcium`` (26-connected, bool) that lie on the lungs' outer side:
    for most of their voxels, the straight in-plane path to the centre of the slice's region
    (``hull`` less ``lungs``: the mediastinum between the lungs) crosses at least
    ``min_lung_mm`` of lung. Ribs and costal cartilage along the lungs' outer surface are such,
    also where they stay inside the hull's margin; calcium on the heart, the aorta or in the
    hilum has mediastinum, not lung, between it and the centre. ``spacing`` is (z, y, x) mm;
    ``labelled``: :func:`components` of ``calcium`` or of a mask it is made of whole
    components of (component ids without a voxel in ``calcium`` are never outer)."""
    labels, count = labelled or components(calcium)
    if count == 0:
        return np.zeros(calcium.shape, dtype=bool)
    lungs = np.asarray(lungs, dtype=bool)
    region = np.asarray(hull, dtype=bool) & ~lungs
    sy, sx = float(spacing[1]), float(spacing[2])
    votes = np.zeros(count + 1)
    voxels = np.zeros(count + 1)
    for z in np.flatnonzero(calcium.any(axis=(1, 2))):
        points = np.argwhere(calcium[z])
        np.add.at(voxels, labels[z][points[:, 0], points[:, 1]], 1)
        centre = np.argwhere(region[z]).mean(axis=0) if region[z].any() else None
        if centre is None:
            continue
        offset = centre[None, :] - points  # (n, 2) voxels towards the centre
        length = np.hypot(offset[:, 0] * sy, offset[:, 1] * sx)  # mm
        t = np.linspace(0.0, 1.0, int(np.ceil(length.max() / min(sy, sx))) + 2)
        crossed = np.empty(len(points))  # mm of lung on each path
        for start in range(0, len(points), _PATH_CHUNK):  # bounded memory on dense slices
            part = slice(start, start + _PATH_CHUNK)
            path_y = np.rint(points[part, :1] + offset[part, :1] * t).astype(np.intp)
            path_x = np.rint(points[part, 1:] + offset[part, 1:] * t).astype(np.intp)
            crossed[part] = lungs[z][path_y, path_x].mean(axis=1) * length[part]
        hits = points[crossed >= min_lung_mm]
        np.add.at(votes, labels[z][hits[:, 0], hits[:, 1]], 1)
    outer = votes * 2 > voxels
    outer[0] = False
    return outer[labels] & calcium


def input_channels(
    hu: np.ndarray,
    lungs: np.ndarray,
    hull: np.ndarray,
    spacing: tuple[float, float, float] | None = None,
    dim_wall_bone: bool = False,
    dim_outer_bone: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(CT in [0, 1], HU>130 mask) on one grid.

    Lung voxels and voxels outside the dilated hull are set to −200 HU, the rest clipped to
    [−200, 600] and scaled by (HU + 200) / 800. The calcium mask is thresholded on the raw HU and
    then cleared wherever the CT channel was set to −200, so ribs, spine and calcified lung
    nodules outside the region of interest do not leak into it. With ``spacing``, components
    smaller than 1 mm² in-plane (noise, by the Agatston rules) are dropped as well. With
    ``dim_wall_bone``, the parts of bone that cross the region's edge (:func:`wall_bone`) leave
    the calcium mask and are capped at 130 HU in the CT channel: their shape stays, their
    calcium-like brightness goes. ``dim_outer_bone`` does the same to bone on the lungs' outer
    side (:func:`outer_bone`, needs ``spacing``): rib segments that stay inside the hull's margin.
    """
    hidden = lungs | ~hull
    calcium = (hu > CALCIUM_HU) & ~hidden
    if spacing is not None:
        calcium = drop_small_components(calcium, spacing)
    ct = np.clip(hu, HU_LOW, HU_HIGH, dtype=np.float32)
    if dim_wall_bone or dim_outer_bone:
        labelled = components(calcium)  # both rules remove whole components: label once
        bone = np.zeros(calcium.shape, dtype=bool)
        if dim_wall_bone:
            bone |= wall_bone(calcium, hull, labelled)
        if dim_outer_bone:
            if spacing is None:
                raise ValueError("dim_outer_bone needs the voxel spacing")
            bone |= outer_bone(calcium & ~bone, lungs, hull, spacing, labelled=labelled)
        calcium &= ~bone
        np.minimum(ct, np.float32(CALCIUM_HU), out=ct, where=bone)
    ct[hidden] = HU_LOW
    ct -= HU_LOW
    ct *= np.float32(1.0 / (HU_HIGH - HU_LOW))
    return ct, calcium


def calcium_density(ct: np.ndarray, calcium: np.ndarray) -> np.ndarray:
    """The calcium channel with each candidate's density (float32 in [0, 1]): (HU − 130) /
    (400 − 130) capped at 1 on the voxels of ``calcium``, 0 elsewhere; ``ct`` is the CT channel
    of :func:`input_channels`. A noise speck just over the threshold weighs almost nothing, a
    plaque that reaches Agatston's top density band (≥ 400 HU) weighs 1."""
    hu = ct * np.float32(HU_HIGH - HU_LOW) + np.float32(HU_LOW)
    weight = (hu - np.float32(CALCIUM_HU)) * np.float32(1.0 / (DENSE_HU - CALCIUM_HU))
    np.clip(weight, 0.0, 1.0, out=weight)
    weight[~calcium] = 0.0
    return weight


def preprocess_volume(
    volume: Volume,
    config: PreprocessConfig | tuple[int, int, int],
    lungs: np.ndarray | None = None,
) -> Sample:
    """One scan → :class:`Sample` with the AID-Net input of shape (2, *size) (paper §2.1).

    ``config`` is a :class:`PreprocessConfig` or just the network size (Z, Y, X).

    1. ``lungs`` (nonzero = lung; default :func:`aidnet.lung.segment_lungs`) and their dilated
       per-slice convex hull, computed on the 2–2.5 mm working grid and mapped back with nearest
       neighbour (:func:`region_hull`); the hull is widened by ``hull_margin_mm`` along
       6-connected paths (DSB2017's dilation, in millimetres so every scanner gets the same
       region).
    2. Crop to the lungs' bounding box (it holds the heart), widened by ``margin_mm`` (default
       none, as in the paper) within the scan. A contrast-enhanced scan is refused here
       (:func:`aidnet.preprocess.contrast.check_unenhanced`). With ``noise_ceiling``, a crop
       whose soft tissue is noisier than the training phantom is smoothed in-plane down to its
       noise (:func:`aidnet.preprocess.noise.harmonise_noise`; ``Sample.noise`` says what was
       measured and done).
    3. Channel 0: see :func:`input_channels`; channel 1: the HU>130 mask without in-plane
       components under 1 mm² (noise, by the Agatston rules); with ``dim_wall_bone``, bone that
       crosses the region's edge is left out of it and dimmed in channel 0 (with
       ``dim_outer_bone``, also bone on the lungs' outer side); with
       ``calcium_density``, each candidate holds its density instead of 1
       (:func:`calcium_density`).
    4. Resample to ``size`` (Z, Y, X): channel 0 averages each network voxel's footprint,
       channel 1 takes its maximum (small plaques survive downsampling); axes that grow are
       interpolated linearly. Both channels are float32 in [0, 1].
    """
    config = as_config(config)
    box, ct, calcium, noise = _region_of_interest(volume, config, lungs)
    candidates = calcium_density(ct, calcium) if config.calcium_density else calcium
    image = np.stack([resample_mean(ct, config.size), resample_max(candidates, config.size)])
    np.clip(image, 0.0, 1.0, out=image)
    geometry = CropGeometry(
        original_shape=volume.shape,
        original_affine=np.asarray(volume.affine).tolist(),
        crop_box=box,
        network_shape=config.size,
        source=volume.source,
    )
    image = image.astype(np.float32, copy=False)
    return Sample(image=image, geometry=geometry, calcium=calcium, noise=noise)


def calcium_candidates(
    volume: Volume,
    config: PreprocessConfig | tuple[int, int, int],
    lungs: np.ndarray | None = None,
) -> np.ndarray:
    """The voxels the network's calcium channel is made of, on the scan's grid (bool): HU > 130
    inside the lungs' bounding box, outside the lungs and inside their dilated hull, without
    in-plane components under 1 mm². Explanations use it to point at calcifications."""
    box, _, calcium, _ = _region_of_interest(volume, as_config(config), lungs)
    return on_original_grid(calcium, box, volume.shape)


def on_original_grid(
    crop_mask: np.ndarray, box: tuple[int, ...], shape: tuple[int, int, int]
) -> np.ndarray:
    """A mask on the crop box → the same mask on the whole scan grid (False outside the box)."""
    out = np.zeros(shape, dtype=bool)
    z0, z1, y0, y1, x0, x1 = box
    out[z0:z1, y0:y1, x0:x1] = crop_mask
    return out


def region_hull(
    lungs: np.ndarray, spacing: tuple[float, float, float], margin_mm: float
) -> np.ndarray:
    """The lungs' per-slice convex hull widened by ``margin_mm`` (bool, on the grid of ``lungs``,
    voxel size ``spacing``): computed on the 2–2.5 mm working grid, mapped back with nearest
    neighbour. The network's region of interest is this hull less the lungs."""
    lungs = np.asarray(lungs) != 0
    factors = working_factors(spacing, lungs.shape)
    working_mm = tuple(float(s) * f for s, f in zip(spacing, factors, strict=True))
    hull = lung_hull(block_any(lungs, factors), margin_mm, working_mm)  # type: ignore[arg-type]
    return upsample_nearest(hull, lungs.shape, factors)


def _region_of_interest(
    volume: Volume, config: PreprocessConfig, lungs: np.ndarray | None
) -> tuple[tuple[int, int, int, int, int, int], np.ndarray, np.ndarray, Noise | None]:
    """Steps 1–3 of :func:`preprocess_volume`: the crop box, both channels on the crop grid and,
    with ``noise_ceiling``, what the noise step measured and did."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise AidnetError(f"expected a 3-D volume, got an array of shape {array.shape}")
    check_finite(array)
    if lungs is None:
        lungs = segment_lungs(volume)
    elif lungs.shape != array.shape:
        raise AidnetError(f"lung mask shape {lungs.shape} does not match the scan {array.shape}")
    if not np.any(lungs):
        raise AidnetError("no lungs found: the lung mask is empty")
    margin = tuple(int(np.ceil(config.margin_mm / float(s))) for s in volume.spacing)
    box = lung_box(lungs, margin)  # type: ignore[arg-type]
    crop = (slice(box[0], box[1]), slice(box[2], box[3]), slice(box[4], box[5]))
    crop_lungs = lungs[crop] != 0
    factors = working_factors(volume.spacing, crop_lungs.shape)
    working_mm = tuple(float(s) * f for s, f in zip(volume.spacing, factors, strict=True))
    check_unenhanced(block_mean(array[crop], factors), block_any(crop_lungs, factors), working_mm)  # type: ignore[arg-type]
    hull = region_hull(crop_lungs, volume.spacing, config.hull_margin_mm)
    hu = array[crop].astype(np.float32)
    noise = None
    if config.noise_ceiling:
        hu, noise = harmonise_noise(hu, hull & ~crop_lungs, volume.spacing)
    ct, calcium = input_channels(
        hu,
        crop_lungs,
        hull,
        volume.spacing,
        config.dim_wall_bone,
        config.dim_outer_bone,
    )
    return box, ct, calcium, noise
