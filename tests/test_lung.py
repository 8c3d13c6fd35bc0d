"""Lung segmentation and lung hull on synthetic chest-like volumes with known lungs."""

import numpy as np
import pytest

from aidnet.errors import AidnetError
from aidnet.io.volume import Volume, canonical_affine
from aidnet.lung import lung_hull, segment_lungs
from aidnet.lung.hull import slice_hulls


def synthetic_chest(
    shape=(60, 96, 96), spacing=(4.0, 4.0, 4.0), gap_mm=30.0, seed=0
) -> tuple[Volume, np.ndarray]:
    """Body ellipse in air on a table with side rails, two lungs (1 right, 2 left), a trachea
    and main bronchi, a spine, lung vessels; returns the volume and the true lung labels."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    sz, sy, sx = spacing
    z = (np.arange(nz) * sz)[:, None, None]
    y = ((np.arange(ny) - (ny - 1) / 2) * sy)[None, :, None]
    x = ((np.arange(nx) - (nx - 1) / 2) * sx)[None, None, :]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body_b = 0.30 * ny * sy
    body = (x / (0.40 * nx * sx)) ** 2 + (y / body_b) ** 2 <= 1.0
    hu[np.broadcast_to(body, shape)] = 40.0
    table = (y >= body_b + 6) & (y <= body_b + 14) & (np.abs(x) <= 0.45 * nx * sx)
    rails = (y >= body_b - 30) & (y <= body_b + 14) & (np.abs(np.abs(x) - 0.40 * nx * sx) <= 6)
    hu[np.broadcast_to(table | rails, shape)] = 150.0
    zc, lz = nz * sz * 0.55, nz * sz * 0.35
    lx, ly = 0.16 * nx * sx, 0.2 * ny * sy
    truth = np.zeros(shape, dtype=np.uint8)
    for label, side in ((1, -1), (2, 1)):
        cx = side * (gap_mm / 2 + lx)
        lung = ((z - zc) / lz) ** 2 + ((y - 5) / ly) ** 2 + ((x - cx) / lx) ** 2 <= 1.0
        truth[lung] = label
    hu[truth > 0] = -850.0
    # trachea from the top down to the carina, bronchi into each lung
    carina = zc - 0.45 * lz
    trachea = (np.hypot(x, y + 10) <= 9) & (z <= carina)
    for side in (-1, 1):
        t = np.clip((z - carina) / 30.0, 0, 1)
        trachea |= (
            (np.hypot(x - side * t * (gap_mm / 2 + 12), y + 10) <= 6)
            & (z >= carina)
            & (z <= carina + 30)
        )
    hu[trachea & (truth == 0)] = -1000.0
    spine = (np.hypot(x, y - body_b + 25) <= 18) & (z >= 0)
    hu[np.broadcast_to(spine, shape)] = 700.0
    for label in (1, 2):  # a few vessels / nodules inside each lung
        zz, yy, xx = np.nonzero(truth == label)
        for i in rng.choice(zz.size, 4, replace=False):
            blob = ((z - zz[i] * sz) ** 2 + (y - y.ravel()[yy[i]]) ** 2) <= 36
            blob = blob & ((x - x.ravel()[xx[i]]) ** 2 <= 36)
            hu[blob & (truth == label)] = 40.0
    hu += rng.normal(0, 20, shape).astype(np.float32)
    return Volume(array=hu, spacing=spacing, affine=canonical_affine(spacing)), truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def voxel_of(volume: Volume, z_mm: float, y_mm: float, x_mm: float) -> tuple[int, int, int]:
    """Index of the point given in the synthetic chest's mm frame (y, x centred)."""
    (_nz, ny, nx), (sz, sy, sx) = volume.shape, volume.spacing
    return round(z_mm / sz), round(y_mm / sy + (ny - 1) / 2), round(x_mm / sx + (nx - 1) / 2)


