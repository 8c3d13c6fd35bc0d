"""Crop geometry and the two-channel AID-Net input on synthetic chests."""

import json

import numpy as np
import pytest

from aidnet.errors import AidnetError
from aidnet.io.volume import canonical_affine
from aidnet.preprocess import CropGeometry, Sample, preprocess_volume
from test_lung import synthetic_chest, voxel_of


@pytest.fixture
def geometry():
    return CropGeometry(
        original_shape=(50, 120, 140),
        original_affine=canonical_affine((2.5, 0.8, 0.7), (10.0, -20.0, 30.0)),
        crop_box=(7, 43, 20, 100, 15, 131),
        network_shape=(16, 32, 48),
    )


def test_index_round_trip_within_one_voxel(geometry):
    rng = np.random.default_rng(0)
    net = rng.uniform(0, np.array(geometry.network_shape) - 1, size=(200, 3))
    original = geometry.network_to_original_index(net)
    assert original.shape == (200, 3)
    assert (original >= np.array([7, 20, 15]) - 1).all() and (original <= [43, 100, 131]).all()
    back = geometry.original_to_network_index(np.round(original))
    assert np.abs(back - net).max() <= 1.0
    assert np.allclose(geometry.original_to_network_index(original), net)
    corner = geometry.network_to_original_index(np.array([[-0.5, -0.5, -0.5]]))
    assert np.allclose(corner, [[6.5, 19.5, 14.5]])  # grids share their outer edges


def test_network_affine_agrees_with_index_mapping(geometry):
    net = np.array([[3.0, 5.0, 7.0]])
    original = geometry.network_to_original_index(net)[0]
    assert np.allclose(geometry.network_affine @ [*net[0], 1.0], geometry.affine @ [*original, 1.0])


def test_to_original_of_ones_fills_the_crop_box(geometry):
    out = geometry.to_original(np.ones(geometry.network_shape, dtype=np.float32))
    assert out.shape == (50, 120, 140) and out.dtype == np.float32
    inside = np.zeros(out.shape, dtype=bool)
    inside[7:43, 20:100, 15:131] = True
    assert np.allclose(out[inside], 1.0) and (out[~inside] == 0).all()
    with pytest.raises(ValueError, match="shape"):
        geometry.to_original(np.ones((4, 4, 4)))


def test_dict_round_trip_is_json_safe(geometry):
    data = json.loads(json.dumps(geometry.to_dict()))
    assert CropGeometry.from_dict(data) == geometry
    with pytest.raises(AidnetError, match="crop geometry"):
        CropGeometry.from_dict({"crop_box": [0, 1, 0, 1, 0, 1]})


@pytest.fixture(scope="module")
def chest():
    """1.2 mm in-plane chest with a 2.4 mm, 400 HU plaque in front of the spine, between the
    lungs (heart region); returns (volume, truth, plaque voxel)."""
    volume, truth = synthetic_chest((48, 320, 320), (5.0, 1.2, 1.2), gap_mm=30.0)
    array = volume.array.copy()
    z, y, x = voxel_of(volume, 130.0, -30.0, 0.0)
    array[z, y : y + 2, x : x + 2] = 400.0
    return volume.with_array(array), truth, (z, y, x)


