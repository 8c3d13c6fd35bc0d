"""Pointing game and mass shares on hand-made arrays: physical mm, ties, empty maps, errors."""

import math

import numpy as np
import pytest

from aidnet.errors import AidnetError
from aidnet.explain.localisation import (
    load_label_map,
    score_map,
    score_maps,
    summarise,
    wilson_interval,
)
from aidnet.io.nifti import write_nifti
from aidnet.io.volume import canonical_affine


def one_plaque(shape=(20, 20, 20), at=(10, 10, 10)):
    labels = np.zeros(shape, dtype=np.int16)
    labels[at] = 1
    return labels


def spike(shape, at, value=1.0):
    heat = np.zeros(shape, dtype=np.float32)
    heat[at] = value
    return heat


def test_distance_is_in_mm_not_voxels():
    labels = one_plaque()
    spacing = (3.0, 0.6, 0.6)
    # 8 voxels away in x but 4.8 mm: a hit, though a voxel count says 8
    near_in_mm = score_map(spike(labels.shape, (10, 10, 18)), labels, spacing)
    assert near_in_mm.hit and near_in_mm.peak_distance_mm == pytest.approx(4.8)
    # 2 voxels away in z but 6 mm: a miss, though a voxel count says 2
    far_in_mm = score_map(spike(labels.shape, (12, 10, 10)), labels, spacing)
    assert not far_in_mm.hit and far_in_mm.peak_distance_mm == pytest.approx(6.0)
    # diagonal: sqrt(3² + (4 · 0.6)²) = 3.84 mm
    diagonal = score_map(spike(labels.shape, (11, 14, 10)), labels, spacing)
    assert diagonal.hit and diagonal.peak_distance_mm == pytest.approx(math.hypot(3, 2.4))


@pytest.mark.parametrize(("step", "hit"), [(0.49, True), (0.51, False)])
def test_hit_radius_is_5_mm(step, hit):
    labels = one_plaque()
    score = score_map(spike(labels.shape, (10, 10, 0)), labels, (1.0, 1.0, step))
    assert score.peak_distance_mm == pytest.approx(10 * step)
    assert score.hit is hit


def test_mass_shares_add_up():
    shape, spacing = (10, 10, 40), (1.0, 1.0, 1.0)
    labels = np.zeros(shape, dtype=np.int16)
    labels[5, 5, 5] = 1  # coronary at x = 5
    labels[5, 5, 35] = 2  # other calcium at x = 35, 30 mm away: the regions do not overlap
    heat = np.zeros(shape, dtype=np.float32)
    heat[5, 5, 5] = 0.5  # 0 mm from the plaque
    heat[5, 5, 15] = 0.3  # exactly 10 mm: inside (within = at most)
    heat[5, 5, 25] = 0.4  # 10 mm from the other calcium
    heat[5, 5, 20] = 0.8  # 15 mm from both: neither
    s = score_map(heat, labels, spacing)
    total = 0.5 + 0.3 + 0.4 + 0.8
    assert s.coronary_share == pytest.approx(0.8 / total)
    assert s.noncoronary_share == pytest.approx(0.4 / total)
    assert s.coronary_share + s.noncoronary_share + 0.8 / total == pytest.approx(1.0)
    assert s.peak == (5, 5, 20) and not s.hit  # the peak is the 0.8 voxel, 15 mm away
    # anisotropic: 10.2 mm along z leaves the 10 mm region
    heat2 = spike(shape, (5, 5, 5), 1.0)
    heat2[8, 5, 5] = 1.0  # a tie: the first maximum in C order (z = 5) is the peak
    s2 = score_map(heat2, labels, (3.4, 1.0, 1.0))
    assert s2.peak == (5, 5, 5) and s2.hit
    assert s2.coronary_share == pytest.approx(0.5)


def test_overlapping_regions_are_both_counted():
    labels = np.zeros((5, 5, 30), dtype=np.int16)
    labels[2, 2, 10], labels[2, 2, 14] = 1, 2
    heat = spike(labels.shape, (2, 2, 12))
    s = score_map(heat, labels, (1, 1, 1))
    assert s.coronary_share == 1.0 and s.noncoronary_share == 1.0


