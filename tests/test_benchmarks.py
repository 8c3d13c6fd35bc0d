"""The benchmarks run at a reduced size and write the fields `make bench` reports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_evaluate_workers_benchmark_at_a_tiny_size(tmp_path):
    out = tmp_path / "evaluate_workers.json"
    command = [sys.executable, "-m", "benchmarks.evaluate_workers", "--subjects", "2"]
    command += ["--size", "small", "--preset", "tiny", "--repeats", "1", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["scans"] == 4 and result["preset"] == "tiny" and result["device"] == "cpu"
    for workers in (1, 2):
        runs = result[f"workers_{workers}_s"]["runs"]
        assert len(runs) == 1 and runs[0] > 0
        assert result[f"workers_{workers}_s"]["median"] == runs[0]
    one, two = result["workers_1_s"]["median"], result["workers_2_s"]["median"]
    assert result["speedup_2_over_1"] == pytest.approx(one / two)
    assert result["ratio_2_to_1"] == pytest.approx(two / one)
    assert result["target"] == {"speedup_2_over_1": 1.7, "cores": 2}
    assert result["meets_target"] == (one / two >= 1.7)
    assert result["same_predictions"] is True


@pytest.mark.parametrize(
    "name, module, function",
    [
        ("evaluate_workers", "benchmarks.evaluate_workers", "bench_evaluate_workers"),
        ("localise", "benchmarks.localise", "bench_localise"),
    ],
)
def test_the_benchmark_is_registered(name, module, function):
    import importlib

    sys.path.insert(0, str(ROOT))
    try:
        bench = getattr(importlib.import_module(module), function)
        from benchmarks.run import BENCHES
    finally:
        sys.path.remove(str(ROOT))
    assert BENCHES[name] is bench


@pytest.mark.slow
def test_localise_benchmark_at_a_tiny_size(tmp_path):
    out = tmp_path / "localise.json"
    command = [sys.executable, "-m", "benchmarks.localise", "--subjects", "3", "--size", "small"]
    command += ["--preset", "tiny", "--repeats", "1", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["scans"] == 6 and 1 <= result["scans_scored"] <= 6
    assert result["evaluate_with_localisation_s"]["runs"][0] > 0
    assert result["ratio_localise_to_predict"] == pytest.approx(
        result["localise_per_scan_s"] / result["predict_per_scan_s"]
    )
    single = result["single_scan"]
    for side in ("ours", "reference_nn_conv3d_one_step_per_pass"):
        assert single[side]["forward_s"] > 0 and single[side]["integrated_gradients_s"] > 0
    assert single["ratio_forward"] == pytest.approx(
        single["ours"]["forward_s"] / single["reference_nn_conv3d_one_step_per_pass"]["forward_s"]
    )


def test_stability_summary_counts_moves_per_change():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.stability import VARIANTS, summarise
    finally:
        sys.path.remove(str(ROOT))
    first, *rest = VARIANTS

    def scan(name, original, changed, other):
        p = {"original": original, first: changed, **dict.fromkeys(rest, other)}
        return {"name": name, "source": "real" if name == "lung2" else "phantom", "p_cac": p}

    scans = [
        scan("phantom", [0.1, 0.5], [0.4, 0.5], [0.1, 0.5]),  # moves 0.3 and 0
        scan("phantom", [0.9, 0.2], [0.8, "refused"], [0.9, 0.2]),  # 0.1; an error is skipped
        scan("lung2", [0.6, 0.3], [0.1, 0.3], [0.6, 0.3]),
    ]
    summary = summarise(scans, checkpoints=2)
    row = summary["phantom"][first]
    assert row["n"] == 3 and row["max_abs_change"] == pytest.approx(0.3)
    assert row["median_abs_change"] == pytest.approx(0.1)
    assert row["share_above_0.2"] == pytest.approx(1 / 3, abs=1e-3)
    assert summary["phantom"][rest[0]]["max_abs_change"] == 0.0
    assert summary["real"] == {"lung2": scans[2]["p_cac"]}