def test_preprocess_volume_channels(chest):
    volume, truth, plaque = chest
    sample = preprocess_volume(volume, (16, 48, 64))
    assert isinstance(sample, Sample)
    image, geometry = sample.image, sample.geometry
    assert image.shape == (2, 16, 48, 64) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    # the crop is the lungs' bounding box
    zs, ys, xs = np.nonzero(truth)
    box = np.array(geometry.crop_box)
    assert np.abs(box[0::2] - [zs.min(), ys.min(), xs.min()]).max() <= 2
    assert np.abs(box[1::2] - [zs.max() + 1, ys.max() + 1, xs.max() + 1]).max() <= 2
    # the centre of each lung is −200 HU → 0.0
    for side in (-1, 1):
        centre = voxel_of(volume, 0.55 * 48 * 5.0, 5.0, side * (15 + 0.16 * 320 * 1.2))
        net = np.round(geometry.original_to_network_index(np.array([centre]))[0]).astype(int)
        assert image[0][tuple(net)] == 0.0
    # soft tissue between the lungs: (40 + 200) / 800 = 0.3
    heart = voxel_of(volume, 130.0, -10.0, 0.0)
    net = np.round(geometry.original_to_network_index(np.array([heart]))[0]).astype(int)
    assert image[0][tuple(net)] == pytest.approx(0.3, abs=0.05)
    # 4 voxels of calcium in a ~30× smaller grid still light up channel 1
    net = np.round(geometry.original_to_network_index(np.array([plaque]))[0]).astype(int)
    lo = np.maximum(net - 1, 0)
    assert image[1][lo[0] : net[0] + 2, lo[1] : net[1] + 2, lo[2] : net[2] + 2].max() == 1.0
    back = geometry.to_original(image[1])
    assert back.shape == volume.shape and back[plaque] > 0.25


def test_preprocess_volume_with_given_lungs_and_upsampling(chest):
    volume, truth, _ = chest
    sample = preprocess_volume(volume, (64, 32, 32), lungs=truth)
    assert sample.image.shape == (2, 64, 32, 32)
    assert sample.image.min() >= 0.0 and sample.image.max() <= 1.0
    assert sample.geometry.crop_box[0::2] == tuple(
        int(np.nonzero(truth.any(axis=a))[0][0]) for a in ((1, 2), (0, 2), (0, 1))
    )
    with pytest.raises(AidnetError, match="does not match"):
        preprocess_volume(volume, (8, 8, 8), lungs=truth[:-1])


def test_preprocess_volume_rejects_nan(chest):
    volume, _, _ = chest
    array = volume.array.copy()
    array[0, 0, 0] = np.nan
    with pytest.raises(AidnetError, match="image contains NaN or infinite values"):
        preprocess_volume(volume.with_array(array), (8, 16, 16))


def test_dicom_and_nifti_exports_give_the_same_tensor(tmp_path):
    """One phantom scan written as NIfTI and as a DICOM series (shuffled file names, HU + 1024
    with a rescale intercept) preprocesses to the same network input (issue 3)."""
    from aidnet.io.dicom import write_dicom_series
    from aidnet.io.nifti import write_volume
    from aidnet.io.read import read_volume
    from aidnet.phantom import render_pair

    volume, _, _ = render_pair(1, "small", 1)[0]  # 2.96875 mm pixels: five decimals
    write_volume(volume, tmp_path / "scan.nii.gz")
    write_dicom_series(volume, tmp_path / "dicom", patient_name="P^Q", patient_id="7", seed=1)
    dicom = read_volume(tmp_path / "dicom")
    assert dicom.spacing[1:] == pytest.approx(volume.spacing[1:], abs=1e-9)  # not rounded
    from_nifti = preprocess_volume(read_volume(tmp_path / "scan.nii.gz"), (16, 24, 32))
    from_dicom = preprocess_volume(dicom, (16, 24, 32))
    assert from_nifti.image.std() > 0.05
    assert np.abs(from_nifti.image - from_dicom.image).max() <= 1e-3
    assert from_nifti.geometry.crop_box == from_dicom.geometry.crop_box
    assert np.allclose(from_nifti.geometry.affine, from_dicom.geometry.affine, atol=1e-3)


