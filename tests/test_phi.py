"""No patient identifier leaks (DESIGN.md, "Outputs"): a DICOM cohort whose headers carry a
distinctive PatientName, PatientID and PatientBirthDate goes through preprocess, train, predict,
evaluate and explain from the command line; no byte of anything written (inside archives,
gzip members and compressed PNG chunks too) may hold them in UTF-8, UTF-16 or UTF-32, any case."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from cli_runner import invoke

NAME, PATIENT_ID, BIRTH_DATE = "Doe^Jane-7Q", "PID-83X1Q", "19580317"
# the values and the pieces a formatter could make of them
NEEDLES = [
    NAME,
    "Jane-7Q",
    "Doe Jane",
    "Jane Doe",
    PATIENT_ID,
    "83X1Q",
    BIRTH_DATE,
    "1958-03-17",
    "17.03.1958",
    "03/17/1958",
]


def _encodings(text: str) -> list[bytes]:
    low = text.lower()
    # numpy stores str arrays (the cache's JSON) as UTF-32
    return [
        low.encode(codec) for codec in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
    ]


PATTERNS = [(needle, pattern) for needle in NEEDLES for pattern in _encodings(needle)]


def _png_payloads(data: bytes) -> list[bytes]:
    """The PNG's chunks, compressed text ones (zTXt, iTXt, iCCP) inflated (pixels are not
    searched: rendered text cannot be found in bytes anyway)."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind != b"IDAT":
            out.append(body)
        if kind in (b"zTXt", b"iCCP"):
            keyword, _, rest = body.partition(b"\0")
            out.append(keyword + zlib.decompress(rest[1:]))
        elif kind == b"iTXt":
            keyword, _, rest = body.partition(b"\0")
            if rest[:1] == b"\1":
                _, _, _lang_and_text = rest[2:].partition(b"\0")
                _, _, text = _lang_and_text.partition(b"\0")
                out.append(zlib.decompress(text))
    return out


def _payloads(name: str, data: bytes, depth: int = 0) -> list[tuple[str, bytes]]:
    """``data`` and every layer inside it: gzip members, zip entries (npz, torch checkpoints),
    PNG chunks."""
    found = [(name, data)]
    if depth > 3:
        return found
    if data[:2] == b"\x1f\x8b":
        found += _payloads(name + "!gunzip", gzip.decompress(data), depth + 1)
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                found += _payloads(f"{name}!{member}", archive.read(member), depth + 1)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        found += [(name + "!png", p) for p in _png_payloads(data)]
    return found


def leaks(root: Path) -> list[str]:
    """Every (file, identifier) pair where an identifier appears anywhere in a file."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        for where, payload in _payloads(str(path), path.read_bytes()):
            low = payload.lower()
            hits += [f"{where}: {needle}" for needle, pattern in PATTERNS if pattern in low]
    return hits


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    """The scanner itself can fail: a planted identifier in each hiding place is found."""
    import nibabel as nib
    import numpy as np
    import torch
    from matplotlib.figure import Figure

    (tmp_path / "a.json").write_text('{"who": "JANE-7q"}')
    (tmp_path / "b.txt").write_bytes("pid-83x1q".encode("utf-16-le"))
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(b"x,1958-03-17"))
    torch.save({"meta": "Doe^Jane-7Q"}, tmp_path / "d.pt")
    np.savez(tmp_path / "e.npz", geometry=np.array('{"name": "Doe Jane"}'))
    image = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.float32), np.eye(4))
    image.header["descrip"] = b"19580317"
    nib.save(image, tmp_path / "f.nii.gz")
    fig = Figure()
    fig.savefig(tmp_path / "g.png", metadata={"Author": "Jane Doe"})
    with zipfile.ZipFile(tmp_path / "h.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.txt", "83X1Q")
    found = {hit.split("!")[0].split(": ")[0] for hit in leaks(tmp_path)}
    assert found == {
        str(tmp_path / n)
        for n in ("a.json", "b.txt", "c.csv.gz", "d.pt", "e.npz", "f.nii.gz", "g.png", "h.zip")
    }


@pytest.fixture(scope="module")
def identified_cohort(tmp_path_factory) -> Path:
    """Four phantom subjects, every scan a DICOM series carrying the identifiers."""
    import pydicom

    from aidnet.phantom import make_cohort

    root = tmp_path_factory.mktemp("phi")
    manifest = make_cohort(root / "cohort", subjects=4, seed=4, dicom_fraction=1.0)
    files = sorted((root / "cohort" / "dicom").rglob("*.dcm"))
    assert files
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName = NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = BIRTH_DATE
        ds.save_as(path, enforce_file_format=True)
    # the inputs do carry them where the scanner looks: every identifier in every file
    found = set(leaks(root / "cohort" / "dicom"))
    assert {
        f"{path}: {needle}" for path in files for needle in (NAME, PATIENT_ID, BIRTH_DATE)
    } <= found
    return manifest


@pytest.mark.slow
def test_no_identifier_in_any_output(identified_cohort, tmp_path):
    manifest = identified_cohort
    dicom = sorted((manifest.parent / "dicom").iterdir())
    run, work = tmp_path / "run", tmp_path / "outputs"
    commands = [
        # the run's own cache (train reuses it), with QC images
        ["preprocess", str(manifest), "--out", str(run / "cache"), "--preset", "tiny", "--qc"],
        [
            "train",
            "--manifest",
            str(manifest),
            "--out",
            str(run),
            "--preset",
            "tiny",
            "--epochs",
            "1",
        ],
        ["predict", "--checkpoint", str(run), str(dicom[0]), str(dicom[1]), "--out", str(work)],
        ["evaluate", "--checkpoint", str(run), "--manifest", str(manifest), "--out", str(work)],
        [
            "explain",
            "--checkpoint",
            str(run),
            "--manifest",
            str(manifest),
            "--out",
            str(work / "maps"),
            "--limit",
            "3",
        ],
    ]
    printed = []
    for command in commands:
        result = invoke(command)
        assert result.exit_code == 0, (command[0], result.output)
        printed.append(result.output)
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    for expected in (
        "run/best.pt",
        "run/last.pt",
        "outputs/prediction.json",
        "outputs/predictions.csv",
        "outputs/metrics.json",
        "outputs/localisation.csv",
        "outputs/roc.png",
        "outputs/maps/localisation.csv",
    ):
        assert expected in names, expected
    assert any(n.startswith("run/cache/qc/") for n in names)
    assert any(n.startswith("run/cache/") and n.endswith(".npz") for n in names)
    assert sum(n.startswith("outputs/maps/") and n.endswith("_gradcam.nii.gz") for n in names) == 3
    assert {"outputs/scan_gradcam.nii.gz", "outputs/rescan_gradcam.nii.gz"} <= names  # predict
    assert leaks(tmp_path) == []
    low = "\n".join(printed).lower()
    assert not [needle for needle in NEEDLES if needle.lower() in low]
