"""Grad-CAM and attention maps: peak where the evidence is, high = important, overlays."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from aidnet.explain.gradcam import attention_map, grad_cam
from aidnet.explain.overlay import save_overlay_png


@dataclass
class Out:
    logits: torch.Tensor
    features: torch.Tensor
    attention: torch.Tensor | None


class BrightSpotNet(nn.Module):
    """Features = ReLU of a fixed 3x3x3 mean filter on channel 1; CAC logit = their mean."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 1] = 1.0 / 27

    def forward_single(self, x):
        features = torch.relu(self.conv(x))
        pooled = features.mean(dim=(2, 3, 4)).sum(1, keepdim=True)
        logits = torch.cat([-pooled, pooled, pooled], dim=1)
        return Out(logits, features, torch.sigmoid(features[:, :1]))


def test_gradcam_peaks_at_the_evidence_and_is_not_inverted():
    model = BrightSpotNet()
    x = torch.zeros(1, 2, 12, 16, 20)
    x[0, 1, 3:5, 10:12, 14:16] = 1.0
    cam = grad_cam(model, x)
    assert cam.shape == (12, 16, 20) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == 1.0
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert 3 <= peak[0] <= 4 and 10 <= peak[1] <= 11 and 14 <= peak[2] <= 15
    assert cam[4, 11, 15] > 0.9 and cam[10, 2, 2] == 0.0
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_maps_of_a_saturated_model_do_not_vanish():
    """A confident model whose P(CAC) is 1.0 in float32 still gets its maps (the gradient of
    log P(CAC) would underflow there and leave every map flat)."""
    from aidnet.explain.gradcam import network_maps

    model = BrightSpotNet()
    with torch.no_grad():
        model.conv.weight.mul_(1e4)
    x = torch.zeros(1, 2, 12, 16, 20)
    x[0, 1, 3:5, 10:12, 14:16] = 1.0
    with torch.no_grad():
        assert float(torch.softmax(model.forward_single(x).logits, 1)[0, 0]) == 0.0
    maps = network_maps(model, x)
    for name in ("gradcam", "integrated_gradients"):
        peak = np.unravel_index(np.argmax(maps[name]), maps[name].shape)
        assert maps[name].max() == 1.0, name
        assert 3 <= peak[0] <= 4 and 10 <= peak[1] <= 11 and 14 <= peak[2] <= 15, name


def test_integrated_gradients_add_up_to_the_score_change_and_stay_on_calcium():
    """Completeness (Sundararajan et al.): the map sums to score(scan) − score(scan without
    calcium); and it is zero wherever the scan has no calcium."""
    from aidnet.explain.gradcam import (
        CALCIUM_LEVEL,
        cac_score,
        integrated_gradients,
        without_calcium,
    )
    from aidnet.models.aidnet import AIDNet

    torch.manual_seed(0)
    model = AIDNet(features=(4, 8), inter_channels=4).eval()
    x = torch.rand(1, 2, 8, 12, 16) * CALCIUM_LEVEL
    x[0, 1] = 0.0
    x[0, :, 2:4, 5:7, 3:6] = 1.0  # one calcification: bright CT and the calcium channel
    x[0, :, 6, 9, 12] = 1.0
    ig = integrated_gradients(model, x, steps=128)
    with torch.no_grad():
        change = cac_score(model.forward_single(x).logits) - cac_score(
            model.forward_single(without_calcium(x)).logits
        )
    assert abs(float(change)) > 1e-4
    assert float(ig.sum()) == pytest.approx(float(change), rel=0.02)
    calcified = x[0, 1] > 0
    assert torch.all(ig[0, 0][~calcified] == 0) and torch.any(ig[0, 0][calcified] != 0)
    assert all(p.grad is None for p in model.parameters())


def test_integrated_gradients_do_not_depend_on_how_the_steps_are_batched():
    """Steps go through the network a few at a time; in eval mode each keeps its own gradient,
    so any batch gives the one-at-a-time answer, and the model's mode is left as it was."""
    from aidnet.explain.gradcam import integrated_gradients
    from aidnet.models.aidnet import AIDNet

    torch.manual_seed(1)
    model = AIDNet(features=(4, 8), inter_channels=4).train()
    x = torch.rand(1, 2, 8, 12, 16)
    x[0, 1] = (x[0, 1] > 0.9).float()
    one = integrated_gradients(model, x, steps=7, batch=1)
    assert model.training
    assert torch.any(one != 0)
    for batch in (2, 3, 7, 16):
        torch.testing.assert_close(
            integrated_gradients(model, x, steps=7, batch=batch), one, rtol=1e-4, atol=1e-6
        )
    assert model.training and all(p.grad is None for p in model.parameters())