def test_geometry_maps_back_to_the_input_files_own_grid(tmp_path, chest):
    """A scan stored in RAS voxel order (as many converters write it): a network map goes
    back through the cached geometry onto that file's own array and affine."""
    import nibabel as nib

    from aidnet.io.nifti import write_nifti
    from aidnet.io.read import read_volume

    volume, _, _ = chest
    ras = np.flip(np.transpose(volume.array, (2, 1, 0)), axis=(0, 1, 2))  # (i, j, k) = (R, A, S)
    affine = np.diag([1.2, 1.2, 5.0, 1.0])
    affine[:3, 3] = [-190.0, -190.0, 0.0]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ras), affine), tmp_path / "ras.nii.gz")
    scan = read_volume(tmp_path / "ras.nii.gz")
    sample = preprocess_volume(scan, (16, 48, 64))
    geometry = CropGeometry.from_dict(json.loads(json.dumps(sample.geometry.to_dict())))
    assert geometry == sample.geometry and geometry.source is not None
    back, _ = geometry.to_source(scan.array)
    assert np.array_equal(np.transpose(back, (2, 1, 0)), ras)  # the file's own voxel order
    write_nifti(*geometry.to_source(geometry.to_original(sample.image[1])), tmp_path / "m.nii")
    written = nib.load(tmp_path / "m.nii")
    assert written.shape == ras.shape and np.allclose(written.affine, affine)


def test_calcium_candidates_are_the_calcium_channel_on_the_scan_grid():
    """What explanations point at is exactly what the network's calcium channel was made of."""
    from aidnet.phantom import render_pair
    from aidnet.preprocess import calcium_candidates, preprocess_volume
    from aidnet.preprocess.resample import resample_max

    volume, labels, _ = render_pair(5, "small", 2)[0]
    size = (16, 24, 32)
    sample = preprocess_volume(volume, size)
    candidates = calcium_candidates(volume, size)
    assert candidates.shape == volume.shape and candidates.dtype == bool
    z0, z1, y0, y1, x0, x1 = sample.geometry.crop_box
    assert not candidates[:z0].any() and not candidates[:, :, x1:].any()
    inside = candidates[z0:z1, y0:y1, x0:x1]
    np.testing.assert_array_equal(inside, sample.calcium)
    np.testing.assert_allclose(resample_max(inside, size), sample.image[1], atol=1e-6)
    assert np.all(volume.array[candidates] > 130)
    from aidnet.lung import segment_lungs

    assert not candidates[segment_lungs(volume) != 0].any()  # never in the lungs
    coronary = labels == 1
    assert candidates[coronary].mean() > 0.5  # the plaques are candidates


def test_wall_bone_leaves_the_calcium_channel_and_is_dimmed():
    """Bone that crosses the region's edge (here a rod from outside the hull, and one cut by
    the grid's in-plane border) leaves channel 1 and is capped at 130 HU in channel 0; calcium
    inside the region, even beside the lungs, stays. Off by default (paper §2.1)."""
    from aidnet.preprocess.sample import CALCIUM_HU, HU_LOW, input_channels, wall_bone

    hu = np.full((6, 40, 40), 40.0, dtype=np.float32)
    lungs = np.zeros(hu.shape, dtype=bool)
    lungs[:, 12:28, 4:10] = True
    hull = np.zeros(hu.shape, dtype=bool)
    hull[:, 4:36, 2:38] = True
    hu[2:4, 20, 25:40] = 900.0  # a rib: from outside the hull to well inside it
    hu[2:4, 0:8, 14:16] = 700.0  # cut by the grid's border, inside the hull there
    hu[2:4, 18:21, 18:21] = 400.0  # a plaque in the middle
    hu[2:4, 14:16, 10:12] = 300.0  # a calcified node against the lung
    plaque, node = (
        (slice(2, 4), slice(18, 21), slice(18, 21)),
        (slice(2, 4), slice(14, 16), slice(10, 12)),
    )
    bone = wall_bone(hu > CALCIUM_HU, hull)
    assert bone[2, 20, 25:36].all() and bone[2, 4:8, 14].all()
    assert not bone[plaque].any() and not bone[node].any()
    ct, calcium = input_channels(hu, lungs, hull, dim_wall_bone=True)
    assert calcium[plaque].all() and calcium[node].all() and not calcium[bone].any()
    assert np.allclose(ct[2, 20, 25:36], (CALCIUM_HU - HU_LOW) / 800.0)
    assert np.allclose(ct[plaque], (400.0 - HU_LOW) / 800.0)
    ct_off, calcium_off = input_channels(hu, lungs, hull)
    assert calcium_off[2, 20, 25:36].all() and ct_off[2, 20, 30] == 1.0


