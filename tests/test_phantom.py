"""The synthetic cohort generator: geometry, determinism, classes, labels and exact scores."""

import csv

import numpy as np
import pytest

from aidnet.agatston import agatston, score_class
from aidnet.io.nifti import read_nifti
from aidnet.phantom import make_cohort, render_pair


@pytest.fixture(scope="module")
def negative():
    return render_pair(11, "small", 0)


@pytest.fixture(scope="module")
def severe():
    return render_pair(12, "small", 2)


def test_small_scan_geometry(negative):
    for volume, labels, info in negative:
        assert volume.array.dtype == np.int16 and labels.dtype == np.uint8
        nz, ny, nx = volume.shape
        assert (ny, nx) == (128, 128) and 50 <= nz <= 100
        sz, sy, sx = volume.spacing
        assert sz in (4.0, 4.5, 5.0) and 2.8 <= sy == sx <= 3.6
        assert info["thickness_mm"] == sz and info["pixel_mm"] == sx
        # sigma 8-35 HU at a 0.75 x 0.75 x 2 mm voxel, lower on the coarse grid
        scale = 2 * np.sqrt(0.75 * 0.75 * 2.0 / (sz * sy * sx))
        assert 8 * scale - 1e-6 <= info["noise_hu"] <= 35 * scale + 1e-6
        np.testing.assert_allclose(np.abs(np.diag(volume.affine[:3, :3][:, ::-1])), [sx, sy, sz])
        assert volume.affine[0, 2] < 0 and volume.affine[1, 1] < 0 and volume.affine[2, 0] < 0
        assert labels.shape == volume.shape
        assert set(np.unique(labels)) <= {0, 2, 3}


def test_same_seed_same_arrays_other_seed_differs(negative):
    again = render_pair(11, "small", 0)
    for (v1, l1, _), (v2, l2, _) in zip(negative, again, strict=True):
        np.testing.assert_array_equal(v1.array, v2.array)
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_array_equal(v1.affine, v2.affine)
    other = render_pair(13, "small", 0)
    assert other[0][0].shape != negative[0][0].shape or not np.array_equal(
        other[0][0].array, negative[0][0].array
    )


def _lung_centroid_ras(volume, labels):
    idx = np.argwhere(labels == 3).mean(axis=0)
    return volume.affine @ np.r_[idx, 1.0]


def test_rescan_is_a_new_acquisition_of_the_same_anatomy(negative):
    (v1, l1, i1), (v2, l2, i2) = negative
    assert i1["shift_mm"] != i2["shift_mm"] and i1["noise_hu"] != i2["noise_hu"]
    # the lungs moved with the patient shift (in-plane; z also moves with the planned range)
    moved = _lung_centroid_ras(v2, l2)[:2] - _lung_centroid_ras(v1, l1)[:2]
    expected = -(np.array(i2["shift_mm"][:2]) - np.array(i1["shift_mm"][:2]))  # RA = -(x, y)
    np.testing.assert_allclose(moved, expected, atol=6.0)
    # same anatomy: lung volumes agree within a few per cent
    vol1 = (l1 == 3).sum() * np.prod(v1.spacing)
    vol2 = (l2 == 3).sum() * np.prod(v2.spacing)
    assert 2.0e6 < vol1 < 9.0e6 and abs(vol1 - vol2) / vol1 < 0.1


def test_forced_classes(negative, severe):
    for volume, labels, info in negative:
        assert info["agatston"] == 0.0 and info["category"] == "0"
        assert agatston(volume.array, volume.spacing, mask=labels, label=1).score == 0.0
    for volume, labels, info in severe:
        assert (labels == 1).any()
        assert info["agatston"] >= 400 and score_class(info["agatston"]) == 2
        full = agatston(volume.array, volume.spacing, mask=labels, label=1).score
        assert full == pytest.approx(info["agatston"], rel=1e-12)
    mild = render_pair(21, "small", 1)
    assert all(0 < info["agatston"] < 400 for _, _, info in mild)


def test_negative_subjects_still_have_bright_non_coronary_voxels(negative):
    for volume, labels, _ in negative:
        bright = volume.array >= 130
        assert bright.sum() > 1000  # bone, cartilage, table ...
        assert not (bright & (labels == 1)).any()
        assert (labels == 3).sum() > 10_000


def test_distractors_are_drawn_for_both_classes():
    from aidnet.phantom.anatomy import draw_subject

    counts = {0: [], 2: []}
    for cls in counts:
        for s in range(12):
            counts[cls].append(len(draw_subject(np.random.default_rng(s), cls).distractors))
    assert sum(c > 0 for c in counts[0]) >= 6 and sum(c > 0 for c in counts[2]) >= 6