def test_flat_map_is_zero_not_nan():
    cam = grad_cam(BrightSpotNet(), torch.zeros(1, 2, 8, 8, 8))
    assert np.all(cam == 0)


def test_attention_map_on_input_grid_normalised_high_is_important():
    x = torch.zeros(1, 2, 8, 10, 12)
    flat = attention_map(BrightSpotNet(), x)
    assert flat.shape == (8, 10, 12) and np.all(flat == 0)  # a uniform gate (0.5) → zero
    x[0, 1, 2:4, 6:8, 1:3] = 1.0
    att = attention_map(BrightSpotNet(), x)
    assert att.dtype == np.float32 and att.min() == 0.0 and att.max() == 1.0
    peak = np.unravel_index(np.argmax(att), att.shape)
    assert 2 <= peak[0] <= 3 and 6 <= peak[1] <= 7 and 1 <= peak[2] <= 2


def test_overlay_png(tmp_path):
    ct = np.full((10, 40, 50), 40.0)
    heat = np.zeros_like(ct)
    heat[5, 20, 25] = 1
    save_overlay_png(ct, heat, (3.0, 0.8, 0.8), tmp_path / "o.png", title="x")
    data = (tmp_path / "o.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000


class PlaqueNet(nn.Module):
    """Stand-in for a trained network: its feature map (and attention) is a Gaussian bump
    (σ = 1.5 network voxels) centred on a given point of the network grid, its features
    doubled on the input's calcium voxels (so the score depends on the input there)."""

    map_on_calcium = False  # as a baseline's (see aidnet.models.base.CACNet)

    def __init__(self, size, centre):
        super().__init__()
        axes = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size), indexing="ij")
        d2 = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True))
        bump = torch.from_numpy(np.exp(-d2 / (2 * 1.5**2))).float()
        self.register_buffer("bump", bump[None, None])
        self.gain = nn.Parameter(torch.ones(()))

    def forward_single(self, x):
        bump = self.bump * self.gain * (1 + x[:, 1:2])
        features = bump.expand(x.shape[0], 2, *self.bump.shape[2:])
        pooled = features.mean(dim=(2, 3, 4)).sum(1, keepdim=True)
        logits = torch.cat([-pooled, pooled, pooled], dim=1)
        return Out(logits, features, self.bump.expand(x.shape[0], 1, *self.bump.shape[2:]))


def _ras_copy(record, folder):
    """The scan re-saved in NIfTI's usual RAS+ voxel order (not aidnet's canonical one)."""
    import nibabel as nib

    from aidnet.io.nifti import write_nifti
    from aidnet.io.read import read_volume

    ct = read_volume(record.path)
    tmp = write_nifti(ct.array, ct.affine, folder / "tmp.nii.gz")
    ras = nib.as_closest_canonical(nib.load(tmp))
    path = folder / f"{record.key}_ras.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ras.dataobj), ras.affine), path)
    return path