@pytest.mark.parametrize("seed,cls", [(31, 2), (5, 0)])
def test_wall_bone_on_a_phantom_leaves_only_the_calcifications(seed, cls):
    """On a phantom scan the rule takes out the ribs, sternum and spine and keeps every voxel of
    the coronary and other calcifications (labels 1 and 2) the channel held."""
    from aidnet.phantom import render_pair
    from aidnet.preprocess import PreprocessConfig
    from aidnet.preprocess.sample import _region_of_interest

    volume, labels, _ = render_pair(seed, "small", cls)[0]
    channels = []
    for dim in (False, True):
        box, _, calcium, _ = _region_of_interest(
            volume, PreprocessConfig((8, 8, 8), dim_wall_bone=dim), None
        )
        channels.append(calcium)
    z0, z1, y0, y1, x0, x1 = box
    marked = labels[z0:z1, y0:y1, x0:x1] > 0
    marked &= labels[z0:z1, y0:y1, x0:x1] < 3
    kept, plain = channels[1], channels[0]
    assert np.array_equal(kept & marked, plain & marked)  # every calcification stays
    assert (kept & ~marked).sum() <= 0.01 * (plain & ~marked).sum()  # bone goes


def test_outer_bone_is_bone_with_lung_between_it_and_the_mediastinum():
    """A rib segment lying against a lung's outer side inside the hull (it never reaches the
    region's edge) is outer bone; a plaque between the lungs, calcium against a lung's inner
    side and calcium in front of the mediastinum stay. With ``dim_outer_bone`` the
    segment leaves the calcium channel and is capped at 130 HU; off by default."""
    from aidnet.preprocess.sample import CALCIUM_HU, HU_LOW, input_channels, outer_bone

    hu = np.full((4, 60, 80), 40.0, dtype=np.float32)
    lungs = np.zeros(hu.shape, dtype=bool)
    lungs[:, 10:50, 8:30] = True  # two lungs, 22 mm wide, the mediastinum between them
    lungs[:, 10:50, 50:72] = True
    hull = np.zeros(hu.shape, dtype=bool)
    hull[:, 4:56, 2:78] = True
    rib = (slice(1, 3), slice(28, 32), slice(4, 6))  # outside the left lung, inside the hull
    plaque = (slice(1, 3), slice(28, 31), slice(38, 41))  # between the lungs
    node = (slice(1, 3), slice(20, 23), slice(30, 32))  # against the left lung's inner side
    front = (slice(1, 3), slice(6, 8), slice(38, 41))  # in front of the mediastinum
    for where, value in ((rib, 800.0), (plaque, 400.0), (node, 300.0), (front, 600.0)):
        hu[where] = value
    spacing = (2.0, 1.0, 1.0)
    bone = outer_bone(hu > CALCIUM_HU, lungs, hull, spacing)
    assert bone[rib].all()
    assert not bone[plaque].any() and not bone[node].any() and not bone[front].any()
    ct, calcium = input_channels(hu, lungs, hull, spacing, dim_outer_bone=True)
    assert not calcium[rib].any() and calcium[plaque].all() and calcium[node].all()
    assert np.allclose(ct[rib], (CALCIUM_HU - HU_LOW) / 800.0)
    assert calcium[front].all()
    _, calcium_off = input_channels(hu, lungs, hull, spacing)
    assert calcium_off[rib].all()
    # the lung on the path is measured in millimetres: at 0.4 mm pixels 22 voxels of lung are
    # under 10 mm, and the same segment stays
    assert not outer_bone(hu > CALCIUM_HU, lungs, hull, (2.0, 0.4, 0.4))[rib].any()
    assert not outer_bone(np.zeros(hu.shape, dtype=bool), lungs, hull, spacing).any()


