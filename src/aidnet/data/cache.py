"""Preprocess once, train from disk (nnU-Net style): one cache file per scan.

A cache file is keyed by the input (resolved path, file sizes, modification times) and by the
full :class:`~aidnet.preprocess.PreprocessConfig` key (settings and algorithm version), so a
changed input or config never reuses a stale file. Files are written atomically, so a killed
run leaves no half-written entry and a re-run resumes; a file that cannot be read (cut short,
empty) is derived data and is computed again with a one-line note. The file itself (format,
writing, reading) is :mod:`aidnet.data.cache_file`; one scan's work is :mod:`aidnet.data.job`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aidnet.data.cache_file import (
    CachedScan,
    cache_file_problem,
    cached_noise,
    load_cached,
    remove_stale_temps,
    save_cached,
    temp_suffix,
)
from aidnet.data.job import Job, failure_message, run_job
from aidnet.data.manifest import ScanRecord
from aidnet.preprocess.config import PreprocessConfig, as_config

__all__ = [
    "CachedScan",
    "CohortResult",
    "cache_path",
    "load_cached",
    "preprocess_cohort",
    "qc_path",
    "record_cache_dir",
    "recorded_cache_dir",
    "remove_stale_temps",
    "save_cached",
    "temp_suffix",
    "write_noise_table",
]

QC_FOLDER = "qc"
#: the noise ceiling's reading of each scan, beside the cache files (see write_noise_table)
NOISE_TABLE = "noise.csv"


@dataclass
class CohortResult:
    """What :func:`preprocess_cohort` did: ``done`` maps scan keys to cache files (reused ones
    included), ``failures`` scan keys to one-line problems, ``reused`` counts files kept."""

    done: dict[str, Path]
    failures: dict[str, str]
    reused: int = 0


def _input_fingerprint(path: Path) -> str:
    if path.is_dir():
        parts = [
            f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in sorted(path.rglob("*"))
            if p.is_file()
        ]
    else:
        st = path.stat()
        parts = [f"{st.st_size}:{st.st_mtime_ns}"]
    return "|".join([str(path.resolve()), *parts])


def cache_path(
    cache_dir: Path, record: ScanRecord, config: PreprocessConfig | tuple[int, int, int]
) -> Path:
    """``cache_dir/<subject>_<visit>-<digest>.npz``; raises OSError if the input is missing."""
    key = json.dumps({"input": _input_fingerprint(record.path), "config": as_config(config).key()})
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{record.key}-{digest}.npz"


def qc_path(cache_dir: Path, record: ScanRecord) -> Path:
    return Path(cache_dir) / QC_FOLDER / f"{record.key}.png"


def preprocess_cohort(
    records: Iterable[ScanRecord],
    cache_dir: Path,
    config: PreprocessConfig | tuple[int, int, int],
    *,
    workers: int = 1,
    progress: bool = True,
    qc: bool = False,
) -> CohortResult:
    """Fill the cache (and ``cache_dir/qc/`` with ``qc``); failed scans are reported, not raised.

    Finished files are kept, so a re-run (also after a kill) does only the rest. ``workers`` > 1
    runs scans in that many single-threaded processes; ``workers`` = 1 runs in this process.
    """
    from tqdm import tqdm

    from aidnet.data.pool import run_unordered

    config = as_config(config)
    cache_dir = Path(cache_dir)
    records = list(records)
    remove_stale_temps(cache_dir)
    remove_stale_temps(cache_dir / QC_FOLDER)
    targets: dict[str, Path] = {}
    failures: dict[str, str] = {}
    jobs: list[Job] = []
    reused = 0
    for record in records:
        try:
            target = cache_path(cache_dir, record, config)
        except FileNotFoundError:
            failures[record.key] = f"{record.path}: file not found"
            continue
        except OSError as exc:
            failures[record.key] = f"{record.path}: cannot read ({exc.strerror or exc})"
            continue
        targets[record.key] = target
        qc_file = qc_path(cache_dir, record) if qc else None
        exists = target.exists()
        if exists and (problem := cache_file_problem(target)) is not None:
            # derived data: rebuild it rather than stop (as MONAI's PersistentDataset does)
            logging.getLogger("aidnet").warning(
                "%s: unreadable cache file (%s); computing it again", target, problem
            )
            exists = False
        reused += exists
        if not exists or (qc_file is not None and not qc_file.exists()):
            jobs.append(Job(record, config, target, qc_file, build=not exists))
    bar = tqdm(total=len(jobs), desc="preprocess", unit="scan", disable=not progress or not jobs)
    results = run_unordered(run_job, jobs, workers, lost=_lost)
    try:
        for key, error in results:
            if error:
                failures[key] = error
            bar.update()
    finally:  # on Ctrl-C: stop the workers now, not when the exception is collected
        results.close()
        bar.close()
        remove_stale_temps(cache_dir)
        remove_stale_temps(cache_dir / QC_FOLDER)
    done = {k: p for k, p in targets.items() if k not in failures and p.exists()}
    return CohortResult(done, failures, reused)


def write_noise_table(records: Iterable[ScanRecord], result: CohortResult, cache_dir: Path) -> str:
    """``cache_dir/noise.csv`` (written atomically): ``subject, visit, noise_hu, smoothed_mm``
    of every preprocessed scan, as the noise ceiling read it (blank: no reading — too little
    soft tissue seen, or a file cached before readings were kept). Returns a one-line summary."""
    import csv

    from aidnet.atomic import atomic_path

    rows = []
    for record in records:
        if record.key in result.done:
            noise = cached_noise(result.done[record.key]) or {}
            hu, mm = noise.get("noise_hu"), noise.get("smoothed_mm")
            rows.append((record.subject, record.visit, "" if hu is None else hu, mm or 0.0))
    path = Path(cache_dir) / NOISE_TABLE
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["subject", "visit", "noise_hu", "smoothed_mm"])
        writer.writerows(rows)
    read = [float(r[2]) for r in rows if r[2] != ""]
    smoothed = [r for r in rows if r[3]]
    text = f"soft-tissue noise read on {len(read)} of {len(rows)} scans"
    if read:
        text += f" ({min(read):.1f}–{max(read):.1f} HU)"
    text += f"; {len(smoothed)} smoothed in-plane down to the ceiling; per scan: {path}"
    return text


def _lost(job: Job, exc: BaseException) -> tuple[str, str | None]:
    from concurrent.futures.process import BrokenProcessPool

    path = job.record.path
    if isinstance(exc, BrokenProcessPool):
        return job.record.key, f"{path}: a worker process died (out of memory?); re-run to retry"
    return job.record.key, failure_message(path, exc)


#: a run folder's record of the cache its training filled (see :func:`record_cache_dir`)
CACHE_RECORD = "cache_dir.txt"


def record_cache_dir(run: Path, cache_dir: Path) -> None:
    """Write ``run/cache_dir.txt``: the cache folder the run's training filled, so that
    ``evaluate`` and ``explain`` of the run find it. A folder inside the run is stored relative
    to it (the run can be moved); nothing is written when the record already says the same."""
    from aidnet.atomic import write_text_atomic

    run, cache_dir = Path(run), Path(cache_dir).resolve()
    try:
        text = cache_dir.relative_to(run.resolve()).as_posix()
    except ValueError:
        text = str(cache_dir)
    path = run / CACHE_RECORD
    if path.is_file() and path.read_text(encoding="utf-8").strip() == text:
        return
    write_text_atomic(path, text + "\n")


def recorded_cache_dir(run: Path) -> Path | None:
    """The cache folder ``run`` recorded (:func:`record_cache_dir`) if it still exists."""
    try:
        text = (Path(run) / CACHE_RECORD).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text:
        return None
    folder = Path(text)
    folder = folder if folder.is_absolute() else Path(run) / folder
    return folder if folder.is_dir() else None
