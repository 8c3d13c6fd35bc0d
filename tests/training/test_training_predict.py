"""`aidnet predict` from a trained run: one scan and a pair, bad checkpoints, a scan with no
lungs."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from training_helpers import TINY

from aidnet.config import load_config
from aidnet.training.checkpoint import load_checkpoint, save_checkpoint
from aidnet.training.loop import train
from cli_runner import invoke


@pytest.mark.slow
def test_predict_one_scan_and_a_pair(cohort, cache, tmp_path):
    from aidnet.data.manifest import read_manifest

    run = tmp_path / "run"
    train(load_config("tiny", epochs=1, **TINY), cohort, run, cache_dir=cache, progress=False)
    records = read_manifest(cohort)
    scan, rescan = records[0], records[1]
    assert scan.subject == rescan.subject
    result = invoke(
        ["predict", "--checkpoint", str(run), str(scan.path), "--out", str(tmp_path / "one")]
    )
    assert result.exit_code == 0, result.output
    one = json.loads((tmp_path / "one" / "prediction.json").read_text())
    assert set(one["class_probabilities"]) == {"0", "1-399", ">=400"}
    assert sum(one["class_probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert one["p_cac"] == pytest.approx(
        one["class_probabilities"]["1-399"] + one["class_probabilities"][">=400"], abs=1e-6
    )
    assert one["model"] == "aidnet" and len(one["checkpoint_sha256"]) == 64
    assert one["disagreement"] is False and len(one["scans"]) == 1
    args = ["predict", "--checkpoint", str(run / "best.pt"), str(scan.path), str(rescan.path)]
    result = invoke(args + ["--out", str(tmp_path / "pair")])
    assert result.exit_code == 0, result.output
    pair = json.loads((tmp_path / "pair" / "prediction.json").read_text())
    p = [s["p_cac"] for s in pair["scans"]]
    assert pair["p_cac"] == pytest.approx(sum(p) / 2, abs=1e-6)
    assert pair["scans"][0]["p_cac"] == pytest.approx(one["p_cac"], abs=1e-6)
    assert pair["disagreement"] == (
        pair["scans"][0]["predicted_class"] != pair["scans"][1]["predicted_class"]
    )
    # heat maps of each input on its own grid and affine, named scan/rescan (never the file name)
    import nibabel as nib

    from aidnet.io.read import read_volume

    assert pair["scans"][1]["heatmaps"]["gradcam"] == "rescan_gradcam.nii.gz"
    for key, record in (("scan", scan), ("rescan", rescan)):
        for name in ("gradcam", "attention"):
            image = nib.load(tmp_path / "pair" / f"{key}_{name}.nii.gz")
            source = nib.load(record.path)
            assert image.shape == source.shape
            np.testing.assert_allclose(image.affine, source.affine, atol=1e-4)
            values = np.asarray(image.dataobj)
            assert values.min() >= 0 and values.max() <= 1
            assert (tmp_path / "pair" / f"{key}_{name}.png").stat().st_size > 1000
    assert (
        read_volume(tmp_path / "pair" / "scan_gradcam.nii.gz").shape == read_volume(scan.path).shape
    )


def test_predict_with_bad_checkpoints_is_one_line(cohort, cache, tmp_path):
    from aidnet.data.manifest import read_manifest

    scan = str(read_manifest(cohort)[0].path)
    run = tmp_path / "run"
    train(load_config("tiny", epochs=1, **TINY), cohort, run, cache_dir=cache, progress=False)
    data = (run / "best.pt").read_bytes()
    state = load_checkpoint(run / "best.pt")
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pt")  # a pickled network, not weights
    # bytes changed inside one tensor's data: PyTorch itself loads this with wrong weights
    damaged = bytearray(data)
    with zipfile.ZipFile(run / "best.pt") as archive:
        for member in archive.infolist():
            if "/data/" in member.filename:  # each tensor's storage: invert its first bytes
                start = member.header_offset + 30 + len(member.filename) + len(member.extra)
                end = start + min(64, member.file_size)
                damaged[start:end] = bytes(255 - b for b in damaged[start:end])
    (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
    changed = torch.load(tmp_path / "damaged.pt", weights_only=True)["model"]
    assert any(not torch.equal(v, state["model"][k]) for k, v in changed.items())
    state["model_spec"] = {**state["model_spec"], "name": "idnet"}
    save_checkpoint(tmp_path / "mismatch.pt", state)
    cases = {
        "cut.pt": "bytes that are not a whole PyTorch file",
        "other.pt": "not an aidnet checkpoint",
        "module.pt": "torch.nn.modules.linear.Linear), not only tensors",
        "damaged.pt": "damaged checkpoint",
        "mismatch.pt": "weights do not fit model idnet",
        "missing.pt": "checkpoint not found",
    }
    for name, message in cases.items():
        out = tmp_path / f"out-{name}"
        result = invoke(["predict", "--checkpoint", str(tmp_path / name), scan, "--out", str(out)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aidnet: error: "), result.output
        assert str(tmp_path / name) in lines[0] and message in lines[0], lines[0]
        assert not out.exists()


def test_predict_on_a_head_names_the_file(cohort, cache, tmp_path, head_ct):
    from aidnet.data.manifest import read_manifest
    from aidnet.io.nifti import write_nifti

    run = tmp_path / "run"
    train(load_config("tiny", epochs=1, **TINY), cohort, run, cache_dir=cache, progress=False)
    head = tmp_path / "head.nii.gz"
    write_nifti(head_ct.array.astype("int16"), head_ct.affine, head)
    good = str(read_manifest(cohort)[0].path)
    for inputs in ([str(head)], [good, str(head)]):  # alone, and as the rescan of a good scan
        out = tmp_path / f"out{len(inputs)}"
        result = invoke(["predict", "--checkpoint", str(run), *inputs, "--out", str(out)])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"aidnet: error: {head}: no lungs found")
        assert not out.exists()  # not even the good scan's heat maps
