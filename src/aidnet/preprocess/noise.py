"""Image noise between the lungs, and an in-plane smoothing that brings a noisy scan down to the
noise the model was trained on.

A sharp reconstruction kernel (a lung or bone kernel) or a thin, low-dose slice leaves the soft
tissue with noise of 50–150 HU. Thresholded at 130 HU, such noise puts thousands of specks into
the calcium channel — an input no training scan looked like. :func:`harmonise_noise` measures
the noise and, above a ceiling, smooths each slice in-plane with the narrowest Gaussian that
brings it under the ceiling, much as a softer kernel would have reconstructed it. Scans at or
under the ceiling are left exactly as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The noise ceiling (HU): the top of the noise range the training phantom is rendered with
#: (8–35 HU at a diagnostic voxel, :mod:`aidnet.phantom.cohort`). Above it a scan is outside
#: what the model has seen.
NOISE_CEILING_HU = 35.0
#: Soft tissue whose noise is measured: blood, myocardium, muscle (local mean, HU)
SOFT_HU = (-20.0, 120.0)
#: In-plane window of the local mean and standard deviation (mm; at least 3 × 3 pixels)
WINDOW_MM = 4.0
#: In-plane Gaussian sigmas tried, narrowest first (mm)
SMOOTHING_MM = (0.3, 0.45, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
#: Fewest soft-tissue voxels for a measurement
MIN_VOXELS = 200
#: Slices read (evenly spaced) to measure the noise and choose the smoothing: noise varies
#: slowly along the body, and a thin-slice scan would otherwise be read hundreds of times over
READ_SLICES = 32


@dataclass(frozen=True)
class Noise:
    """What :func:`harmonise_noise` measured (``noise_hu``, None where too little soft tissue
    was seen) and the in-plane Gaussian sigma it smoothed with (``smoothed_mm``, 0: none)."""

    noise_hu: float | None
    smoothed_mm: float

    def to_dict(self) -> dict:
        hu = None if self.noise_hu is None else round(self.noise_hu, 1)
        return {"noise_hu": hu, "smoothed_mm": self.smoothed_mm}


def local_mean_std(hu: np.ndarray, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Box mean and standard deviation of ``hu`` over windows of ``size`` voxels (float32)."""
    from scipy import ndimage

    hu = np.asarray(hu, dtype=np.float32)
    mean = ndimage.uniform_filter(hu, size=size)
    square = ndimage.uniform_filter(hu * hu, size=size)
    square -= mean * mean
    np.maximum(square, 0.0, out=square)
    return mean, np.sqrt(square, out=square)


def _window(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Odd in-plane window of about :data:`WINDOW_MM`, at least 3 pixels, one slice deep."""
    y, x = (max(3, 2 * int(round(WINDOW_MM / float(s) / 2)) + 1) for s in spacing[1:])
    return 1, y, x


def soft_tissue_noise(
    hu: np.ndarray, region: np.ndarray, spacing: tuple[float, float, float]
) -> float | None:
    """The noise (HU) of ``hu`` in its soft tissue inside ``region`` (bool, same shape): the
    median of the in-plane local standard deviation over the voxels whose local mean lies in
    :data:`SOFT_HU`. Edges between tissues are a minority there and the median ignores them.
    None when fewer than :data:`MIN_VOXELS` such voxels exist."""
    size = _window(spacing)
    mean, std = local_mean_std(hu, size)
    soft = region & (mean >= SOFT_HU[0]) & (mean <= SOFT_HU[1])
    if int(soft.sum()) < MIN_VOXELS:
        return None
    n = size[1] * size[2]
    return float(np.sqrt(float(np.median(np.square(std[soft]))) * n / (n - 1)))


def smooth_in_plane(
    hu: np.ndarray, spacing: tuple[float, float, float], sigma_mm: float
) -> np.ndarray:
    """Each slice of ``hu`` blurred by an in-plane Gaussian of ``sigma_mm`` (float32)."""
    from scipy import ndimage

    sigma = (0.0, sigma_mm / float(spacing[1]), sigma_mm / float(spacing[2]))
    return ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), sigma)


def harmonise_noise(
    hu: np.ndarray,
    region: np.ndarray,
    spacing: tuple[float, float, float],
    ceiling: float = NOISE_CEILING_HU,
) -> tuple[np.ndarray, Noise]:
    """(``hu`` or its smoothed copy, what was measured before and done: :class:`Noise`).

    Unchanged (sigma 0) when the noise is at most ``ceiling`` or cannot be measured; else
    smoothed in-plane with the narrowest sigma of :data:`SMOOTHING_MM` that brings the measured
    noise to the ceiling or under it (the widest when none does). Noise and smoothing are read
    on at most :data:`READ_SLICES` evenly spaced slices; the smoothing is applied to all."""
    pick = np.unique(
        np.linspace(0, hu.shape[0] - 1, min(READ_SLICES, hu.shape[0])).round().astype(int)
    )
    some, where = hu[pick], region[pick]
    noise = soft_tissue_noise(some, where, spacing)
    if noise is None or noise <= ceiling:
        return hu, Noise(noise, 0.0)
    for sigma_mm in SMOOTHING_MM:
        after = soft_tissue_noise(smooth_in_plane(some, spacing, sigma_mm), where, spacing)
        if after is None or after <= ceiling:
            break
    return smooth_in_plane(hu, spacing, sigma_mm), Noise(noise, sigma_mm)