@pytest.mark.parametrize(
    ("shape", "spacing", "gap_mm"),
    [
        ((60, 96, 96), (4.0, 4.0, 4.0), 30.0),  # separate lungs, native grid
        ((48, 320, 320), (5.0, 1.2, 1.2), 0.0),  # lungs touching, 2× working grid
        ((60, 128, 128), (4.0, 3.0, 3.0), -12.0),  # lungs overlapping: split by erosion
    ],
)
def test_segment_lungs_matches_truth_and_sides(shape, spacing, gap_mm):
    volume, truth = synthetic_chest(shape, spacing, gap_mm)
    labels = segment_lungs(volume)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert dice(labels == 1, truth == 1) >= 0.95  # 1 = right lung = smaller x
    assert dice(labels == 2, truth == 2) >= 0.95
    assert np.nonzero(labels == 1)[2].mean() < np.nonzero(labels == 2)[2].mean()
    # the trachea above the lung apices is not lung; nor is the air under the table
    apex = int(np.flatnonzero(truth.any(axis=(1, 2)))[0])
    assert labels[: max(apex - 1, 0)].sum() == 0
    assert not labels[:, -3:, :].any()


def test_segment_lungs_on_int16_phantom():
    from aidnet.phantom import render_pair

    volume, labels, _ = render_pair(11, "small", 1)[0]
    lungs = segment_lungs(volume)
    assert dice(lungs > 0, labels == 3) >= 0.85
    assert not (lungs > 0)[labels == 1].any()  # no coronary calcium inside the lung mask
    assert np.nonzero(lungs == 1)[2].mean() < np.nonzero(lungs == 2)[2].mean()


def test_head_without_lungs_raises(head_ct):
    volume = head_ct
    shape, spacing = volume.shape, volume.spacing
    with pytest.raises(AidnetError, match="no lungs found"):
        segment_lungs(volume)
    tissue = Volume(np.full(shape, 40.0, np.float32), spacing, canonical_affine(spacing))
    with pytest.raises(AidnetError, match="no lungs found"):
        segment_lungs(tissue)


def test_nan_raises():
    volume, _ = synthetic_chest()
    array = volume.array.copy()
    array[3, 4, 5] = np.nan
    with pytest.raises(AidnetError, match="image contains NaN or infinite values"):
        segment_lungs(volume.with_array(array))


def test_lung_hull_bridges_the_lungs_and_dilates():
    mask = np.zeros((9, 30, 40), dtype=np.uint8)
    mask[2:7, 10:20, 5:15] = 1
    mask[2:7, 10:20, 25:35] = 2
    hull = lung_hull(mask, margin_mm=0)
    assert hull.dtype == bool
    assert hull[4, 15, 20] and hull[4, 10:20, 5:35].all()  # the gap between the lungs
    assert not hull[1].any() and hull.sum() == 5 * 10 * 30
    dilated = lung_hull(mask, margin_mm=2)
    assert dilated[0, 15, 20] and not dilated[0, 9, 5]  # city-block distance: 2 along z, 3 here
    assert dilated[4, 8, 20] and not dilated[4, 7, 20]
    assert dilated.sum() > hull.sum()


def test_lung_hull_keeps_a_thin_crescent():
    mask = np.zeros((3, 40, 40), dtype=bool)
    mask[1, 5, 5:35] = True  # an L: its hull is ~8× its area
    mask[1, 5:35, 5] = True
    hull = lung_hull(mask, margin_mm=0)
    assert np.array_equal(hull, mask)


def test_lung_hull_keeps_the_heart_where_the_lungs_thin_to_crescents():
    """Below the widest slices the lungs wrap a large heart: the hull is more than twice the
    lung area there, yet the heart must stay inside the region of interest."""
    yy, xx = np.mgrid[0:60, 0:80]
    mask = np.zeros((4, 60, 80), dtype=bool)
    mask[:2, 10:50, 5:35] = True  # upper slices: two full lungs
    mask[:2, 10:50, 45:75] = True
    crescent = (np.hypot(yy - 30, xx - 40) > 28) & (np.hypot(yy - 30, xx - 40) <= 31)
    mask[2:] = crescent & (np.abs(xx - 40) > 15) & (yy > 12)  # thin rims beside the heart
    hull = lung_hull(mask, margin_mm=0)
    assert slice_hulls(mask[2:3]).sum() == mask[2].sum()  # alone, the rule rejects the hull
    heart = np.hypot(yy - 30, xx - 40) <= 12
    assert hull[3][heart & (yy >= 10) & (yy < 50)].all()
    assert not hull[3][:5].any()  # clipped to the accepted slice's hull: no wider than it


