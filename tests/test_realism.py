"""benchmarks/realism.py on one tiny phantom scan: sane values, a summary and a table."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def realism():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import realism
    finally:
        sys.path.remove(str(ROOT))
    return realism


@pytest.fixture(scope="module")
def scan():
    from aidnet.phantom import render_pair

    volume, labels, _ = render_pair(7, "small", 2)[0]
    return volume, labels


@pytest.fixture(scope="module")
def measured(realism, scan):
    return realism.measure(scan[0])


def test_tissue_values_are_those_of_a_chest_ct(measured):
    assert measured["hu.lung.median"] < -600
    assert measured["hu.bone.median"] > 300
    assert -190 < measured["hu.fat.median"] < -30
    assert 0 < measured["hu.blood.median"] < 100 and 0 < measured["hu.soft.median"] < 100
    assert 0 < measured["noise.soft_std"] < 100 and 0 < measured["nps.std_band"] < 100
    assert 0 < measured["nps.peak_cpmm"] <= 0.5 / measured["geo.pixel_mm"]
    assert 1.0 < measured["edge.rise_mm"] < 10.0
    assert measured["geo.slice_mm"] > 0 and 0 <= measured["geo.table"] <= 1


def test_heart_and_calcium_sit_inside_the_lungs_box(measured):
    for axis in "zyx":
        assert 0 < measured[f"heart.centre_{axis}"] < 1
        assert 0 <= measured[f"ca_roi.pos_{axis}"] <= 1
    assert measured["ca_roi.count"] > 0 and measured["ca_out.count"] > 0
    assert measured["ca_roi.peak_hu.q50"] > 130


def test_calcium_channel_is_part_of_the_calcium_in_the_region(measured):
    """The network's calcium channel (full preset) is some of the HU > 130 material inside the
    region of interest, never more."""
    assert measured["channel.count"] > 0
    assert 0 < measured["channel.total_ml"] <= measured["ca_roi.volume_ml"]
    assert measured["channel.largest_mm3"] <= 1000 * measured["channel.total_ml"] + 1e-6
    assert 0 <= measured["channel.big_ml"] <= measured["channel.total_ml"]


def test_region_of_interest_holds_the_coronary_calcium(realism, scan):
    """Sanity check against the phantom's labels (the measurements themselves use none)."""
    volume, labels = scan
    regions = realism.find_regions(volume)
    coronary = (labels == 1) & (np.asarray(volume.array) > 130)
    assert coronary.any()
    assert regions["roi"][coronary].mean() > 0.9


def test_summary_flags_real_values_outside_the_phantom_range(realism):
    phantom = [{"a": 1.0, "n.patches": 5}, {"a": 3.0, "n.patches": 9}]
    real = {"r1": {"a": 2.0, "n.patches": 1}, "r2": {"a": 7.0, "n.patches": 1}}
    summary = realism.summarise(phantom, real)
    assert summary["a"]["phantom"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2}
    assert summary["a"]["gap"] == pytest.approx(2.0) and summary["n.patches"]["gap"] is None
    table = realism.markdown(summary, ["r1", "r2"])
    assert "| `a` | 2 [1 – 3] | 2 | **7** | 2.0 |" in table


def test_a_missing_real_scan_is_one_line_and_exit_code_2(realism, tmp_path, capsys):
    code = realism.main(
        ["--real", str(tmp_path / "no.nrrd"), "--phantom", str(tmp_path), "--out", "x.json"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
