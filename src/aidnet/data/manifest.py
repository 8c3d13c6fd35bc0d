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


def _parse_score(text: str, where: str) -> float | None:
    text = text.strip()
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise AidnetError(f"{where}: agatston '{text}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise AidnetError(f"{where}: agatston must be a finite number >= 0, not {text}")
    return value


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