@pytest.mark.slow
def test_lung_dice_on_a_full_size_phantom_scan():
    """512×512 phantom with sub-millimetre pixels: the full-resolution boundary refinement
    brings the mask to the phantom's lung label (Dice ≥ 0.97, issue 3)."""
    from aidnet.phantom import render_pair

    volume, labels, _ = render_pair(7, "full", 1)[0]
    lungs = segment_lungs(volume)
    assert lungs.shape == volume.shape
    assert dice(lungs > 0, labels == 3) >= 0.97
    assert np.nonzero(lungs == 1)[2].mean() < np.nonzero(lungs == 2)[2].mean()


def test_unshifted_stored_values_get_a_hint():
    """A chest saved as raw stored values (air ≈ 0, no −1024 intercept) is no CT in HU."""
    volume, _ = synthetic_chest()
    shifted = volume.with_array(volume.array + 1024.0)
    with pytest.raises(AidnetError, match="rescale intercept"):
        segment_lungs(shifted)


def test_padding_outside_the_field_of_view_is_air():
    """Scanners pad the corners outside the reconstruction circle with −2000 or −3024."""
    volume, truth = synthetic_chest()
    array = volume.array.copy()
    nz, ny, nx = array.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    array[:, np.hypot(yy - ny / 2, xx - nx / 2) > 0.5 * min(ny, nx)] = -3024.0
    labels = segment_lungs(volume.with_array(array))
    assert dice(labels == 1, truth == 1) >= 0.95 and dice(labels == 2, truth == 2) >= 0.95


def test_city_block_distance_is_dsb_dilation_on_any_grid():
    """Unit steps: exactly scipy's 6-connected binary dilation repeated; weighted steps (a
    coarse working grid): exactly the brute-force weighted city-block distance."""
    from scipy import ndimage

    from aidnet.lung.hull import city_block_distance

    rng = np.random.default_rng(3)
    mask = rng.random((12, 14, 16)) < 0.01
    faces = ndimage.generate_binary_structure(3, 1)
    for iterations in (1, 4, 10):
        dilated = ndimage.binary_dilation(mask, structure=faces, iterations=iterations)
        assert np.array_equal(city_block_distance(mask, limit=iterations) <= iterations, dilated)
    steps = np.array([1.0, 2.0, 3.0])
    seeds, grid = np.argwhere(mask), np.indices(mask.shape).reshape(3, -1).T
    brute = (np.abs(grid[:, None, :] - seeds[None]) * steps).sum(-1).min(axis=1)
    assert np.allclose(city_block_distance(mask, tuple(steps)).ravel(), brute)
    hull = lung_hull(mask.astype(np.uint8), margin_mm=6, spacing=(1, 2, 3))
    assert np.array_equal(hull, city_block_distance(slice_hulls(mask), tuple(steps)) <= 6)


