"""The per-scan log that lets evaluate and explain resume after a kill."""

from pathlib import Path

from aidnet.data.datasets import Item
from aidnet.data.manifest import ScanRecord
from aidnet.pipeline.resume import ScanLog, job_context


def item(key, cache="x-0123.npz"):
    subject, visit = key.split("_")
    return Item(ScanRecord(subject, visit, Path("/d") / key, 0.0), Path("/c") / cache)


def test_log_serves_finished_scans_of_the_same_job_only(tmp_path):
    path = tmp_path / ".progress.jsonl"
    context = {"job": "explain", "sha256": "a"}
    log = ScanLog(path, context)
    log.add(item("P1_scan"), {"n": 1})
    log.add(item("P2_scan"), [1.5, float("nan")])
    again = ScanLog(path, context)
    assert len(again) == 2 and again.get(item("P1_scan")) == {"n": 1}
    assert again.get(item("P3_scan")) is None
    # the same scan preprocessed otherwise (another cache file) is not served
    assert again.get(item("P1_scan", cache="x-4567.npz")) is None
    # another checkpoint: nothing is served, and its lines are dropped from the file
    other = ScanLog(path, {"job": "explain", "sha256": "b"})
    assert len(other) == 0 and path.read_text() == ""
    other.remove()
    assert not path.exists()


def test_a_line_cut_short_by_a_kill_is_ignored(tmp_path):
    path = tmp_path / ".progress.jsonl"
    context = {"job": "localise"}
    ScanLog(path, context).add(item("P1_scan"), [])
    with path.open("a") as fh:
        fh.write('{"context": {"job": "localise"}, "key": "P2_sc')  # no newline: killed here
    log = ScanLog(path, context)
    assert len(log) == 1
    log.add(item("P2_scan"), [])
    assert len(ScanLog(path, context)) == 2  # the new line did not run into the broken one


def test_context_names_the_checkpoint_by_content(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert job_context("explain", a)["sha256"] == job_context("explain", b)["sha256"]
    b.write_bytes(b"other weights")
    assert job_context("explain", a)["sha256"] != job_context("explain", b)["sha256"]
    assert job_context("explain", a) != job_context("localise", a)


def test_a_changed_label_map_is_scored_again(tmp_path):
    import os

    label = tmp_path / "labels" / "P1_scan_label.nii.gz"
    label.parent.mkdir()
    label.write_bytes(b"labels")
    record = ScanRecord("P1", "scan", tmp_path / "P1", 0.0, {"label_path": "labels/" + label.name})
    scan = Item(record, tmp_path / "cache" / "P1_scan-0123.npz")
    log = ScanLog(tmp_path / ".progress.jsonl", {"job": "localise"}, base=tmp_path)
    log.add(scan, [{"hit": 1}])
    assert ScanLog(log.path, log.context, base=tmp_path).get(scan) == [{"hit": 1}]
    label.write_bytes(b"new labels")
    os.utime(label, ns=(1, 1))
    assert ScanLog(log.path, log.context, base=tmp_path).get(scan) is None