def test_full_size_scan_covers_the_chest():
    volume, labels, info = render_pair(5, "full", 1)[0]
    nz, ny, nx = volume.shape
    assert (ny, nx) == (512, 512) and 0.6 <= info["pixel_mm"] <= 0.9
    assert 1.0 <= info["thickness_mm"] <= 5.0
    assert 8 <= info["noise_hu"] <= 35  # full-size voxels get the drawn sigma unscaled
    assert nz * info["thickness_mm"] > 230
    lung_rows = np.flatnonzero((labels == 3).any(axis=(1, 2)))
    assert lung_rows[0] > 0 and lung_rows[-1] < nz - 1  # apices and bases inside the scan
    assert 0 < info["agatston"] < 400


def test_medium_size_is_a_calcium_scoring_protocol_on_a_coarser_matrix():
    for volume, labels, info in render_pair(5, "medium", 1):
        nz, ny, nx = volume.shape
        assert (ny, nx) == (256, 256) and 1.5 <= info["pixel_mm"] <= 1.9
        assert info["thickness_mm"] in (2.0, 2.5, 3.0, 5.0)
        assert info["noise_hu"] < 35  # coarser than full-size voxels: sigma scaled down
        assert nz * info["thickness_mm"] > 230
        assert 0 < info["agatston"] < 400 and (labels == 1).any()