@pytest.mark.parametrize("margin", [10.0, 20.0])
def test_region_margin_is_the_same_in_mm_on_any_pixel_size(margin):
    """One chest drawn on 0.6 mm and on 1.6 mm pixels (3 and 5 mm slices): the region of
    interest reaches the same distance beyond the lungs in millimetres, within one working
    voxel (2.5 mm), in-plane and across slices."""
    from aidnet.preprocess.sample import region_hull

    reach = []
    for spacing in ((3.0, 0.6, 0.6), (5.0, 1.6, 1.6)):
        shape = tuple(
            int(round(e / s)) for e, s in zip((150.0, 200.0, 300.0), spacing, strict=True)
        )
        z, y, x = (
            (np.arange(n) + 0.5) * s - e / 2
            for n, s, e in zip(shape, spacing, (150.0, 200.0, 300.0), strict=True)
        )
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        lungs = np.zeros(shape, dtype=bool)
        for side in (-1, 1):  # two ellipsoids, 30 mm apart, half widths 50 × 60 × 50 mm
            lungs |= ((xx - side * 65) / 50) ** 2 + (yy / 60) ** 2 + (zz / 50) ** 2 <= 1
        hull = region_hull(lungs, spacing, margin)
        centre_row = hull[shape[0] // 2, shape[1] // 2]
        xs = x[centre_row]
        column = hull[:, shape[1] // 2, np.argmin(np.abs(x - 65))]
        reach.append((xs.max() - 115.0, z[column].max() - 50.0))
    for (in_plane, across), (in_plane2, across2) in zip(reach, reach[1:], strict=False):
        assert abs(in_plane - in_plane2) <= 2.5 and abs(across - across2) <= 2.5 + 5.0 / 2
    for in_plane, _ in reach:
        assert margin - 2.5 <= in_plane <= margin + 2.5


def test_cardiac_field_of_view_that_cuts_the_lungs(caplog):
    """A calcium-scoring scan's small field of view cuts the lungs at the image edge: DSB2017's
    border rule alone would discard them; lung-dense border air is taken as lung, with a note."""
    volume, truth = synthetic_chest((48, 320, 320), (5.0, 1.2, 1.2), gap_mm=30.0)
    cut = (slice(None), slice(60, 260), slice(60, 260))  # 240 mm around the heart
    small = Volume(volume.array[cut].copy(), volume.spacing, volume.affine)
    assert truth[cut][:, :, 0].any() and truth[cut][:, :, -1].any()  # lungs reach both edges
    with caplog.at_level("WARNING", logger="aidnet"):
        labels = segment_lungs(small)
    assert dice(labels == 1, truth[cut] == 1) >= 0.95 and dice(labels == 2, truth[cut] == 2) >= 0.95
    assert "field of view cuts through the lungs" in caplog.text
    with caplog.at_level("WARNING", logger="aidnet"):
        caplog.clear()
        segment_lungs(volume)  # the whole chest: no note
    assert "field of view" not in caplog.text


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_block_mean_is_the_blocks_summed_in_order(monkeypatch, dtype):
    """Summed slab by slab (a few slices at a time), the mean is bit for bit the sum of the
    fz·fy·fx strided blocks over the whole volume, remainders dropped."""
    from aidnet.lung import grid

    rng = np.random.default_rng(0)
    array = (rng.normal(-400, 500, (23, 37, 41))).astype(dtype)
    factors = (2, 3, 3)
    nz, ny, nx = (n // f for n, f in zip(array.shape, factors, strict=True))
    expected = np.zeros((nz, ny, nx), np.float32)
    for i in range(2):
        for j in range(3):
            for k in range(3):
                expected += array[i : nz * 2 : 2, j : ny * 3 : 3, k : nx * 3 : 3]
    expected *= np.float32(1 / 18)
    for slab_bytes in (1, 5000, 1 << 30):  # one working slice, a few, all at once
        monkeypatch.setattr(grid, "SLAB_BYTES", slab_bytes)
        assert np.array_equal(grid.block_mean(array, factors), expected)


def test_blob_sizes_and_centres_are_scipys():
    from scipy import ndimage

    from aidnet.lung.components import SLICE_2D, blob_sizes_and_centres

    mask = np.random.default_rng(1).random((7, 30, 40)) < 0.3
    labels, n = ndimage.label(mask, structure=SLICE_2D)
    index = np.arange(1, n + 1)
    area, cz, cx = blob_sizes_and_centres(labels, n)
    assert np.array_equal(area, ndimage.sum_labels(np.ones_like(labels), labels, index))
    centres = np.asarray(ndimage.center_of_mass(mask, labels, index))
    assert np.array_equal(cz, centres[:, 0]) and np.array_equal(cx, centres[:, 2])


def test_axis_distance_of_voxels_is_the_full_grid_formula():
    from aidnet.lung.components import axis_distance_mm

    rng = np.random.default_rng(2)
    shape, spacing = (6, 20, 30), (2.5, 0.7, 0.8)
    cy, cx = rng.uniform(5, 15, 6), rng.uniform(5, 25, 6)
    dy = (np.arange(20)[None, :, None] - cy[:, None, None]) * spacing[1]
    dx = (np.arange(30)[None, None, :] - cx[:, None, None]) * spacing[2]
    grid = np.sqrt(dy * dy + dx * dx).astype(np.float32)
    zyx = np.unravel_index(rng.choice(np.prod(shape), 200, replace=False), shape)
    assert np.array_equal(axis_distance_mm(zyx, spacing, (cy, cx)), grid[zyx])