@pytest.mark.parametrize("seed,cls", [(31, 2), (5, 1)])
def test_outer_bone_on_a_phantom_keeps_every_calcification(seed, cls):
    """On phantom scans, dimming outer bone as well keeps every voxel of the coronary and other
    calcifications (labels 1 and 2) the channel held, and takes out at least as much else."""
    from aidnet.phantom import render_pair
    from aidnet.preprocess import PreprocessConfig
    from aidnet.preprocess.sample import _region_of_interest

    volume, labels, _ = render_pair(seed, "small", cls)[0]
    channels = []
    for outer in (False, True):
        config = PreprocessConfig((8, 8, 8), dim_wall_bone=True, dim_outer_bone=outer)
        box, _, calcium, _ = _region_of_interest(volume, config, None)
        channels.append(calcium)
    z0, z1, y0, y1, x0, x1 = box
    marked = labels[z0:z1, y0:y1, x0:x1] > 0
    marked &= labels[z0:z1, y0:y1, x0:x1] < 3
    wall, both = channels
    assert marked.any() and np.array_equal(both & marked, wall & marked)
    assert not (both & ~wall).any()


def test_calcium_density_weighs_each_candidate_by_how_dense_it_is():
    """With ``calcium_density`` the calcium channel holds (HU − 130) / 270 capped at 1 on the
    candidates and 0 elsewhere: a speck just over 130 HU weighs almost nothing, a plaque of
    Agatston's top density band (≥ 400 HU) weighs 1 — as in the binary channel."""
    from aidnet.preprocess.sample import calcium_density, input_channels

    hu = np.full((4, 20, 20), 40.0, dtype=np.float32)
    lungs = np.zeros(hu.shape, dtype=bool)
    hull = np.ones(hu.shape, dtype=bool)
    hu[1, 2:5, 2:5] = 700.0  # dense plaque (the CT channel caps it at 600 HU)
    hu[1, 10:13, 10:13] = 265.0  # halfway between 130 and 400 HU
    hu[2, 15:18, 15:18] = 140.0  # noise just over the threshold
    ct, calcium = input_channels(hu, lungs, hull)
    weight = calcium_density(ct, calcium)
    assert weight.dtype == np.float32 and weight.shape == hu.shape
    assert np.allclose(weight[1, 2:5, 2:5], 1.0)
    assert np.allclose(weight[1, 10:13, 10:13], 0.5, atol=1e-4)
    assert np.allclose(weight[2, 15:18, 15:18], 10.0 / 270.0, atol=1e-4)
    assert (weight[~calcium] == 0).all() and (weight[calcium] > 0).all()


def test_calcium_density_channel_keeps_the_binary_channels_support():
    """On a synthetic chest the density channel is nonzero exactly where the binary channel
    is, never larger than it, and its own cache key; the CT channel is untouched, and the
    settings without the option keep the key older caches were written under."""
    from aidnet.preprocess import PreprocessConfig

    volume, _ = synthetic_chest((40, 160, 160), (5.0, 2.0, 2.0), gap_mm=30.0)
    hu = np.asarray(volume.array).copy()
    hu[20, 60:63, 75:78] = 500.0  # a dense plaque between the lungs
    hu[24, 70:72, 84:86] = 150.0  # a faint one
    volume = volume.with_array(hu)
    plain_config = PreprocessConfig((16, 32, 32))
    dense_config = PreprocessConfig((16, 32, 32), calcium_density=True)
    plain = preprocess_volume(volume, plain_config).image
    dense = preprocess_volume(volume, dense_config).image
    assert np.array_equal(plain[0], dense[0])
    assert np.array_equal(plain[1] > 0, dense[1] > 0) and (dense[1] <= plain[1]).all()
    assert dense[1].max() == 1.0 and 0.0 < dense[1][dense[1] > 0].min() < 0.2
    assert dense_config.key() != plain_config.key()
    assert "calcium_density" not in plain_config.to_dict()