def test_ties_go_to_the_first_maximum_in_c_order():
    labels = one_plaque(at=(15, 15, 15))
    heat = np.zeros(labels.shape, dtype=np.float32)
    heat[2, 2, 2] = 1.0  # first in C order, far away
    heat[15, 15, 15] = 1.0  # on the plaque
    s = score_map(heat, labels, (1, 1, 1))
    assert s.peak == (2, 2, 2) and not s.hit
    heat[2, 2, 2] = 0.999
    assert score_map(heat, labels, (1, 1, 1)).hit


def test_all_zero_map_is_a_miss():
    labels = one_plaque()
    s = score_map(np.zeros(labels.shape, dtype=np.float32), labels, (1, 1, 1))
    assert not s.hit and s.peak is None and math.isnan(s.peak_distance_mm)
    assert s.coronary_share == 0.0 and s.noncoronary_share == 0.0


def _brute_force_share(heat, labels, label, spacing, radius=10.0):
    grid = np.argwhere(np.ones(labels.shape, dtype=bool)) * np.array(spacing)
    targets = np.argwhere(labels == label) * np.array(spacing)
    d = np.sqrt(((grid[:, None] - targets[None]) ** 2).sum(-1)).min(1).reshape(labels.shape)
    return heat[d <= radius].sum() / heat.sum()


@pytest.mark.parametrize("slab_voxels", [1 << 24, 1, 60])
def test_shares_match_brute_force_distances(monkeypatch, slab_voxels):
    """Exact in mm, also when the distance transform runs in thin z-slabs (full-size scans)."""
    import aidnet.explain.localisation as localisation

    monkeypatch.setattr(localisation, "_SLAB_VOXELS", slab_voxels)
    rng = np.random.default_rng(1)
    labels = np.zeros((30, 9, 11), dtype=np.int16)
    labels[3, 4, 5] = labels[21, 2, 9] = 1
    labels[12, 7, 1] = labels[29, 0, 0] = 2
    heat = rng.random(labels.shape).astype(np.float32) ** 4
    spacing = (1.3, 2.9, 0.8)  # 10 mm = 7.7 slices: slabs of 1 or 6 slices need their overlap
    s = score_map(heat, labels, spacing)
    assert s.coronary_share == pytest.approx(_brute_force_share(heat, labels, 1, spacing))
    assert s.noncoronary_share == pytest.approx(_brute_force_share(heat, labels, 2, spacing))
    assert 0.05 < s.coronary_share < 0.95 and 0.05 < s.noncoronary_share < 0.95


def test_maps_sharing_labels_give_the_same_scores_as_alone():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 0, 0, 0, 1, 2], size=(12, 14, 16), p=[0.3, 0.3, 0.3, 0.05, 0.02, 0.03])
    a = np.zeros(labels.shape, dtype=np.float32)
    a[3:6, 4:9, 2:5] = rng.random((3, 5, 3))
    b = np.zeros(labels.shape, dtype=np.float32)
    b[8:11, 1:3, 10:15] = rng.random((3, 2, 5))
    spacing = (2.5, 0.7, 0.9)
    together = score_maps({"a": a, "b": b}, labels, spacing)
    for name, heat in (("a", a), ("b", b)):
        alone = score_map(heat, labels, spacing)
        assert together[name] == alone
    for label, share in ((1, "coronary_share"), (2, "noncoronary_share")):
        expected = _brute_force_share(a, labels, label, spacing)
        assert getattr(together["a"], share) == pytest.approx(expected)