def test_cohort_manifest_and_files(tmp_path):
    manifest = make_cohort(tmp_path / "c", subjects=6, seed=3, size="small", dicom_fraction=0.25)
    with manifest.open(encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == [
        "subject",
        "visit",
        "path",
        "agatston",
        "category",
        "thickness_mm",
        "pixel_mm",
        "label_path",
    ]
    assert len(rows) == 12
    assert [r["visit"] for r in rows[:2]] == ["scan", "rescan"] and rows[0]["subject"] == "P0001"
    assert sum(r["path"].startswith("dicom/") for r in rows) == 3
    for r in rows:
        image = read_nifti(manifest.parent / "images" / f"{r['subject']}_{r['visit']}.nii.gz")
        labels = read_nifti(manifest.parent / r["label_path"]).array.astype(np.uint8)
        score = agatston(image.array, image.spacing, mask=labels, label=1)
        assert f"{score.score:.2f}" == r["agatston"] and score.category == r["category"]
        assert float(r["thickness_mm"]) == pytest.approx(image.spacing[0])
    dicom = next(r for r in rows if r["path"].startswith("dicom/"))
    from aidnet.io.dicom import read_dicom_series

    series = read_dicom_series(manifest.parent / dicom["path"])
    labels = read_nifti(manifest.parent / dicom["label_path"]).array.astype(np.uint8)
    assert f"{agatston(series.array, series.spacing, mask=labels).score:.2f}" == dicom["agatston"]
    again = make_cohort(tmp_path / "d", subjects=6, seed=3, size="small", dicom_fraction=0.25)
    assert again.read_text() == manifest.read_text()


def _visible_share(volume, calcium):
    """Shares of the ``calcium`` voxels (e.g. coronary, label 1) inside the lungs' bounding box
    and not blanked by the preprocessing (inside the dilated per-slice lung hull, outside the
    lungs), as in :func:`aidnet.preprocess.sample.preprocess_volume`."""
    from aidnet.lung import segment_lungs
    from aidnet.preprocess import PreprocessConfig
    from aidnet.preprocess.sample import lung_box, region_hull

    lungs = segment_lungs(volume) > 0
    z0, z1, y0, y1, x0, x1 = lung_box(lungs)
    crop = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    n = calcium.sum()
    inside = calcium[crop]
    margin = PreprocessConfig(size=(1, 1, 1)).hull_margin_mm
    hull = region_hull(lungs[crop], volume.spacing, margin)
    return inside.sum() / n, (inside & hull & ~lungs[crop]).sum() / n


@pytest.mark.parametrize("seed,cls", [(12, 2), (31, 2), (30, 1)])
def test_coronary_calcium_lies_within_the_lung_region(seed, cls):
    volume, labels, _ = render_pair(seed, "small", cls)[0]
    assert (labels == 1).any()
    in_box, visible = _visible_share(volume, labels == 1)
    assert in_box >= 0.98 and visible >= 0.98
    # the lung bases reach below the heart; the apices lie well above it
    heart_rows = np.flatnonzero((labels == 1).any(axis=(1, 2)))
    lung_rows = np.flatnonzero((labels == 3).any(axis=(1, 2)))
    assert lung_rows[-1] > heart_rows[-1] and lung_rows[0] < heart_rows[0] - 5


def test_non_coronary_calcium_does_not_depend_on_the_class():
    from aidnet.phantom.anatomy import draw_subject

    for s in range(6):
        a = draw_subject(np.random.default_rng(s), 0).distractors
        b = draw_subject(np.random.default_rng(s), 2).distractors
        assert len(a) == len(b)
        for (ca, *_), (cb, *_) in zip(a, b, strict=True):
            np.testing.assert_array_equal(ca, cb)


def test_calcified_lymph_nodes_are_hard_negatives_the_network_sees(monkeypatch):
    """Nodes at the mediastinal and hilar stations: bright, labelled other calcium, mostly in the
    region preprocessing keeps, class-independent, and drawn after everything else."""
    from aidnet.phantom import anatomy

    def draw(share, make):
        monkeypatch.setattr(anatomy, "LYMPH_NODE_SHARE", share)
        return make()

    plain = draw(0.0, lambda: anatomy.draw_subject(np.random.default_rng(5), 0).distractors)
    noded = draw(1.0, lambda: anatomy.draw_subject(np.random.default_rng(5), 0).distractors)
    assert len(noded) > len(plain)
    for (ca, *_), (cb, *_) in zip(plain, noded[: len(plain)], strict=True):
        np.testing.assert_array_equal(ca, cb)  # the draws before the nodes are unchanged
    visible = []
    for seed in (31, 32, 33):
        _, labels0, _ = draw(0.0, lambda s=seed: render_pair(s, "small", 0)[0])
        volume, labels, _ = draw(1.0, lambda s=seed: render_pair(s, "small", 0)[0])
        nodes = (labels == 2) & (labels0 != 2)
        assert nodes.any() and not (labels == 1).any()
        assert np.array_equal(labels0[~nodes], labels[~nodes])  # nothing else moved
        assert np.mean(volume.array[nodes] >= 130) >= 0.5  # calcium-bright, as a plaque is
        visible.append(_visible_share(volume, nodes)[1])
    assert np.median(visible) >= 0.5, visible


def _files(folder):
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cohort_in_worker_processes_equals_the_serial_one(tmp_path):
    serial = make_cohort(tmp_path / "s", subjects=3, seed=5, size="small", dicom_fraction=0.34)
    parallel = make_cohort(
        tmp_path / "p", subjects=3, seed=5, size="small", dicom_fraction=0.34, workers=2
    )
    assert parallel.read_text() == serial.read_text()
    ours, theirs = _files(serial.parent), _files(parallel.parent)
    assert sorted(ours) == sorted(theirs)
    assert sum(name.startswith("dicom/") for name in ours) > 0
    for name, path in ours.items():
        if name.endswith(".nii.gz"):
            a, b = read_nifti(path), read_nifti(theirs[name])
            np.testing.assert_array_equal(a.array, b.array)
            np.testing.assert_array_equal(a.affine, b.affine)
        else:
            assert path.read_bytes() == theirs[name].read_bytes(), name


def test_cohort_workers_must_be_positive(tmp_path):
    from aidnet.errors import AidnetError

    with pytest.raises(AidnetError, match="workers"):
        make_cohort(tmp_path / "c", subjects=1, seed=0, workers=0)


def test_phantom_command_workers(tmp_path):
    from cli_runner import invoke

    args = ["phantom", "--out", str(tmp_path / "p"), "--subjects", "2", "--seed", "1"]
    result = invoke([*args, "--workers", "2"])
    assert result.exit_code == 0, result.output
    serial = make_cohort(tmp_path / "s", subjects=2, seed=1)
    assert (tmp_path / "p" / "manifest.csv").read_text() == serial.read_text()
    result = invoke([*args, "--workers", "0"])
    assert result.exit_code != 0 and "--workers" in result.output


def test_metal_is_a_saturated_hard_negative_drawn_last(monkeypatch):
    """Sternal wires, clips and a lead: they saturate the scanner (3071 HU), are labelled other
    calcium (never coronary), and leave every earlier draw of the subject as it was."""
    from aidnet.phantom import anatomy

    def subject(share):
        monkeypatch.setattr(anatomy, "METAL_SHARE", dict.fromkeys(anatomy.METAL_SHARE, share))
        return anatomy.draw_subject(np.random.default_rng(5), 2)

    plain, metal = subject(0.0), subject(1.0)
    assert not plain.metal and len(metal.metal) > 20
    for a, b in zip(
        plain.plaques + plain.distractors, metal.plaques + metal.distractors, strict=True
    ):
        np.testing.assert_array_equal(a[0], b[0])
    assert plain.p == metal.p
    for seed in (31, 32):
        volume, labels, _ = render_pair(seed, "small", 1)[0]
        hot = volume.array >= 3000
        assert hot.any() and (labels[hot] == 2).all()


def test_metal_streaks_fade_with_distance_and_stay_in_their_slice():
    from aidnet.phantom.render import METAL_FLOOR_HU, _metal_streaks
    from aidnet.phantom.shapes import Grid

    grid = Grid((3, 128, 128), (3.0, 1.0, 1.0), 0.0, 0.0, (0.0, 0.0, 0.0))
    vol = np.full(grid.shape, 40.0, dtype=np.float32)
    vol[1, 62:66, 62:66] = 12000.0
    before = vol.copy()
    _metal_streaks(vol, grid, np.random.default_rng(0))
    assert np.array_equal(vol[[0, 2]], before[[0, 2]])  # slices without metal untouched
    assert (vol[1] >= METAL_FLOOR_HU).sum() == 16
    y, x = np.mgrid[:128, :128]
    r = np.hypot(y - 63.5, x - 63.5)
    dev = np.abs(vol[1] - 40.0)
    near, far = dev[(r > 8) & (r < 20)].mean(), dev[(r > 45) & (r < 60)].mean()
    assert near > 2.0 and near > 1.5 * far


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_each_vertebral_body_is_one_bone_with_its_arch(seed):
    """Pedicles join each vertebral body to its posterior arch around an open canal, as in a
    real spine: so the body is bone that reaches the chest wall (through the spinous process)
    and leaves the calcium channel with the arch (``dim_wall_bone``), as a real spine does."""
    from scipy import ndimage

    from aidnet.phantom import anatomy
    from aidnet.phantom.render import _slices
    from aidnet.phantom.shapes import Grid

    sub = anatomy.draw_subject(np.random.default_rng(seed), 0)
    p = sub.p
    grid = Grid((60, 256, 256), (1.0, 1.0, 1.0), 100.0, 0.0, (0.0, 0.0, 0.0))
    vol, _ = _slices(sub, grid, False, np.random.default_rng(0))
    labels, _ = ndimage.label(vol > 130, np.ones((3, 3, 3)))

    def voxel(y_mm):
        return int(round(y_mm + 127.5)), 128  # (row, column) of patient (x = 0, y) on this grid

    phase = (grid.slice_z() - p["vert_phase"]) % p["vert_period"]
    arch = np.flatnonzero((phase > 10) & (phase < p["vert_period"] - 4))
    assert arch.size >= 5
    for k in arch:
        body = labels[k][voxel(p["vert_y"])]
        spinous = labels[k][voxel(p["canal_y"] + 20)]
        assert body > 0 and body == spinous, f"slice {k}: body and arch are separate bones"
        assert vol[k][voxel(p["canal_y"])] < 130  # the canal stays open


def test_aortic_plaques_lie_in_the_wall_and_sheets_are_confluent(monkeypatch):
    """An aortic-wall plaque is one thin blob, or a sheet of overlapping blobs round part of
    the circumference and along the (curved) vessel; every blob sits on the wall."""
    from aidnet.phantom import anatomy

    alpha = np.linspace(0, np.pi, 13)  # an arch-like curve, 30 mm radius of curvature
    path = np.stack([30 * np.cos(alpha), np.zeros(13), -30 * np.sin(alpha)], axis=1)
    dense = np.stack([np.interp(np.linspace(0, 12, 2000), np.arange(13), c) for c in path.T], 1)
    radius = 14.0

    def plaques(share):
        monkeypatch.setattr(anatomy, "AORTIC_SHEET_SHARE", share)
        rng = np.random.default_rng(0)
        return [anatomy._aortic_plaque(path, radius, rng) for _ in range(40)]

    assert all(len(blobs) == 1 for blobs in plaques(0.0))
    sheets = plaques(1.0)
    sizes = [len(blobs) for blobs in sheets]
    assert min(sizes) >= 2 and max(sizes) > 12
    for blobs in sheets:
        centres = np.array([c for c, _, _ in blobs])
        # on the wall: at the radius from the vessel's centre line (to its sampling)
        to_line = np.linalg.norm(centres[:, None] - dense[None], axis=2).min(axis=1)
        assert np.allclose(to_line, radius, atol=1.0)
        # confluent: each blob overlaps a neighbour (closer than their summed semi-axes)
        reach = np.array([s.max() for _, _, s in blobs])
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2)
        np.fill_diagonal(gaps, np.inf)
        assert (gaps.min(axis=1) < 2 * reach).all()
