"""Subject-level, class-stratified, seeded splits (DESIGN.md): no subject in two splits."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from aidnet.atomic import write_text_atomic
from aidnet.data.manifest import ScanRecord
from aidnet.errors import AidnetError

SPLITS = ("train", "val", "test")


def subject_class(records: list[ScanRecord]) -> int:
    """A subject's stratum: the highest class among its labelled scans."""
    labels = [r.label for r in records if r.label is not None]
    return max(labels) if labels else -1


def split_subjects(
    records: list[ScanRecord], *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Map each subject to train / val / test, stratified by subject class."""
    by_subject: dict[str, list[ScanRecord]] = defaultdict(list)
    for record in records:
        by_subject[record.subject].append(record)
    strata: dict[int, list[str]] = defaultdict(list)
    for subject in sorted(by_subject):
        strata[subject_class(by_subject[subject])].append(subject)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for stratum in sorted(strata):
        subjects = list(strata[stratum])
        rng.shuffle(subjects)
        n = len(subjects)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        for i, subject in enumerate(subjects):
            assignment[subject] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return assignment


def write_splits(path: Path, assignment: dict[str, str]) -> None:
    """``subject,split`` rows, written atomically."""
    rows = ["subject,split"] + [f"{_cell(s)},{assignment[s]}" for s in sorted(assignment)]
    write_text_atomic(path, "\n".join(rows) + "\n")


def _cell(value: str) -> str:
    """One CSV cell (quoted when it holds a comma, quote or line break)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([value])
    return buffer.getvalue()


def read_splits(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="") as fh:
            return {row["subject"]: row["split"] for row in csv.DictReader(fh)}
    except (OSError, KeyError) as exc:
        raise AidnetError(f"{path}: cannot read the saved split ({exc})") from None


SPLIT_NAMES = ("train", "val", "test")


def read_given_splits(path: Path) -> dict[str, str]:
    """A ``subject,split`` file given by the user (e.g. another run's ``splits.csv``): each
    split must be train, val or test, and train and val must not be empty."""
    if not Path(path).is_file():
        raise AidnetError(f"{path}: split file not found")
    assignment = read_splits(Path(path))
    bad = sorted({v for v in assignment.values() if v not in SPLIT_NAMES})
    if bad:
        raise AidnetError(f"{path}: unknown split(s) {', '.join(bad)}; use train, val or test")
    for name in ("train", "val"):
        if name not in assignment.values():
            raise AidnetError(f"{path}: no subject in the {name} split")
    return assignment