def test_invalid_maps_are_refused():
    labels = one_plaque()
    with pytest.raises(ValueError, match="differs"):
        score_map(np.zeros((20, 20, 19), dtype=np.float32), labels, (1, 1, 1))
    with pytest.raises(ValueError, match="non-negative"):
        score_map(-np.ones(labels.shape, dtype=np.float32), labels, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        score_map(np.zeros(labels.shape, dtype=np.float32), labels, (1, 0, 1))


def test_summary_and_wilson_interval():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 1.0
    labels = one_plaque()
    scores = [
        score_map(spike(labels.shape, (10, 10, 10)), labels, (1, 1, 1)),
        score_map(spike(labels.shape, (10, 10, 18)), labels, (1, 1, 1)),
        score_map(np.zeros(labels.shape, dtype=np.float32), labels, (1, 1, 1)),
    ]
    summary = summarise(scores)
    assert summary["n"] == 3
    assert summary["pointing_hit_rate"] == pytest.approx(1 / 3)
    assert summary["pointing_hit_rate_ci95"] == pytest.approx(list(wilson_interval(1, 3)))
    assert summary["coronary_mass_share_median"] == 1.0  # shares 1, 1, 0
    assert summary["coronary_mass_share_mean"] == pytest.approx(2 / 3)
    assert summary["noncoronary_mass_share_mean"] == 0.0
    assert summary["hit_radius_mm"] == 5.0 and summary["mass_radius_mm"] == 10.0


def test_label_map_must_lie_on_the_scan_grid(tmp_path):
    spacing = (2.0, 0.8, 0.8)
    affine = canonical_affine(spacing, (10.0, -20.0, 30.0))
    labels = one_plaque((6, 8, 10), (3, 4, 5)).astype(np.uint8)
    good = write_nifti(labels, affine, tmp_path / "good_label.nii.gz")
    loaded = load_label_map(good, (6, 8, 10), affine)
    assert loaded.dtype == np.int16 and np.array_equal(loaded, labels)
    small = write_nifti(labels[:5], affine, tmp_path / "small_label.nii.gz")
    with pytest.raises(AidnetError, match=r"small_label\.nii\.gz: label map has shape 5×8×10"):
        load_label_map(small, (6, 8, 10), affine, scan="P1/scan")
    moved = write_nifti(labels, canonical_affine(spacing, (13.0, -20, 30)), tmp_path / "m.nii.gz")
    with pytest.raises(AidnetError, match=r"m\.nii\.gz: label map lies 3\.0 mm off"):
        load_label_map(moved, (6, 8, 10), affine)
    blurred = write_nifti(labels * 0.5, affine, tmp_path / "b.nii.gz")
    with pytest.raises(AidnetError, match="non-integer"):
        load_label_map(blurred, (6, 8, 10), affine)


class LookupNet:
    """Stand-in network for evaluate: for each known input image, features (and attention)
    are a Gaussian bump (σ = 1.5 network voxels) at a chosen point of the network grid."""

    siamese = False
    map_on_calcium = False  # its map is no calcium map (see aidnet.models.base.CACNet)

    def __init__(self, table):
        import torch

        self.table = [(torch.from_numpy(image), centre) for image, centre in table]
        self.training = False
        self.gain = torch.ones((), requires_grad=True)

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def _bump(self, image):
        import torch

        from aidnet.explain.gradcam import CALCIUM_LEVEL

        # the scan is recognised by its CT channel below the calcium level, which the
        # integrated gradients' path from the calcium-free baseline leaves unchanged
        def below(a):
            return a[0].clamp(max=CALCIUM_LEVEL)

        (centre,) = [c for known, c in self.table if torch.equal(below(known), below(image))]
        axes = np.meshgrid(
            *(np.arange(n, dtype=np.float64) for n in image.shape[1:]), indexing="ij"
        )
        d2 = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True))
        return torch.from_numpy(np.exp(-d2 / (2 * 1.5**2))).float()[None]

    def forward_single(self, x):
        import torch

        from aidnet.models.aidnet import SingleOutput

        bumps = torch.stack([self._bump(image) for image in x])
        features = (bumps * (1 + x[:, 1:2])).expand(-1, 2, -1, -1, -1) * self.gain
        pooled = features.mean(dim=(2, 3, 4)).sum(1, keepdim=True)
        logits = torch.cat([-pooled, pooled, pooled], dim=1)
        return SingleOutput(logits=logits, features=features, attention=bumps)


