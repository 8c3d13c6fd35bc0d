"""Preprocess once, train from disk (nnU-Net style): one cache file per scan.

A cache file is keyed by the input file (path, size, modification time) and by the
preprocessing configuration, so a changed input or config never reuses a stale file. Files are
written atomically, so a killed run leaves no half-written entry and a re-run resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aidnet.atomic import atomic_path
from aidnet.data.manifest import ScanRecord
from aidnet.errors import AidnetError

PREPROCESS_VERSION = "1"


@dataclass(frozen=True)
class CachedScan:
    image: np.ndarray  # (2, Z, Y, X) float32
    geometry: dict


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


def cache_path(cache_dir: Path, record: ScanRecord, size: tuple[int, int, int]) -> Path:
    key = json.dumps(
        {"input": _input_fingerprint(record.path), "size": list(size), "v": PREPROCESS_VERSION}
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir / f"{record.key}-{digest}.npz"


def save_cached(path: Path, image: np.ndarray, geometry: dict) -> None:
    with atomic_path(path, suffix=".npz") as tmp, tmp.open("wb") as fh:
        np.savez(fh, image=image.astype(np.float32), geometry=json.dumps(geometry))


def load_cached(path: Path) -> CachedScan:
    try:
        with np.load(path) as data:
            return CachedScan(image=data["image"], geometry=json.loads(str(data["geometry"])))
    except Exception as exc:
        raise AidnetError(f"{path}: unreadable cache file ({exc}); delete it and re-run") from None


def preprocess_record(record: ScanRecord, size: tuple[int, int, int]) -> tuple[np.ndarray, dict]:
    """Raw scan → (2, Z, Y, X) network input and its crop geometry as a dict."""
    from aidnet.io.read import read_volume
    from aidnet.preprocess import preprocess_volume

    volume = read_volume(record.path)
    try:
        sample = preprocess_volume(volume, size)
    except AidnetError as exc:
        raise AidnetError(f"{record.path}: {exc}") from None
    return sample.image, sample.geometry.to_dict()


def _work(args: tuple[ScanRecord, tuple[int, int, int], Path]) -> tuple[str, str | None]:
    record, size, target = args
    try:
        image, geometry = preprocess_record(record, size)
        save_cached(target, image, geometry)
        return record.key, None
    except AidnetError as exc:
        return record.key, str(exc)
    except Exception as exc:  # one broken scan must not stop the cohort
        return record.key, f"{record.path}: {type(exc).__name__}: {exc}"


def preprocess_cohort(
    records: Iterable[ScanRecord],
    cache_dir: Path,
    size: tuple[int, int, int],
    *,
    workers: int = 1,
    progress: bool = True,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Fill the cache; return ({scan key: cache file}, {scan key: error}) — failures skipped."""
    from tqdm import tqdm

    records = list(records)
    targets = {r.key: cache_path(cache_dir, r, size) for r in records}
    todo = [(r, size, targets[r.key]) for r in records if not targets[r.key].exists()]
    failures: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc="preprocess", unit="scan", disable=not progress or not todo)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for key, error in pool.map(_work, todo):
                if error:
                    failures[key] = error
                bar.update()
    else:
        for item in todo:
            key, error = _work(item)
            if error:
                failures[key] = error
            bar.update()
    bar.close()
    done = {k: p for k, p in targets.items() if k not in failures and p.exists()}
    return done, failures
