"""The cohort manifest (DESIGN.md, "input contract"): one CSV row per scan."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from aidnet.agatston import score_class
from aidnet.errors import AidnetError

REQUIRED = ("subject", "visit", "path")


@dataclass(frozen=True)
class ScanRecord:
    subject: str
    visit: str
    path: Path  # absolute
    agatston: float | None
    extras: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A file-name-safe id: ``<subject>_<visit>``."""
        raw = f"{self.subject}_{self.visit}"
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)

    @property
    def label(self) -> int | None:
        """Class 0 / 1 / 2 from the Agatston score, None if unlabelled."""
        return None if self.agatston is None else score_class(self.agatston)


_CLASS_NAMES = ("0", "1–399", "≥ 400")


def _number(text: str, where: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AidnetError(
            f"{where}: agatston '{whole}' is not a number, nor a range such as 1-99 or >=400"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise AidnetError(f"{where}: agatston must be a finite number >= 0, not {whole}")
    return value


def _bounds(text: str, where: str) -> tuple[float, float]:
    """(lowest, highest) score a manifest cell allows: one number, a range ``a-b`` (also with
    an en dash or "to"), or an open range ``>=a``, ``≥a``, ``a+`` or ``>a``."""
    compact = text.replace(" ", "").replace("–", "-").replace("—", "-").lower()
    for prefix in (">=", "≥", "=>"):
        if compact.startswith(prefix):
            return _number(compact[len(prefix) :], where, text), math.inf
    if compact.startswith(">"):
        return math.nextafter(_number(compact[1:], where, text), math.inf), math.inf
    if compact.endswith("+"):
        return _number(compact[:-1], where, text), math.inf
    for separator in ("-", "to"):
        first, sep, last = compact.partition(separator)
        if sep and first and last:
            a, b = _number(first, where, text), _number(last, where, text)
            if a > b:
                raise AidnetError(f"{where}: agatston range '{text}' runs backwards")
            return a, b
    value = _number(compact, where, text)
    return value, value


def _parse_score(text: str, where: str) -> float | None:
    """The Agatston score of a manifest cell, or None when it is empty (unlabelled).

    Reports often give a category rather than a score: a range that lies within one of the
    paper's classes (``0``, ``1-99``, ``100-399``, ``>=400``, ``400+``) stands for its lowest
    score, since only the class is used; a range across classes (CAC-DRS ``>=300``) is an error.
    """
    text = text.strip()
    if text == "":
        return None
    low, high = _bounds(text, where)
    if score_class(low) != score_class(high):
        names = list(_CLASS_NAMES[score_class(low) : score_class(high) + 1])
        classes = ", ".join(names[:-1]) + " and " + names[-1]
        raise AidnetError(
            f"{where}: agatston '{text}' spans the classes {classes}; give a score or a range "
            "within one class (0, 1–399, ≥ 400)"
        )
    return low


def read_manifest(path: Path | str, *, check_files: bool = True) -> list[ScanRecord]:
    """Read and validate a manifest; paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise AidnetError(f"{path}: manifest not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AidnetError(f"{path}: not a readable CSV file ({exc})") from None
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise AidnetError(
            f"{path}: manifest lacks the column(s) {', '.join(missing)} "
            f"(needs subject, visit, path and optionally agatston; found: {', '.join(columns)})"
        )
    if not rows:
        raise AidnetError(f"{path}: manifest has no rows")
    records: list[ScanRecord] = []
    seen: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{path}, line {number}"
        subject, visit, rel = row.get("subject", ""), row.get("visit", ""), row.get("path", "")
        if not subject or not visit or not rel:
            raise AidnetError(f"{where}: subject, visit and path must not be empty")
        if (subject, visit) in seen:
            raise AidnetError(
                f"{where}: duplicate subject/visit {subject}/{visit} "
                f"(first on line {seen[(subject, visit)]})"
            )
        seen[(subject, visit)] = number
        image = Path(rel) if Path(rel).is_absolute() else (path.parent / rel)
        if check_files and not image.exists():
            raise AidnetError(f"{where}: image {rel} not found")
        score = _parse_score(row.get("agatston", ""), where)
        extras = {k: v for k, v in row.items() if k not in (*REQUIRED, "agatston")}
        records.append(ScanRecord(subject, visit, image.resolve(), score, extras))
    return records
