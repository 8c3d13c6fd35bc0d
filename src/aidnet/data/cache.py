"""Preprocess once, train from disk (nnU-Net style): one cache file per scan.

A cache file is keyed by the input (resolved path, file sizes, modification times) and by the
full :class:`~aidnet.preprocess.PreprocessConfig` key (settings and algorithm version), so a
changed input or config never reuses a stale file. Files are written atomically, so a killed
run leaves no half-written entry and a re-run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aidnet.atomic import atomic_path
from aidnet.data.manifest import ScanRecord
from aidnet.errors import AidnetError
from aidnet.preprocess.config import PreprocessConfig, as_config

if TYPE_CHECKING:
    from aidnet.data.job import Job

QC_FOLDER = "qc"


@dataclass(frozen=True)
class CachedScan:
    image: np.ndarray  # (2, Z, Y, X) float32
    geometry: dict
    config: dict = field(default_factory=dict)  # PreprocessConfig.to_dict() that made it


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


def temp_suffix(suffix: str) -> str:
    """Suffix for :func:`atomic_path` naming this process, so that the temporary files of a
    killed process can be recognised and removed (see :func:`remove_stale_temps`)."""
    return f".pid{os.getpid()}{suffix}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files left in ``folder`` by processes that no longer run."""
    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(".tmp-*.pid*"):
        pid_text = tmp.name.rsplit(".pid", 1)[1].split(".", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def save_cached(path: Path, image: np.ndarray, geometry: dict, config: dict | None = None) -> None:
    with atomic_path(path, suffix=temp_suffix(".npz")) as tmp, tmp.open("wb") as fh:
        np.savez(
            fh,
            image=image.astype(np.float32),
            geometry=json.dumps(geometry),
            config=json.dumps(config or {}),
        )


def load_cached(path: Path) -> CachedScan:
    try:
        with np.load(path) as data:
            config = json.loads(str(data["config"])) if "config" in data.files else {}
            return CachedScan(
                image=data["image"], geometry=json.loads(str(data["geometry"])), config=config
            )
    except Exception as exc:
        raise AidnetError(f"{path}: unreadable cache file ({exc}); delete it and re-run") from None


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

    from aidnet.data.job import Job, run_job
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


def _lost(job: Job, exc: BaseException) -> tuple[str, str | None]:
    from concurrent.futures.process import BrokenProcessPool

    from aidnet.data.job import failure_message

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
