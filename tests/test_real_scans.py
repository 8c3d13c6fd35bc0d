"""Two real non-contrast chest CTs through the user's commands: lungs, preprocess (the contrast
check), predict and explain, with the heat maps on each scan's own grid and affine.

The scans (pyradiomics 3.0.1 test data, 512×512×48 and ×61 at 5 mm) are fetched by
``benchmarks/real_scans.py`` (``make real-scans``) into its cache folder, which the tests only
read; without the package registry they skip. The checkpoint is a tiny model trained here on a
three-subject phantom cohort: these tests check that the path works on real anatomy, not what
the model says.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from cli_runner import invoke

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("lung1", "lung2")
#: a whole adult pair of lungs, in litres
LUNG_LITRES = (2.0, 8.0)
#: the heat maps every model writes
MAPS = ("gradcam", "integrated_gradients")
#: the calcium candidates' threshold: integrated gradients are kept on those voxels only
CALCIUM_HU = 130.0


def run(*args) -> str:
    result = invoke([str(a) for a in args])
    assert result.exit_code == 0, f"aidnet {' '.join(map(str, args))}:\n{result.output}"
    return result.output


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def scans():
    """name → path of the two scans in the real-scans cache (fetched once, then only read)."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.real_scans import RegistryUnreachable, fetch
    finally:
        sys.path.remove(str(ROOT))
    try:
        paths = fetch()
    except RegistryUnreachable as exc:
        pytest.skip(
            f"real scans: the package registry could not be reached ({exc}); fetch them "
            "with `make real-scans`"
        )
    folder = next(iter(paths.values())).parent
    before = _listing(folder)
    yield {name: paths[f"{name}_image.nrrd"] for name in NAMES}
    assert _listing(folder) == before, f"the tests changed {folder}: only the script writes there"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny AID-Net trained for one epoch on three phantom subjects (a checkpoint, not a
    detector)."""
    root = tmp_path_factory.mktemp("tiny")
    run("phantom", "--out", root / "cohort", "--subjects", 3, "--seed", 5)
    run(
        *("train", "--manifest", root / "cohort" / "manifest.csv", "--out", root / "run"),
        *("--preset", "tiny", "--epochs", 1),
    )
    return root / "run"


@pytest.fixture(scope="module")
def manifest(scans, tmp_path_factory):
    path = tmp_path_factory.mktemp("manifest") / "real.csv"
    rows = [f"{name},scan,{scans[name]}" for name in NAMES]
    path.write_text("subject,visit,path\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def lungs(scans, tmp_path_factory):
    """name → (mask path, right and left lung litres as ``aidnet lungs`` reports them)."""
    out = tmp_path_factory.mktemp("lungs")
    found = {}
    for name in NAMES:
        text = run("lungs", scans[name], "--out", out / f"{name}.nii.gz")
        litres = re.search(r"right lung ([\d.]+) L, left lung ([\d.]+) L", text)
        assert litres, text
        found[name] = (out / f"{name}.nii.gz", float(litres[1]), float(litres[2]))
    return found


@pytest.fixture(scope="module")
def cache(manifest, tmp_path_factory):
    """``aidnet preprocess`` of both scans at the tiny preset's input size (the checkpoint's)."""
    folder = tmp_path_factory.mktemp("cache")
    text = run("preprocess", manifest, "--out", folder, "--preset", "tiny")
    assert "2 of 2 scans preprocessed" in text and "0 failed" in text, text
    return folder


@pytest.fixture(scope="module")
def explained(tiny_run, manifest, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain")
    text = run(
        *("explain", "--checkpoint", tiny_run, "--manifest", manifest),
        *("--out", out, "--cache", cache),
    )
    assert "heat maps for 2 scans" in text, text
    return out


def input_grid(scan: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """The NIfTI shape and RAS affine a map on ``scan``'s own grid must have, from the NRRD
    header alone (SimpleITK's LPS turned to RAS), independent of aidnet's readers."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(scan))
    reader.ReadImageInformation()
    direction = np.asarray(reader.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(reader.GetSpacing())
    lps[:3, 3] = reader.GetOrigin()
    return tuple(reader.GetSize()), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def load_on_input_grid(path: Path, scan: Path) -> Any:
    """The NIfTI ``path``, checked to lie on ``scan``'s grid: its shape and affine, and the
    affine aidnet's writer is given for that scan (``Volume.to_source``)."""
    from aidnet.io.read import read_volume

    img: Any = nib.load(str(path))
    shape, affine = input_grid(scan)
    assert img.shape == shape
    np.testing.assert_allclose(img.affine, affine, atol=1e-3)
    source = read_volume(scan).source
    assert source is not None
    np.testing.assert_allclose(img.affine, source.affine[:, [2, 1, 0, 3]], atol=1e-3)
    return img


def source_hu(scan: Path) -> np.ndarray:
    """The scan's HU in NIfTI (i, j, k) order, read with SimpleITK rather than aidnet."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(scan))).transpose(2, 1, 0)


def assert_on_calcium(path: Path, scan: Path) -> None:
    """The integrated-gradients map at ``path`` is nonzero on HU > 130 voxels of ``scan`` only:
    the map's voxels line up with the scan's (a flip or shift would put it on soft tissue)."""
    data = np.asarray(nib.load(str(path)).dataobj)  # type: ignore[attr-defined]
    assert np.all(source_hu(scan)[data > 0] > CALCIUM_HU)


@pytest.mark.parametrize("name", NAMES)
def test_lungs_volumes_and_sides(scans, lungs, name):
    path, right, left = lungs[name]
    assert LUNG_LITRES[0] <= right + left <= LUNG_LITRES[1], (right, left)
    assert right > 0.5 and left > 0.5, (right, left)  # both lungs found, neither a fragment
    img = load_on_input_grid(path, scans[name])
    mask = np.asarray(img.dataobj)
    voxel_l = abs(float(np.linalg.det(img.affine[:3, :3]))) / 1e6
    for label, litres in ((1, right), (2, left)):
        assert np.count_nonzero(mask == label) * voxel_l == pytest.approx(litres, abs=0.006)
    # the right lung lies on the patient's right: larger RAS x
    centre_x = [
        (img.affine @ np.append(np.argwhere(mask == label).mean(axis=0), 1.0))[0]
        for label in (1, 2)
    ]
    assert centre_x[0] > centre_x[1] + 50, centre_x


@pytest.mark.parametrize("name", NAMES)
def test_contrast_check_measures_unenhanced_tissue(scans, lungs, cache, name):
    """Preprocessing passed (``cache``); the check measured tissue and found it unenhanced,
    rather than saying nothing for lack of tissue between the lungs."""
    from aidnet.io.read import read_volume
    from aidnet.preprocess.contrast import ENHANCED_HU, soft_tissue_mode_hu

    volume = read_volume(scans[name])
    mask = read_volume(lungs[name][0])
    assert mask.shape == volume.shape
    mode = soft_tissue_mode_hu(volume.array, mask.array, volume.spacing)
    assert mode is not None and 0.0 < mode < ENHANCED_HU, mode
    assert len(list(cache.glob(f"{name}_scan-*.npz"))) == 1


@pytest.mark.parametrize("name", NAMES)
def test_predict(scans, tiny_run, name, tmp_path):
    run("predict", scans[name], "--checkpoint", tiny_run, "--out", tmp_path)
    result = json.loads((tmp_path / "prediction.json").read_text())
    assert 0.0 <= result["p_cac"] <= 1.0
    probs = list(result["class_probabilities"].values())
    assert len(probs) == 3 and sum(probs) == pytest.approx(1.0)
    (scan,) = result["scans"]
    assert scan["input"] == str(scans[name])
    data = load_on_input_grid(tmp_path / scan["heatmaps"]["gradcam"], scans[name]).get_fdata()
    assert np.isfinite(data).all() and data.min() >= 0.0 and data.max() <= 1.0
    assert_on_calcium(tmp_path / scan["heatmaps"]["integrated_gradients"], scans[name])


def test_predict_reports_the_noise_ceiling(scans, tiny_run, tmp_path):
    """A model trained with ``noise_ceiling``: both real scans are read as they are (their noise
    is under the ceiling), lung2 with a sharp lung kernel's noise on it is smoothed, and
    ``prediction.json`` says so per scan; a model without the option reports nothing."""
    from scipy import ndimage

    from aidnet.io.nifti import write_volume
    from aidnet.io.read import read_volume

    preset = tmp_path / "ceiling.yaml"
    preset.write_text("preset: tiny\nnoise_ceiling: true\n")
    manifest = tiny_run.parent / "cohort" / "manifest.csv"
    ceiling_run = tmp_path / "run"
    run("train", "--manifest", manifest, "--out", ceiling_run, "--preset", preset, "--epochs", 1)
    volume = read_volume(scans["lung2"])
    hu = np.asarray(volume.array, dtype=np.float32)
    grain = np.random.default_rng(0).standard_normal(hu.shape).astype(np.float32)
    grain -= 0.8 * ndimage.gaussian_filter(grain, (0.0, 1.0, 1.0))
    sharp = tmp_path / "sharp.nii.gz"
    write_volume(volume.with_array(hu + grain * np.float32(80.0 / grain.std())), sharp)
    for name, path in (("lung1", scans["lung1"]), ("lung2", scans["lung2"]), ("sharp", sharp)):
        out = tmp_path / name
        run("predict", path, "--checkpoint", ceiling_run, "--out", out)
        (scan,) = json.loads((out / "prediction.json").read_text())["scans"]
        noise = scan["noise"]
        if name == "sharp":
            assert noise["noise_hu"] > 60.0 and noise["smoothed_mm"] > 0.0, noise
        else:
            assert 5.0 < noise["noise_hu"] < 35.0 and noise["smoothed_mm"] == 0.0, noise
    run("predict", scans["lung2"], "--checkpoint", tiny_run, "--out", tmp_path / "plain")
    (scan,) = json.loads((tmp_path / "plain" / "prediction.json").read_text())["scans"]
    assert "noise" not in scan


@pytest.mark.parametrize("name", NAMES)
def test_explain_maps_on_the_scan_grid(scans, explained, name):
    for map_name in MAPS:
        path = explained / f"{name}_scan_{map_name}.nii.gz"
        assert path.is_file(), sorted(p.name for p in explained.iterdir())
        img = load_on_input_grid(path, scans[name])
        assert img.get_data_dtype() == np.float32
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0.0 and data.max() <= 1.0
        assert (explained / f"{name}_scan_{map_name}.png").is_file()
    assert_on_calcium(explained / f"{name}_scan_integrated_gradients.nii.gz", scans[name])


def test_stability_benchmark_scores_phantom_and_real_scans_as_predict_does(
    scans, tiny_run, tmp_path
):
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.stability import VARIANTS, main
    finally:
        sys.path.remove(str(ROOT))
    from aidnet.api import load_model

    out = tmp_path / "stability.json"
    manifest = tiny_run.parent / "cohort" / "manifest.csv"
    args = [str(tiny_run), "--manifest", str(manifest), "--split", "all", "--per-class", "1"]
    assert main([*args, "--scans", str(scans["lung1"].parent), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [s["name"] for s in report["scans"]]
    phantom = [s for s in report["scans"] if s["source"] == "phantom"]
    assert names[-2:] == ["lung1", "lung2"] and 1 <= len(phantom) <= 2
    for scan in report["scans"]:
        assert set(scan["p_cac"]) == {"original", *VARIANTS}
        for values in scan["p_cac"].values():
            assert len(values) == 1 and 0.0 <= values[0] <= 1.0
    # unchanged scans are scored as `aidnet predict` scores them
    model = load_model(tiny_run, device="cpu")
    for name in NAMES:
        (original,) = report["summary"]["real"][name]["original"]
        assert original == pytest.approx(model.predict(scans[name]).p_cac, abs=1e-4)
    for variant in VARIANTS:
        assert report["summary"]["phantom"][variant]["n"] == len(phantom)
