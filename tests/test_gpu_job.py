"""benchmarks/gpu_job.py at a tiny size on the CPU: every phase runs and reports finite figures."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_job_on_cpu_at_tiny_size(tmp_path):
    exported = tmp_path / "exported"
    exported.mkdir()
    env = {**os.environ, "OUT": str(exported), "PYTHONPATH": str(ROOT / "src")}
    command = [
        *(sys.executable, "-m", "benchmarks.gpu_job", "--out", str(tmp_path / "job")),
        *("--device", "cpu", "--workers", "2", "--subjects", "14", "--size", "small"),
        *("--preset", "tiny", "--epochs", "2", "--n-boot", "20"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "job" / "gpu_job_tiny.json").read_text())
    assert data["finished"] == ["phantom", "preprocess", "train", "evaluate"]
    assert data["preset"] == "tiny" and data["machine"]["device"] == "cpu"
    assert data["cohort"] == {"subjects": 14, "size": "small", "seed": 0}
    assert data["preprocess"] == {"scans": 28, "reused": 0, "failed": 0}
    train = data["train"]
    assert train["epochs"] == 2 and len(train["epoch_s"]) == 2
    assert train["pairs_per_epoch"] > 0 and train["pairs_per_epoch"] % 2 == 0  # whole batches
    assert train["median_epoch_s"] > 0 and math.isfinite(train["pairs_per_s"])
    assert train["pairs_per_s"] == pytest.approx(train["pairs_per_epoch"] / train["median_epoch_s"])
    test = data["test"]
    assert 0 < test["n_positive"] < test["n"]  # both classes, so the AUC is defined
    assert 0.0 <= test["auc"] <= 1.0 and test["device"] == "cpu"
    assert data["pointing_game"], "no CAC-positive test scan was localised"
    for score in data["pointing_game"].values():
        assert score["n"] >= 1 and 0.0 <= score["hit_rate"] <= 1.0
    phases = data["phases_s"]
    assert set(phases) == {"phantom", "preprocess", "train", "evaluate", "total"}
    assert all(math.isfinite(s) and s > 0 for s in phases.values())
    assert phases["total"] >= sum(v for k, v in phases.items() if k != "total")
    assert f"test AUC {test['auc']:.3f} (n = {test['n']} scans" in done.stdout
    # the device tool's folder gets the JSON, the training log and the test metrics
    assert json.loads((exported / "gpu_job_tiny.json").read_text()) == data
    assert {p.name for p in exported.iterdir()} == {
        "gpu_job_tiny.json",
        "log_tiny.csv",
        "metrics_tiny.json",
    }
