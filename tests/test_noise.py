"""The noise ceiling: a scan noisier than the training phantom is smoothed in-plane down to it,
and every other scan is left exactly as it is."""

import numpy as np
import pytest

from aidnet.preprocess import PreprocessConfig, preprocess_volume
from aidnet.preprocess.noise import (
    NOISE_CEILING_HU,
    SMOOTHING_MM,
    harmonise_noise,
    smooth_in_plane,
    soft_tissue_noise,
)
from test_lung import synthetic_chest


def _high_passed(shape, sd, rng):
    """Pixel-level noise as a sharp kernel leaves it (white less part of its blur)."""
    from scipy import ndimage

    white = rng.standard_normal(shape).astype(np.float32)
    white -= 0.8 * ndimage.gaussian_filter(white, (0.0, 1.0, 1.0))
    return white * np.float32(sd / white.std())


@pytest.mark.parametrize("pixel_mm", [0.6, 1.6])
@pytest.mark.parametrize("sd", [10.0, 30.0, 80.0])
def test_noise_is_read_from_soft_tissue_at_any_pixel_size(pixel_mm, sd):
    """White noise on soft tissue with fat and bone edges in it reads within 10 % of its
    standard deviation, on coarse and fine pixels alike."""
    rng = np.random.default_rng(0)
    hu = np.full((6, 160, 160), 40.0, dtype=np.float32)
    hu[:, :, :40] = -100.0  # fat
    hu[:, 60:70, 60:70] = 700.0  # bone
    hu += rng.normal(0.0, sd, hu.shape).astype(np.float32)
    region = np.ones(hu.shape, dtype=bool)
    noise = soft_tissue_noise(hu, region, (5.0, pixel_mm, pixel_mm))
    assert noise == pytest.approx(sd, rel=0.1)


def test_noise_is_not_read_without_enough_soft_tissue():
    hu = np.full((2, 40, 40), -850.0, dtype=np.float32)  # lung only
    assert soft_tissue_noise(hu, np.ones(hu.shape, dtype=bool), (5.0, 0.7, 0.7)) is None
    assert harmonise_noise(hu, np.ones(hu.shape, dtype=bool), (5.0, 0.7, 0.7))[1].smoothed_mm == 0.0


def test_a_scan_under_the_ceiling_is_left_exactly_as_it_is():
    rng = np.random.default_rng(1)
    hu = (40.0 + rng.normal(0.0, 20.0, (4, 96, 96))).astype(np.float32)
    out, record = harmonise_noise(hu, np.ones(hu.shape, dtype=bool), (5.0, 0.7, 0.7))
    noise, sigma = record.noise_hu, record.smoothed_mm
    assert out is hu and sigma == 0.0 and noise == pytest.approx(20.0, rel=0.1)


@pytest.mark.parametrize("sd", [50.0, 90.0, 150.0])
def test_a_noisy_scan_gets_the_narrowest_smoothing_that_brings_it_under(sd):
    rng = np.random.default_rng(2)
    spacing = (5.0, 0.65, 0.65)
    hu = 40.0 + _high_passed((4, 128, 128), sd, rng)
    region = np.ones(hu.shape, dtype=bool)
    out, record = harmonise_noise(hu, region, spacing)
    noise, sigma = record.noise_hu, record.smoothed_mm
    assert noise == pytest.approx(sd, rel=0.1)
    assert sigma in SMOOTHING_MM
    after = soft_tissue_noise(out, region, spacing)
    assert after is not None and after <= NOISE_CEILING_HU
    narrower = [s for s in SMOOTHING_MM if s < sigma]
    if narrower:  # the next narrower one would not have done
        too_little = soft_tissue_noise(smooth_in_plane(hu, spacing, narrower[-1]), region, spacing)
        assert too_little is not None and too_little > NOISE_CEILING_HU
    assert out.shape == hu.shape and abs(float(out.mean()) - 40.0) < 1.0


def test_noise_ceiling_keeps_noise_out_of_the_calcium_channel():
    """A chest with a sharp kernel's noise: without the ceiling, specks over 130 HU fill the
    calcium channel; with it, the plaque stays and the specks go; the sample says what was
    measured and done. A quiet chest preprocesses exactly as without the option; the option
    has its own cache key."""
    volume, _ = synthetic_chest((40, 160, 160), (5.0, 2.0, 2.0), gap_mm=30.0)
    hu = np.asarray(volume.array).astype(np.float32)
    hu[20, 60:64, 74:78] = 600.0  # a plaque between the lungs
    plain, ceiling = (
        PreprocessConfig((16, 32, 32)),
        PreprocessConfig((16, 32, 32), noise_ceiling=True),
    )
    assert plain.key() != ceiling.key() and "noise_ceiling" not in plain.to_dict()

    quiet = volume.with_array(hu)
    a, b = preprocess_volume(quiet, plain), preprocess_volume(quiet, ceiling)
    assert np.array_equal(a.image, b.image) and a.noise is None
    assert b.noise is not None and b.noise.smoothed_mm == 0.0

    noisy = volume.with_array(hu + _high_passed(hu.shape, 90.0, np.random.default_rng(3)))
    flooded, kept = preprocess_volume(noisy, plain), preprocess_volume(noisy, ceiling)
    assert kept.noise is not None and kept.noise.smoothed_mm > 0.0
    assert kept.noise.noise_hu == pytest.approx(90.0, rel=0.15)
    assert kept.noise.to_dict()["smoothed_mm"] == kept.noise.smoothed_mm
    quiet_count = int(a.calcium.sum())  # the plaque and the spine
    assert flooded.calcium.sum() > 5 * quiet_count
    assert kept.calcium.sum() < 1.5 * quiet_count
    assert kept.calcium[20 - kept.geometry.crop_box[0]].any()  # the plaque's slice keeps it


def test_a_thin_slice_scan_is_read_on_a_sample_of_its_slices_and_smoothed_whole():
    """300 slices: the reading (from at most READ_SLICES of them) matches the whole scan's, and
    every slice is smoothed, not only the ones read."""
    from aidnet.preprocess.noise import READ_SLICES

    rng = np.random.default_rng(4)
    spacing = (1.0, 0.7, 0.7)
    hu = 40.0 + _high_passed((300, 64, 64), 70.0, rng)
    region = np.ones(hu.shape, dtype=bool)
    assert READ_SLICES < 300
    out, record = harmonise_noise(hu, region, spacing)
    noise, sigma = record.noise_hu, record.smoothed_mm
    whole = soft_tissue_noise(hu, region, spacing)
    assert whole is not None and noise == pytest.approx(whole, rel=0.03)
    assert sigma > 0.0
    assert np.array_equal(out, smooth_in_plane(hu, spacing, sigma))