@pytest.mark.parametrize("layout", ["dicom", "nifti_ras"])
def test_heat_map_on_the_input_grid_peaks_on_the_plaque(tmp_path, monkeypatch, layout):
    """A DICOM series (and a RAS+ NIfTI) in, heat maps with the input's own shape and affine
    out, and their peak on the phantom's coronary plaque, mapped back through CropGeometry."""
    import csv

    import nibabel as nib
    from scipy import ndimage

    import aidnet.pipeline.common as common_module
    from aidnet.data.cache import load_cached, preprocess_cohort
    from aidnet.data.manifest import read_manifest
    from aidnet.explain.localisation import nearest_distance_mm
    from aidnet.io.read import read_volume
    from aidnet.phantom import make_cohort
    from aidnet.pipeline.common import Trained
    from aidnet.pipeline.explain import explain_manifest
    from aidnet.preprocess.geometry import CropGeometry

    manifest = make_cohort(
        tmp_path / "cohort", subjects=1, seed=3, dicom_fraction=1.0, class_mix=(0, 1, 0)
    )
    record = read_manifest(manifest)[0]
    assert record.path.is_dir() and record.agatston > 0
    if layout == "nifti_ras":
        ras = _ras_copy(record, tmp_path)
        text = manifest.read_text().replace(f"dicom/{record.key}", str(ras))
        manifest.write_text(text)
        record = read_manifest(manifest)[0]
        assert record.path == ras
    ct = read_volume(record.path)
    labels = read_volume(manifest.parent / record.extras["label_path"]).array
    coronary = labels == 1
    # the target: the voxel of the largest coronary plaque closest to that plaque's centroid
    components, n = ndimage.label(coronary)
    largest = 1 + int(np.argmax(ndimage.sum(coronary, components, range(1, n + 1))))
    voxels = np.argwhere(components == largest)
    target = voxels[np.argmin(((voxels - voxels.mean(0)) ** 2).sum(1))]

    size = (24, 48, 64)
    cache = tmp_path / "cache"
    done = preprocess_cohort([record], cache, size, progress=False).done
    geometry = CropGeometry.from_dict(load_cached(done[record.key]).geometry)
    centre = geometry.original_to_network_index(target)[0]
    trained = Trained(
        PlaqueNet(size, centre),
        {"name": "stand-in", "num_classes": 3, "input_size": list(size)},
        tmp_path / "stand-in.pt",
        None,
    )
    monkeypatch.setattr(common_module, "load_trained", lambda checkpoint: trained)
    out = tmp_path / "maps"
    written = explain_manifest(tmp_path / "stand-in.pt", manifest, out, cache_dir=cache, limit=1)
    assert [w["key"] for w in written] == [record.key]

    source, source_affine = ct.to_source(ct.array)
    maps = ("gradcam", "integrated_gradients", "attention", "attention_calcium")
    for name in maps:
        path = out / f"{record.key}_{name}.nii.gz"
        raw = nib.load(path)  # the file itself: the input's own voxel order and affine
        assert raw.shape == source.shape[::-1]
        assert np.allclose(raw.affine, source_affine[:, [2, 1, 0, 3]], atol=1e-4)
        if layout == "nifti_ras":
            assert np.allclose(raw.affine, nib.load(record.path).affine, atol=1e-4)
        heat = read_volume(path)
        assert heat.shape == ct.shape and np.allclose(heat.affine, ct.affine, atol=1e-4)
        assert heat.source == ct.source
        assert heat.array.min() >= 0.0 and heat.array.max() <= 1.0
        peak = np.unravel_index(int(np.argmax(heat.array)), heat.shape)
        assert nearest_distance_mm(peak, coronary, ct.spacing) <= 5.0, name
        # linear interpolation peaks on a sample: within half a network voxel plus half an
        # original voxel of the target, along each axis
        offset = np.abs(np.array(peak) - target)
        assert np.all(offset <= 0.5 * (geometry.scale + 1) + 1e-6), (name, offset)
        # the check can fail: a mapping that ignored the crop offset or flipped an axis would
        # put the peak more than 5 mm from any coronary calcium
        wrong = [np.array(peak) - geometry.crop_start.astype(int)]
        for axis in range(3):
            flipped = np.array(peak)
            flipped[axis] = ct.shape[axis] - 1 - flipped[axis]
            wrong.append(flipped)
        for point in wrong:
            assert nearest_distance_mm(point, coronary, ct.spacing) > 5.0, (name, point)
        if name in ("integrated_gradients", "attention_calcium"):  # on calcium candidates only
            assert heat.array.max() == pytest.approx(1.0)
            assert ct.array[peak] > 130 and np.all(heat.array[ct.array <= 130] == 0)
    with (out / "localisation.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["map"]: r["hit"] for r in rows} == dict.fromkeys(maps, "1")
    assert all(r["subject"] == record.subject and r["visit"] == record.visit for r in rows)


@pytest.mark.parametrize("on_calcium", [True, False])
def test_gradcam_is_kept_on_the_calcium_only_for_a_map_on_calcium(tmp_path, on_calcium):
    """AID-Net's calcium head multiplies its map before GAP by the calcium channel, so its
    Grad-CAM on the scan's grid is kept on the scan's calcium candidates; any other model's
    Grad-CAM is left as the network computed it."""
    from aidnet.explain.maps import original_maps
    from aidnet.pipeline.common import Trained
    from aidnet.preprocess.geometry import CropGeometry

    size = (8, 8, 8)
    model = PlaqueNet(size, (4, 4, 4))
    model.map_on_calcium = on_calcium
    trained = Trained(model, {"name": "stand-in", "num_classes": 3}, tmp_path / "x.pt", None)
    geometry = CropGeometry((16, 16, 16), np.eye(4), (0, 16, 0, 16, 0, 16), size)
    image = np.zeros((2, *size), np.float32)
    calcium = np.zeros((16, 16, 16), bool)
    calcium[2:4, 12:14, 3:5] = True  # off the map's peak (original voxels 8–9)
    maps = original_maps(trained, image, geometry, calcium)
    gradcam = maps["gradcam"]
    assert gradcam.shape == calcium.shape and float(gradcam.max()) > 0.5
    if on_calcium:
        assert float(gradcam.max()) == pytest.approx(1.0)
        assert np.all(gradcam[~calcium] == 0)
        assert np.argwhere(gradcam == gradcam.max())[0].tolist() in np.argwhere(calcium).tolist()
    else:
        assert np.count_nonzero(gradcam[~calcium]) > 1000
        peak = np.unravel_index(int(np.argmax(gradcam)), gradcam.shape)
        assert all(7 <= p <= 9 for p in peak)
