"""The command line: help, the Agatston command, and one-line errors for bad input."""

import json

import nibabel as nib
import numpy as np
import pytest

from aidnet.io.nifti import write_nifti
from aidnet.io.volume import canonical_affine
from cli_runner import invoke


def run(*args):
    return invoke([str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("aidnet: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("phantom", "agatston", "train", "predict", "evaluate", "explain", "demo"):
        assert command in result.output


@pytest.fixture
def scan(tmp_path):
    hu = np.full((5, 20, 20), -40, dtype=np.int16)
    hu[2, 4:8, 4:8] = 420  # 16 px at 0.5 mm = 4 mm^2, weight 4, thickness 2.5
    hu[3, 12:14, 12:14] = 150  # 4 px = 1 mm^2, weight 1
    labels = np.zeros_like(hu, dtype=np.uint8)
    labels[2, 4:8, 4:8] = 1
    labels[3, 12:14, 12:14] = 2
    aff = canonical_affine((2.5, 0.5, 0.5))
    write_nifti(hu, aff, tmp_path / "ct.nii.gz")
    write_nifti(labels, aff, tmp_path / "label.nii.gz")
    return tmp_path


def test_agatston_command(scan):
    result = run("agatston", scan / "ct.nii.gz", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = 4 * 4 * 2.5 / 3 + 1 * 1 * 2.5 / 3
    assert data["agatston"] == pytest.approx(expected)
    assert len(data["lesions"]) == 2
    masked = run("agatston", scan / "ct.nii.gz", "--mask", scan / "label.nii.gz", "--label", 1)
    assert masked.exit_code == 0
    assert f"Agatston score: {4 * 4 * 2.5 / 3:.2f}" in masked.output
    assert "risk category:  11-100" in masked.output


def test_agatston_missing_file(tmp_path):
    one_line_error(run("agatston", tmp_path / "nope.nii.gz"), "nope.nii.gz", "file not found")


def test_agatston_unreadable_image(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    one_line_error(run("agatston", tmp_path / "bad.nii.gz"), "bad.nii.gz", "not a readable image")


def test_agatston_mask_of_other_shape(scan, tmp_path):
    write_nifti(np.zeros((2, 3, 4), np.uint8), np.eye(4), tmp_path / "small.nii.gz")
    one_line_error(
        run("agatston", scan / "ct.nii.gz", "--mask", tmp_path / "small.nii.gz"), "does not match"
    )


def test_train_manifest_without_path_column(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,visit,file,agatston\nP1,scan,a.nii.gz,0\n")
    result = run("train", "--manifest", manifest, "--out", tmp_path / "run", "--preset", "tiny")
    one_line_error(result, "m.csv", "lacks the column(s) path")


def test_train_negative_penalty_weight_is_one_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,visit,path,agatston\n")
    result = run(
        "train", "--manifest", manifest, "--out", tmp_path / "run", "--negative-evidence", "-1"
    )
    one_line_error(result, "negative_evidence must be >= 0, not -1.0")
    assert not (tmp_path / "run").exists()


def test_train_missing_manifest(tmp_path):
    result = run("train", "--manifest", tmp_path / "none.csv", "--out", tmp_path / "run")
    one_line_error(result, "none.csv", "manifest not found")


def test_evaluate_with_a_file_that_is_not_a_checkpoint(tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a checkpoint")
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,visit,path\n")
    result = run("evaluate", "--checkpoint", fake, "--manifest", manifest, "--out", tmp_path / "o")
    one_line_error(result, "model.pt", "not a readable aidnet checkpoint")


def test_bad_manifest_leaves_no_run_folder(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,visit,path,agatston\nP1,scan,missing.nii.gz,0\n")
    result = run("train", "--manifest", manifest, "--out", tmp_path / "run", "--preset", "tiny")
    one_line_error(result, "missing.nii.gz not found")
    assert not (tmp_path / "run").exists()


def test_phantom_command_and_bad_size(tmp_path):
    result = run("phantom", "--out", tmp_path / "c", "--subjects", 2, "--seed", 4)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "c" / "manifest.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("subject,visit,path,agatston")
    one_line_error(run("phantom", "--out", tmp_path / "d", "--size", "huge"), "--size")
    assert not (tmp_path / "d").exists()


def test_version():
    from aidnet import __version__

    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"aidnet {__version__}"


def ras_nifti(volume, path):
    """Write a canonical volume as a NIfTI stored in RAS order (i → right, j → anterior)."""
    import nibabel as nib

    data = np.transpose(volume.array, (2, 1, 0))[::-1, ::-1, ::-1].astype(np.int16)
    sz, sy, sx = volume.spacing
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-100.0, -80.0, -150.0]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)
    return data.shape, affine


def test_lungs_command_writes_the_mask_on_the_input_grid(tmp_path):
    import nibabel as nib

    from test_lung import synthetic_chest

    volume, truth = synthetic_chest((40, 64, 64), (6.0, 6.0, 6.0))
    shape, affine = ras_nifti(volume, tmp_path / "chest.nii.gz")
    result = run("lungs", tmp_path / "chest.nii.gz", "--out", tmp_path / "lungs.nii.gz")
    assert result.exit_code == 0, result.output
    out = nib.load(tmp_path / "lungs.nii.gz")
    assert out.shape == shape
    assert np.allclose(out.affine, affine)
    mask = np.asarray(out.dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1, 2}
    # the right lung (1) lies at the patient's right: larger i in a RAS file = further right
    truth_ras = np.transpose(truth, (2, 1, 0))[::-1, ::-1, ::-1]
    assert ((mask == 1) & (truth_ras == 1)).sum() > 0.9 * (truth_ras == 1).sum()
    litres = [(mask == k).sum() * 6.0**3 / 1e6 for k in (1, 2)]
    line = result.output.strip()
    assert line == (
        f"wrote {tmp_path / 'lungs.nii.gz'} "
        f"(right lung {litres[0]:.2f} L, left lung {litres[1]:.2f} L)"
    )


def test_lungs_command_on_a_head_names_the_file(tmp_path, head_ct):
    head = head_ct
    ras_nifti(head, tmp_path / "head.nii.gz")
    result = run("lungs", tmp_path / "head.nii.gz", "--out", tmp_path / "m.nii.gz")
    one_line_error(result, f"{tmp_path / 'head.nii.gz'}: no lungs found")
    assert not (tmp_path / "m.nii.gz").exists()


def test_lungs_command_output_the_file_system_refuses(tmp_path):
    """A folder that cannot be made (a file is in the way): one line naming it, nothing written."""
    from test_lung import synthetic_chest

    ras_nifti(synthetic_chest((40, 64, 64), (6.0, 6.0, 6.0))[0], tmp_path / "chest.nii.gz")
    (tmp_path / "taken").write_text("a file, not a folder")
    out = tmp_path / "taken" / "sub" / "lungs.nii.gz"
    result = run("lungs", tmp_path / "chest.nii.gz", "--out", out)
    one_line_error(result, str(tmp_path / "taken"))
    assert (tmp_path / "taken").read_text() == "a file, not a folder"


def test_lungs_command_bad_output_name(tmp_path):
    result = run("lungs", tmp_path / "ct.nii.gz", "--out", tmp_path / "m.nrrd")
    one_line_error(result, "m.nrrd", "NIfTI")


def test_lungs_command_notes_the_chosen_dicom_series(tmp_path):
    import shutil

    from aidnet.io.dicom import write_dicom_series
    from test_lung import synthetic_chest

    chest, _ = synthetic_chest((40, 64, 64), (6.0, 6.0, 6.0))
    small, _ = synthetic_chest((12, 64, 64), (6.0, 6.0, 6.0))
    folder = tmp_path / "export"
    folder.mkdir()
    for name, vol, seed in (("chest", chest, 0), ("other", small, 1)):
        written = write_dicom_series(
            vol, tmp_path / name, patient_name="X^Y", patient_id="7", seed=seed
        )
        edit_description(written, name)
        for f in written.iterdir():
            shutil.move(f, folder / f"{name}_{f.name}")
    result = run("lungs", folder, "--out", tmp_path / "lungs.nii.gz")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"aidnet: note: {folder}: reading series 1 'chest' (40 slices)")
    assert "skipped 1 other" in lines[0]
    assert lines[1].startswith(f"wrote {tmp_path / 'lungs.nii.gz'} (right lung")


def edit_description(folder, text):
    import pydicom

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = text
        ds.save_as(f)


@pytest.fixture(scope="module")
def phantom_cohort(tmp_path_factory):
    """Three phantom subjects (six small scans) and their manifest."""
    from aidnet.phantom import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), subjects=3, seed=5, progress=False)


def cache_listing(folder):
    return sorted(p.name for p in folder.iterdir())


def finished_files(cache):
    """Cache entries (pathlib's ``*`` also matches the hidden ``.tmp-…npz`` files in flight)."""
    return [p for p in cache.glob("*.npz") if not p.name.startswith(".")]


def bad_scans(folder, head):
    """(visit, path) of scans that must fail alone, each in its own way."""
    from aidnet.io.dicom import write_dicom_series
    from aidnet.phantom.cohort import render_pair
    from test_lung import synthetic_chest

    folder.mkdir()
    chest, _ = synthetic_chest((30, 48, 48), (8.0, 8.0, 8.0))
    (folder / "empty.nii.gz").write_bytes(b"")
    good = write_nifti(chest.array.astype(np.int16), chest.affine, folder / "good.nii.gz")
    data = good.read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    good.unlink()
    nan = chest.array.copy()
    nan[10, 20, 20] = np.nan
    write_nifti(nan, chest.affine, folder / "nan.nii.gz")
    write_nifti(head.array.astype(np.int16), head.affine, folder / "head.nii.gz")
    mr = write_dicom_series(chest, folder / "mr", patient_name="SECRET^NAME", patient_id="9")
    edit_modality(mr, "MR")
    enhanced, _, _ = render_pair(3, "small", 1, blood_hu=250.0)[0]
    write_nifti(enhanced.array, enhanced.affine, folder / "contrast.nii.gz")
    return [
        ("missing", folder / "missing.nii.gz", "file not found"),
        ("empty", folder / "empty.nii.gz", "file is empty"),
        ("truncated", folder / "truncated.nii.gz", "not a readable image"),
        ("nan", folder / "nan.nii.gz", "NaN"),
        ("head", folder / "head.nii.gz", "no lungs found"),
        ("mr", mr, "not a CT series (modality MR)"),
        ("contrast", folder / "contrast.nii.gz", "looks contrast-enhanced"),
    ]


def edit_modality(folder, modality):
    import pydicom

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = modality
        ds.save_as(f)


def test_preprocess_skips_bad_scans_and_caches_the_rest(phantom_cohort, tmp_path, head_ct):
    from aidnet.data.manifest import read_manifest

    bad = bad_scans(tmp_path / "bad", head_ct)
    rows = ["subject,visit,path,agatston"]
    rows += [f"{r.subject},{r.visit},{r.path},{r.agatston}" for r in read_manifest(phantom_cohort)]
    rows = rows[:3] + [f"B1,{visit},{path},0" for visit, path, _ in bad]  # two good scans
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    result = run("preprocess", manifest, "--out", cache, "--preset", "tiny", "--workers", 2, "--qc")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("failed ")]
    assert len(lines) == len(bad)
    for (visit, path, problem), line in zip(sorted(bad), lines, strict=True):
        assert line.startswith(f"failed B1_{visit}: {path}: "), line
        assert problem in line, line
    assert f"2 of 9 scans preprocessed into {cache} (0 reused, 7 failed)" in result.stdout
    assert "aidnet: error: 7 scan(s) failed" in result.stderr
    assert "SECRET" not in result.output
    names = cache_listing(cache)
    assert names[-1] == "qc" and len(names) == 3
    assert all(n.endswith(".npz") for n in names[:2])
    assert [n.split("-")[0] for n in names[:2]] == ["P0001_rescan", "P0001_scan"]
    assert cache_listing(cache / "qc") == ["P0001_rescan.png", "P0001_scan.png"]


def test_preprocess_reports_the_noise_ceilings_reading_per_scan(phantom_cohort, tmp_path):
    """With a preset that has the noise ceiling, ``preprocess`` writes each scan's soft-tissue
    noise reading and smoothing to OUT/noise.csv and says how many scans it smoothed; a scan
    with a sharp kernel's noise is read as noisier and smoothed, the phantom's are not."""
    import csv

    from aidnet.data.manifest import read_manifest
    from aidnet.io.read import read_volume

    records = read_manifest(phantom_cohort)[:2]
    volume = read_volume(records[0].path)
    noise = np.random.default_rng(0).normal(0.0, 90.0, volume.array.shape)
    noisy = write_nifti(
        (volume.array + noise).astype(np.int16), volume.affine, tmp_path / "noisy.nii.gz"
    )
    rows = ["subject,visit,path,agatston"]
    rows += [f"{r.subject},{r.visit},{r.path},{r.agatston}" for r in records]
    rows.append(f"N1,scan,{noisy},0")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    preset = tmp_path / "ceiling.yaml"
    preset.write_text("preset: tiny\nnoise_ceiling: true\n")
    cache = tmp_path / "cache"
    result = run("preprocess", manifest, "--out", cache, "--preset", preset)
    assert result.exit_code == 0, result.output
    assert "soft-tissue noise read on 3 of 3 scans" in result.stdout
    assert f"1 smoothed in-plane down to the ceiling; per scan: {cache / 'noise.csv'}" in (
        result.stdout
    )
    with (cache / "noise.csv").open() as fh:
        table = {(r["subject"], r["visit"]): r for r in csv.DictReader(fh)}
    assert list(table) == [(r.subject, r.visit) for r in records] + [("N1", "scan")]
    for record in records:
        row = table[(record.subject, record.visit)]
        assert float(row["noise_hu"]) < 35.0 and float(row["smoothed_mm"]) == 0.0
    assert float(table[("N1", "scan")]["noise_hu"]) > 60.0
    assert float(table[("N1", "scan")]["smoothed_mm"]) > 0.0
    # without the ceiling there is no reading to report
    plain = run("preprocess", manifest, "--out", tmp_path / "plain", "--preset", "tiny")
    assert plain.exit_code == 0 and "noise" not in plain.stdout
    assert not (tmp_path / "plain" / "noise.csv").exists()


@pytest.mark.slow
def test_preprocess_resumes_after_sigkill(phantom_cohort, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from aidnet.data.cache import load_cached

    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "aidnet.cli", "preprocess", str(phantom_cohort)]
    command += ["--out", str(cache), "--preset", "tiny", "--workers", "1"]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (cache.is_dir() and finished_files(cache)) and time.monotonic() < deadline:
            assert proc.poll() is None, "preprocess ended before it was killed"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = len(finished_files(cache))
    assert 1 <= finished < 6
    result = run("preprocess", phantom_cohort, "--out", cache, "--preset", "tiny")
    assert result.exit_code == 0, result.output
    assert f"6 of 6 scans preprocessed into {cache} ({finished} reused, 0 failed)" in result.stdout
    names = cache_listing(cache)
    assert len(names) == 6 and all(n.endswith(".npz") for n in names)  # no temporary files
    for name in names:
        assert load_cached(cache / name).image.shape == (2, 16, 24, 32)
    stamps = {n: (cache / n).stat().st_mtime_ns for n in names}
    qc = run("preprocess", phantom_cohort, "--out", cache, "--preset", "tiny", "--qc")
    assert qc.exit_code == 0, qc.output
    assert "6 of 6 scans preprocessed" in qc.stdout and "(6 reused, 0 failed)" in qc.stdout
    assert len(cache_listing(cache / "qc")) == 6  # QC images made for scans already cached
    assert {n: (cache / n).stat().st_mtime_ns for n in names} == stamps


@pytest.mark.slow
def test_preprocess_ctrl_c_stops_the_workers_quietly(phantom_cohort, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from aidnet.data.manifest import read_manifest

    # 48 scans (the six images under eight subject ids each): far more work than the moment the
    # first file appears, so Ctrl-C lands mid-job even when this test process waits for a core
    rows = ["subject,visit,path,agatston"]
    for copy in range(8):
        rows += [
            f"C{copy}{r.subject},{r.visit},{r.path},{r.agatston}"
            for r in read_manifest(phantom_cohort)
        ]
    manifest = tmp_path / "many.csv"
    manifest.write_text("\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "aidnet.cli", "preprocess", str(manifest)]
    command += ["--out", str(cache), "--preset", "tiny", "--workers", "2"]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
        # a shell that started this suite in the background made SIGINT ignored for everything
        # below it; a terminal's Ctrl-C reaches a program with the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not (cache.is_dir() and finished_files(cache)) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.rstrip().endswith("aidnet: interrupted; finished work is kept, re-run to resume")
    done = list(cache.iterdir())
    assert all(p.suffix == ".npz" and not p.name.startswith(".") for p in done)
    assert 1 <= len(done) < 48


def test_evaluate_no_localise_is_passed_on(monkeypatch, tmp_path):
    """`--no-localise` reaches evaluate_run as localise=False; without it localisation stays on."""
    import aidnet.pipeline as pipeline

    seen = []

    def fake_evaluate_run(checkpoint, manifest, out, **kwargs):
        seen.append(kwargs["localise"])
        return {"auc": 0.9, "auc_ci95": [0.8, 1.0], "accuracy": 0.8, "n": 4}

    monkeypatch.setattr(pipeline, "evaluate_run", fake_evaluate_run)
    args = ["evaluate", "--checkpoint", tmp_path / "run", "--manifest", tmp_path / "m.csv"]
    assert run(*args, "--out", tmp_path / "a").exit_code == 0
    result = run(*args, "--out", tmp_path / "b", "--no-localise")
    assert result.exit_code == 0, result.output
    assert "test AUC 0.900" in result.output
    assert seen == [True, False]


INFERENCE = ("evaluate", "explain", "predict", "experiment")


@pytest.mark.parametrize("command", INFERENCE)
def test_inference_commands_take_device_and_workers(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "--device" in result.output and "--workers" in result.output


def inference_args(command, tmp_path):
    """Arguments of ``command`` naming files that do not exist: the device is checked first."""
    out = ["--out", tmp_path / "out"]
    if command == "predict":
        return ["predict", "--checkpoint", tmp_path / "run", tmp_path / "scan.nii.gz", *out]
    if command == "experiment":
        return ["experiment", "--manifest", tmp_path / "m.csv", *out]
    return [command, "--checkpoint", tmp_path / "run", "--manifest", tmp_path / "m.csv", *out]


@pytest.mark.parametrize("command", INFERENCE)
@pytest.mark.parametrize(
    "device, fragment",
    [("banana", "not a device; use cpu, cuda or cuda:N"), ("meta", "meta is not supported")],
)
def test_bad_device_is_one_line(command, device, fragment, tmp_path):
    result = run(*inference_args(command, tmp_path), "--device", device)
    one_line_error(result, f"--device '{device}'", fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", INFERENCE)
def test_cuda_without_a_gpu_is_one_line(command, tmp_path):
    import torch

    if torch.cuda.is_available():
        result = run(*inference_args(command, tmp_path), "--device", "cuda:99")
        one_line_error(result, "--device 'cuda:99'", "CUDA device(s)")
        return
    result = run(*inference_args(command, tmp_path), "--device", "cuda")
    one_line_error(result, "--device 'cuda'", "use --device cpu")
    assert not (tmp_path / "out").exists()


def test_default_device_is_the_one_train_picks():
    import torch

    from aidnet.pipeline.device import default_device, resolve_device
    from aidnet.training.distributed import start_processes

    assert default_device() == start_processes(None)[1] == resolve_device(None)
    assert resolve_device("cpu") == torch.device("cpu")


def test_cpu_inference_stays_float32_unless_bf16_is_asked_for():
    import torch

    from aidnet.pipeline.device import autocast_dtype, precision_name
    from aidnet.training.precision import cpu_has_native_bf16

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, trained_amp=True, bf16=False) is None  # amp is for GPUs
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert autocast_dtype(cpu, trained_amp=False, bf16=True) == expected
    assert precision_name(None) == "float32" and precision_name(torch.bfloat16) == "bfloat16"


def test_train_refuses_a_bad_device_or_learning_rate_in_one_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,visit,path,agatston\n")
    for flags, expected in (
        (["--device", "banana"], "--device 'banana': not a device"),
        (["--lr", "0"], "lr must be > 0"),
    ):
        result = invoke(
            ["train", "--manifest", str(manifest), "--out", str(tmp_path / "run"), *flags]
        )
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert expected in result.output and not (tmp_path / "run").exists()


def demo_folder(root):
    """The layout `make demo` leaves: cohort/, run/ (best.pt, last.pt …), report.html."""
    (root / "cohort").mkdir(parents=True)
    (root / "run").mkdir()
    for name in ("best.pt", "last.pt"):
        (root / "run" / name).write_bytes(b"weights")
    (root / "report.html").write_text("<html></html>")
    return root


@pytest.fixture
def record_runs(monkeypatch):
    """Replace the inference commands' work with a record of the checkpoints they were given."""
    import aidnet.pipeline as pipeline
    import aidnet.pipeline.predict as predict

    seen = []

    def fake_evaluate_run(checkpoints, manifest, out, **kwargs):
        seen.append(list(checkpoints))
        return {"auc": 0.9, "auc_ci95": [0.8, 1.0], "accuracy": 0.8, "n": 4}

    def fake_explain_manifest(checkpoint, manifest, out, **kwargs):
        seen.append(list(checkpoint) if isinstance(checkpoint, list) else [checkpoint])
        return []

    def fake_predict_scans(checkpoints, scans, out, **kwargs):
        seen.append(list(checkpoints))
        return {"p_cac": 0.5, "predicted_label": "1-399", "model": "aidnet", "disagreement": False}

    monkeypatch.setattr(pipeline, "evaluate_run", fake_evaluate_run)
    monkeypatch.setattr(pipeline, "explain_manifest", fake_explain_manifest)
    monkeypatch.setattr(predict, "predict_scans", fake_predict_scans)
    return seen


def checkpoint_args(command, checkpoint, tmp_path):
    out = ["--out", tmp_path / "out"]
    if command == "predict":
        return ["predict", "--checkpoint", checkpoint, tmp_path / "scan.nii.gz", *out]
    return [command, "--checkpoint", checkpoint, "--manifest", tmp_path / "m.csv", *out]


@pytest.mark.parametrize("command", ["evaluate", "explain", "predict"])
def test_checkpoint_of_the_demo_folder_finds_its_run(command, record_runs, tmp_path):
    demo = demo_folder(tmp_path / "runs" / "demo")
    result = run(*checkpoint_args(command, demo, tmp_path))
    assert result.exit_code == 0, result.output
    assert record_runs == [[demo / "run"]]
    assert result.stderr.splitlines() == [
        f"aidnet: note: --checkpoint {demo}: using the run in {demo / 'run'}"
    ]


def test_checkpoint_run_folder_and_file_are_taken_as_given(record_runs, tmp_path):
    run_dir = demo_folder(tmp_path / "demo") / "run"
    for checkpoint in (run_dir, run_dir / "last.pt"):
        result = run(*checkpoint_args("evaluate", checkpoint, tmp_path))
        assert result.exit_code == 0, result.output
        assert "note" not in result.stderr
    assert record_runs == [[run_dir], [run_dir / "last.pt"]]


@pytest.mark.parametrize("command", ["evaluate", "explain", "predict"])
def test_repeated_checkpoint_is_an_ensemble(command, record_runs, tmp_path):
    runs = [demo_folder(tmp_path / f"seed{s}") / "run" for s in (0, 1)]
    args = checkpoint_args(command, runs[0], tmp_path)
    args[3:3] = ["--checkpoint", runs[1]]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert record_runs == [runs]


def test_checkpoint_folder_of_several_runs_is_one_line(record_runs, tmp_path):
    rows = tmp_path / "experiment" / "rows"
    for row in ("aidnet-s2", "idnet-s2"):
        (rows / row / "run").mkdir(parents=True)
        (rows / row / "run" / "best.pt").write_bytes(b"weights")
    result = run(*checkpoint_args("evaluate", tmp_path / "experiment", tmp_path))
    one_line_error(
        result,
        f"{tmp_path / 'experiment'}: holds 2 runs ({rows / 'aidnet-s2' / 'run'}, "
        f"{rows / 'idnet-s2' / 'run'}); give one of them as --checkpoint",
    )
    assert record_runs == []


@pytest.mark.parametrize("unfinished", [False, True])
def test_checkpoint_folder_without_a_run_says_where_it_looked(unfinished, record_runs, tmp_path):
    folder = tmp_path / "empty"
    (folder / "cohort" / "images" / "deeper").mkdir(parents=True)
    if unfinished:
        (folder / "last.pt").write_bytes(b"weights")
    result = run(*checkpoint_args("predict", folder, tmp_path))
    one_line_error(
        result,
        f"{folder}: no checkpoint: looked for best.pt in it and in its folders up to 3 levels down",
        "give a run folder (the --out of aidnet train) or a .pt file",
    )
    assert ("last.pt is there" in result.output) == unfinished
    assert record_runs == []


HEAVY = ("numpy", "scipy", "skimage", "torch", "nibabel", "SimpleITK", "pydicom", "matplotlib")


def imported_by(code: str) -> list[str]:
    """The HEAVY packages a fresh interpreter imports while running ``code`` (read from
    ``-X importtime``, so a command that ends its process at once is seen too)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return [name for name in HEAVY if name in loaded]


def test_the_command_line_imports_what_a_command_needs_only_when_it_runs(tmp_path):
    """`aidnet --help` builds every command without numpy, torch or the image libraries;
    `aidnet lungs` reads, segments and writes without torch, scikit-image or matplotlib."""
    from test_lung import synthetic_chest

    assert imported_by("import aidnet.cli") == []
    ras_nifti(synthetic_chest((40, 64, 64), (6.0, 6.0, 6.0))[0], tmp_path / "chest.nii.gz")
    out = tmp_path / "lungs.nii.gz"
    command = ["aidnet", "lungs", str(tmp_path / "chest.nii.gz"), "--out", str(out)]
    loaded = imported_by(
        f"import sys\nsys.argv = {command!r}\nfrom aidnet.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code"
    )
    assert {"numpy", "scipy", "nibabel"} <= set(loaded)  # nibabel reads the NIfTI input
    assert not {"torch", "skimage", "matplotlib"} & set(loaded)
    assert nib.load(str(out)).shape == (64, 64, 40)  # complete, though the process exits at once
    assert out.read_bytes()[8] == 4  # gzip header: written at the fastest level (1)