def test_evaluate_scores_localisation(tmp_path, monkeypatch):
    """evaluate_run on a phantom cohort with label maps: the stand-in network points at a
    plaque in every CAC-positive scan but one; metrics.json and localisation.csv say so."""
    import csv
    import json

    import aidnet.pipeline.common as common_module
    import aidnet.pipeline.evaluate as evaluate_module
    from aidnet.data.cache import load_cached, preprocess_cohort
    from aidnet.data.manifest import read_manifest
    from aidnet.io.read import read_volume
    from aidnet.phantom import make_cohort
    from aidnet.pipeline.common import Trained
    from aidnet.preprocess.geometry import CropGeometry

    manifest = make_cohort(tmp_path / "c", subjects=3, seed=11, class_mix=(0.4, 0.6, 0.0))
    records = read_manifest(manifest)
    size = (32, 48, 64)
    cache = tmp_path / "cache"
    done = preprocess_cohort(records, cache, size, progress=False).done
    table, positive, missed = [], [], None
    for record in records:
        cached = load_cached(done[record.key])
        geometry = CropGeometry.from_dict(cached.geometry)
        labels = read_volume(manifest.parent / record.extras["label_path"]).array
        plaque = np.argwhere(labels == 1)
        if len(plaque) == 0:
            table.append((cached.image, np.array(size) / 2))
            continue
        positive.append(record.key)
        centre = geometry.original_to_network_index(plaque[len(plaque) // 2])[0]
        if missed is None:  # this one points at the far corner of the crop box instead
            missed, centre = record.key, np.zeros(3)
        table.append((cached.image, centre))
    assert 2 <= len(positive) < len(records), "the cohort needs CAC-positive and negative scans"
    trained = Trained(
        LookupNet(table),
        {"name": "stand-in", "num_classes": 3, "input_size": list(size)},
        tmp_path / "stand-in.pt",
        None,
    )
    monkeypatch.setattr(common_module, "load_trained", lambda checkpoint: trained)
    out = tmp_path / "eval"
    metrics = evaluate_module.evaluate_run(trained.path, manifest, out, cache_dir=cache, n_boot=0)
    n = len(positive)
    saved = json.loads((out / "metrics.json").read_text())["localisation"]
    assert saved == json.loads(json.dumps(metrics["localisation"]))
    assert set(saved) == {"gradcam", "integrated_gradients", "attention", "attention_calcium"}
    for summary in saved.values():
        best_cell = {"pointing_hit_rate_best_cell"} if summary is saved["gradcam"] else set()
        assert set(summary) == best_cell | {
            "n",
            "pointing_hit_rate",
            "pointing_hit_rate_ci95",
            "coronary_mass_share_median",
            "coronary_mass_share_mean",
            "noncoronary_mass_share_median",
            "noncoronary_mass_share_mean",
            "hit_radius_mm",
            "mass_radius_mm",
        }
        assert summary["n"] == n
        assert summary["pointing_hit_rate"] == pytest.approx((n - 1) / n)
        assert summary["pointing_hit_rate_ci95"] == pytest.approx(list(wilson_interval(n - 1, n)))
        assert 0 < summary["coronary_mass_share_mean"] < 1
        assert (summary["hit_radius_mm"], summary["mass_radius_mm"]) == (5.0, 10.0)
    # the stand-in's feature map is on the network grid itself: its cells (here at most about
    # 8 mm in z and 3 mm in-plane) put a cell centre within 5 mm of every voxel
    assert saved["gradcam"]["pointing_hit_rate_best_cell"] == 1.0
    with (out / "localisation.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * n
    assert list(rows[0]) == [
        "subject",
        "visit",
        "map",
        "hit",
        "peak_distance_mm",
        "coronary_share",
        "noncoronary_share",
    ]
    hits = {(f"{r['subject']}_{r['visit']}", r["map"]): r["hit"] for r in rows}
    assert {k for k, _ in hits} == set(positive)
    assert all((h == "0") == (key == missed) for (key, _), h in hits.items())
    # a miss points farther than 5 mm, or its map is blank (no peak)
    assert all(
        r["peak_distance_mm"] == "" or float(r["peak_distance_mm"]) > 5
        for r in rows
        if r["hit"] == "0"
    )
    assert not (out / evaluate_module.LOCALISATION_LOG).exists()  # gone with the outputs written

    # killed after the first scan, then run again: the rest is computed, nothing twice
    import aidnet.explain.scoring as scoring_module

    real, calls = scoring_module.localise_item, []

    def dies_after_one(model, item, base):
        if calls:
            raise KeyboardInterrupt
        calls.append(item.record.key)
        return real(model, item, base)

    def counted(model, item, base):
        calls.append(item.record.key)
        return real(model, item, base)

    again = tmp_path / "again"
    monkeypatch.setattr(scoring_module, "localise_item", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        evaluate_module.evaluate_run(trained.path, manifest, again, cache_dir=cache, n_boot=0)
    assert not (again / "metrics.json").exists()
    assert (again / evaluate_module.LOCALISATION_LOG).is_file()
    monkeypatch.setattr(scoring_module, "localise_item", counted)
    evaluate_module.evaluate_run(trained.path, manifest, again, cache_dir=cache, n_boot=0)
    assert sorted(calls) == sorted(r.key for r in records)
    assert (again / "localisation.csv").read_text() == (out / "localisation.csv").read_text()
    assert json.loads((again / "metrics.json").read_text())["localisation"] == saved
    assert not (again / evaluate_module.LOCALISATION_LOG).exists()

    # worker processes score the maps while the network runs: the same scores, in scan order
    parallel = tmp_path / "parallel"
    evaluate_module.evaluate_run(
        trained.path, manifest, parallel, cache_dir=cache, n_boot=0, workers=2
    )
    assert (parallel / "localisation.csv").read_text() == (out / "localisation.csv").read_text()
    assert json.loads((parallel / "metrics.json").read_text())["localisation"] == saved

    # localise=False: no localisation anywhere
    off = tmp_path / "off"
    metrics = evaluate_module.evaluate_run(
        trained.path, manifest, off, cache_dir=cache, n_boot=0, localise=False
    )
    assert "localisation" not in metrics and not (off / "localisation.csv").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluate_refuses_a_label_map_on_another_grid(tmp_path, workers):
    """A real (untrained) checkpoint through the pipeline's own loading path; with worker
    processes reading the label maps, the same one line."""
    import aidnet.pipeline.evaluate as evaluate_module
    from aidnet.io.read import read_volume
    from aidnet.models.registry import build_model
    from aidnet.phantom import make_cohort
    from aidnet.training.checkpoint import save_checkpoint

    spec = {"name": "aidnet", "num_classes": 3, "features": [2, 4], "input_size": [8, 16, 16]}
    spec["head"] = "calcium"
    model = build_model("aidnet", num_classes=3, features=(2, 4), head="calcium")
    save_checkpoint(tmp_path / "model.pt", {"model_spec": spec, "model": model.state_dict()})

    manifest = make_cohort(tmp_path / "c", subjects=1, seed=3, class_mix=(0, 1, 0))
    label = manifest.parent / "labels" / "P0001_scan_label.nii.gz"
    volume = read_volume(label)
    write_nifti(volume.array[1:].astype(np.uint8), volume.affine, label)
    with pytest.raises(AidnetError, match=r"P0001_scan_label\.nii\.gz: label map has shape"):
        evaluate_module.evaluate_run(
            tmp_path / "model.pt",
            manifest,
            tmp_path / "eval",
            cache_dir=tmp_path / "cache",
            workers=workers,
        )


def test_cell_peaks_are_where_a_single_cell_map_peaks():
    """cell_peaks predicts, per axis, where a map that is 1 in one cell of the feature grid
    peaks after Grad-CAM's resampling (to the network grid, then to the original grid); the
    3-D argmax (first maximum) of every such map is checked."""
    import torch

    from aidnet.explain.gradcam import cell_peaks, upsample
    from aidnet.preprocess.geometry import CropGeometry

    geometry = CropGeometry(
        original_shape=(30, 41, 50),
        original_affine=np.eye(4).tolist(),
        crop_box=(2, 28, 5, 38, 3, 47),
        network_shape=(8, 12, 16),
    )
    grid = (2, 3, 4)
    axes = cell_peaks(grid, geometry)
    for axis, cells in zip(axes, grid, strict=True):
        assert len(axis) == cells
    for cell in np.ndindex(*grid):
        cam = torch.zeros((1, 1, *grid))
        cam[(0, 0, *cell)] = 1.0
        heat = geometry.to_original(upsample(cam, geometry.network_shape)[0, 0].numpy())
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        assert tuple(int(axes[d][cell[d]]) for d in range(3)) == peak
    # an inner cell peaks within a network voxel of its centre; the first cell at the crop's
    # edge (trilinear resampling holds the edge value, and a tie goes to the first voxel)
    start, crop, net = geometry.crop_box[0::2], geometry.crop_shape, geometry.network_shape
    for d, cells in enumerate(grid):
        assert axes[d][0] == start[d]
        for k in range(1, cells - 1):
            centre = start[d] + (k + 0.5) * crop[d] / cells - 0.5
            assert abs(axes[d][k] - centre) <= crop[d] / net[d]


def test_best_cell_hit_is_in_mm():
    from aidnet.explain.localisation import best_cell_hit

    labels = one_plaque((20, 20, 20), (10, 10, 10))
    axes = [np.array([2, 12]), np.array([10]), np.array([4, 16])]
    # nearest grid point (12, 10, 16): 2 voxels in z and 6 in x
    assert best_cell_hit(axes, labels, (1.0, 1.0, 0.5))  # sqrt(2² + 3²) = 3.6 mm
    assert not best_cell_hit(axes, labels, (2.0, 1.0, 1.0))  # sqrt(4² + 6²) = 7.2 mm
    assert not best_cell_hit(axes, np.zeros_like(labels), (1.0, 1.0, 1.0))


def test_summary_gives_the_best_cell_rate_only_when_every_scan_has_it():
    from dataclasses import replace

    labels = one_plaque()
    score = score_map(spike(labels.shape, (10, 10, 10)), labels, (1.0, 1.0, 1.0))
    with_cell = [replace(score, best_cell_hit=b) for b in (True, False, False, True)]
    assert summarise(with_cell)["pointing_hit_rate_best_cell"] == 0.5
    assert "pointing_hit_rate_best_cell" not in summarise([score, *with_cell])


def test_best_cell_hit_agrees_with_every_grid_point_measured():
    """The per-axis nearest index gives the same answer as measuring every point of the grid."""
    from aidnet.explain.localisation import best_cell_hit

    rng = np.random.default_rng(3)
    agreed = {True: 0, False: 0}
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(6, 30, size=3))
        labels = np.zeros(shape, dtype=np.int16)
        for _ in range(int(rng.integers(1, 4))):
            labels[tuple(int(rng.integers(n)) for n in shape)] = 1
        labels[tuple(int(rng.integers(n)) for n in shape)] = 2
        axes = [np.unique(rng.integers(0, n, size=int(rng.integers(1, 4)))) for n in shape]
        spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, size=3))
        points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        coronary = np.argwhere(labels == 1)
        gaps = (points[:, None, :] - coronary[None]) * np.asarray(spacing)
        expected = bool(np.sqrt((gaps**2).sum(axis=-1)).min() <= 5.0)
        assert best_cell_hit(axes, labels, spacing) == expected
        agreed[expected] += 1
    assert min(agreed.values()) > 20  # both answers were tried


def test_a_worker_that_dies_is_one_line_naming_the_scan(monkeypatch, tmp_path):
    """A worker killed mid-scan (the out-of-memory killer, say) stops the run with one
    AidnetError naming that scan, not a pool traceback."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool
    from contextlib import contextmanager
    from types import SimpleNamespace

    import aidnet.data.cache as cache_module
    import aidnet.data.pool as pool_module
    import aidnet.explain.scoring as scoring_module
    from aidnet.data.datasets import Item
    from aidnet.data.manifest import ScanRecord

    class DyingPool:
        def submit(self, fn, *args):
            future: Future = Future()
            future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
            return future

    @contextmanager
    def dying_pool(workers):
        yield DyingPool()

    monkeypatch.setattr(pool_module, "process_pool", dying_pool)
    monkeypatch.setattr(cache_module, "load_cached", lambda path: SimpleNamespace(image=None))
    monkeypatch.setattr(scoring_module, "network_maps_of", lambda trained, item, image: None)
    record = ScanRecord(subject="P1", visit="scan", path=tmp_path / "P1.nii.gz", agatston=5.0)
    items = [Item(record, tmp_path / "P1.npz"), Item(record, tmp_path / "P1b.npz")]
    with pytest.raises(AidnetError, match=r"P1\.nii\.gz: a worker process stopped"):
        list(scoring_module.maps_then_cpu(None, items, len, None, workers=2))
