"""Agatston scorer against hand-computed volumes."""

import numpy as np
import pytest

from aidnet.agatston import agatston, density_weight, risk_category, score_class


def blank(shape=(4, 20, 20)):
    return np.full(shape, -50.0, dtype=np.float32)


def test_empty_image_scores_zero():
    result = agatston(blank(), (3.0, 0.5, 0.5))
    assert result.score == 0.0
    assert result.category == "0"
    assert result.lesions == ()


@pytest.mark.parametrize(
    ("peak", "weight"),
    [
        (129.9, 0),
        (130, 1),
        (199.9, 1),
        (200, 2),
        (299, 2),
        (300, 3),
        (399.9, 3),
        (400, 4),
        (1100, 4),
    ],
)
def test_density_weight_boundaries(peak, weight):
    assert density_weight(np.array([peak]))[0] == weight


def test_single_lesion_hand_computed():
    hu = blank()
    hu[1, 5:8, 5:9] = 250  # 12 pixels, peak 250 -> weight 2
    hu[1, 6, 6] = 310  # peak now 310 -> weight 3
    result = agatston(hu, (3.0, 0.5, 0.5))
    area = 12 * 0.25
    assert result.score == pytest.approx(area * 3 * 3.0 / 3)
    assert len(result.lesions) == 1
    assert result.lesions[0].slice_index == 1
    assert result.lesions[0].peak_hu == pytest.approx(310)


def test_below_threshold_does_not_count():
    hu = blank()
    hu[2, 2:6, 2:6] = 129
    assert agatston(hu, (3.0, 1.0, 1.0)).score == 0.0


def test_one_square_millimetre_edge():
    hu = blank()
    hu[0, 2:4, 2:4] = 500  # 4 pixels of 0.5 x 0.5 = exactly 1 mm^2: counts
    hu[2, 10, 10:13] = 500  # 3 pixels = 0.75 mm^2: too small
    result = agatston(hu, (3.0, 0.5, 0.5))
    assert len(result.lesions) == 1
    assert result.score == pytest.approx(1.0 * 4)


def test_thickness_scaling():
    hu = blank()
    hu[1, 5:9, 5:9] = 450
    thin = agatston(hu, (1.5, 1.0, 1.0)).score
    thick = agatston(hu, (3.0, 1.0, 1.0)).score
    assert thick == pytest.approx(16 * 4)
    assert thin == pytest.approx(thick / 2)
    assert agatston(hu, (1.5, 1.0, 1.0), slice_thickness=3.0).score == pytest.approx(thick)


def test_eight_connectivity_in_plane_but_not_across_slices():
    hu = blank()
    hu[1, 5, 5] = hu[1, 6, 6] = 300  # diagonal neighbours: one component of 2 pixels
    hu[2, 5, 5] = hu[2, 6, 6] = 300  # same in the next slice: a separate component
    result = agatston(hu, (3.0, 1.0, 1.0))
    assert len(result.lesions) == 2
    assert result.score == pytest.approx(2 * (2 * 3))


def test_mask_keeps_only_overlapping_components():
    hu = blank()
    hu[1, 2:5, 2:5] = 500  # coronary, 9 px
    hu[1, 12:16, 12:16] = 500  # bone, 16 px
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[1, 3, 3] = 1  # touches the first component at one voxel
    mask[1, 12:16, 12:16] = 2
    assert agatston(hu, (3.0, 1.0, 1.0), mask=mask, label=1).score == pytest.approx(9 * 4)
    assert agatston(hu, (3.0, 1.0, 1.0), mask=mask, label=2).score == pytest.approx(16 * 4)
    assert agatston(hu, (3.0, 1.0, 1.0)).score == pytest.approx(25 * 4)


def test_mask_scores_a_lesion_without_the_other_labels_calcium_it_touches():
    hu = blank()
    hu[1, 2:5, 2:5] = 250  # coronary plaque, 9 px, weight 2 on its own
    hu[1, 2:5, 1] = 140  # its unlabelled rim, 3 px
    hu[1, 2:6, 5:9] = 900  # aortic wall calcium beside it, 16 px, one component with both
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[1, 2:5, 2:5] = 1
    mask[1, 2:6, 5:9] = 2
    coronary = agatston(hu, (3.0, 1.0, 1.0), mask=mask, label=1)
    assert [lesion.voxels for lesion in coronary.lesions] == [12]
    assert coronary.lesions[0].peak_hu == 250 and coronary.score == pytest.approx(12 * 2)
    assert agatston(hu, (3.0, 1.0, 1.0), mask=mask, label=2).score == pytest.approx(16 * 4)
    assert agatston(hu, (3.0, 1.0, 1.0)).score == pytest.approx(28 * 4)  # no mask: one lesion


@pytest.mark.parametrize(
    ("score", "category", "cls"),
    [
        (0, "0", 0),
        (0.5, "1-10", 1),
        (10, "1-10", 1),
        (10.5, "11-100", 1),
        (100, "11-100", 1),
        (250, "101-400", 1),
        (399.9, "101-400", 1),
        (400, "101-400", 2),
        (400.1, ">400", 2),
    ],
)
def test_categories_and_classes(score, category, cls):
    assert risk_category(score) == category
    assert score_class(score) == cls


@pytest.mark.parametrize("pixel_mm", [0.3, 0.5, 0.6, 0.7, 0.75, 0.9, 1.0, 1.2])
def test_drop_small_components_matches_labelling(pixel_mm):
    """The neighbour-count shortcut gives exactly what labelling components gives."""
    from scipy import ndimage

    from aidnet.agatston import drop_small_components

    rng = np.random.default_rng(int(pixel_mm * 100))
    eight = np.zeros((3, 3, 3), dtype=bool)
    eight[1] = True
    for density in (0.03, 0.1, 0.25):
        mask = rng.random((4, 30, 30)) < density
        labels, _ = ndimage.label(mask, structure=eight)
        sizes = np.bincount(labels.ravel())
        keep = sizes * pixel_mm * pixel_mm >= 1.0
        keep[0] = False
        out = drop_small_components(mask, (2.0, pixel_mm, pixel_mm))
        assert np.array_equal(out, keep[labels])
        assert out.sum() < mask.sum() or pixel_mm >= 1.0
