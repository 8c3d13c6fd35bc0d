"""The notebook API (aidnet.api) and the shipped default model's place in the commands."""

import json

import nibabel as nib
import numpy as np
import pytest

import aidnet.weights
from aidnet.api import Prediction, load_model
from aidnet.config import load_config
from aidnet.errors import AidnetError
from aidnet.phantom import make_cohort
from aidnet.training.loop import train
from cli_runner import invoke


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, subjects=8, seed=9, size="small", dicom_fraction=0.0)


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(
        load_config("tiny", epochs=1, val_fraction=0.25, test_fraction=0.25),
        cohort,
        out,
        progress=False,
    )
    return out


def _a_scan(cohort):
    return cohort.parent / "images" / sorted((cohort.parent / "images").iterdir())[0].name


def test_predict_gives_probabilities_and_maps_on_the_scans_own_grid(run, cohort):
    model = load_model(run, device="cpu")
    scan = _a_scan(cohort)
    result = model.predict(scan)
    assert isinstance(result, Prediction)
    probs = np.array(list(result.class_probabilities.values()))
    assert set(result.class_probabilities) == {"0", "1-399", ">=400"}
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.p_cac == pytest.approx(1.0 - result.class_probabilities["0"], abs=1e-6)
    image = nib.load(scan)
    assert "gradcam" in result.heatmaps
    for name, heat in result.heatmaps.items():
        assert heat.shape == image.shape, name
        assert np.isfinite(heat).all() and heat.min() >= 0, name
    np.testing.assert_allclose(result.affine, image.affine, atol=1e-4)


def test_predict_agrees_with_the_command(run, cohort, tmp_path):
    scan = _a_scan(cohort)
    result = invoke(["predict", str(scan), "--checkpoint", str(run), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "p" / "prediction.json").read_text())
    api = load_model(run, device="cpu").predict(scan)
    assert api.p_cac == pytest.approx(written["p_cac"], abs=1e-6)
    heat = nib.load(tmp_path / "p" / "scan_gradcam.nii.gz").get_fdata()
    np.testing.assert_allclose(api.heatmaps["gradcam"], heat, atol=1e-3)


def test_without_a_checkpoint_the_default_model_is_used(run, cohort, tmp_path, monkeypatch):
    monkeypatch.setattr(aidnet.weights, "FILE", "missing.pt")
    with pytest.raises(AidnetError, match="no default model in this install"):
        load_model()
    result = invoke(["predict", str(_a_scan(cohort)), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no default model" in result.output
    best = run / "best.pt"
    monkeypatch.setattr(aidnet.weights, "default_checkpoint", lambda: best)
    assert load_model().checkpoints == [best]
    result = invoke(["predict", str(_a_scan(cohort)), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "default model" in result.output and "synthetic" in result.output
    assert json.loads((tmp_path / "d" / "prediction.json").read_text())["checkpoint"] == str(best)


def test_a_missing_scan_is_one_line_naming_it(run, tmp_path):
    with pytest.raises(AidnetError, match="nothing.nii.gz"):
        load_model(run, device="cpu").predict(tmp_path / "nothing.nii.gz")
