"""Cohort preprocessing: ``aidnet preprocess`` wall time with 1 and 2 workers, and resuming.

Each run is the real command line in a fresh process with a fresh cache, so interpreter start,
imports and the workers' start-up are included (what a user waits for).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _command(manifest: Path, cache: Path, workers: int) -> list[str]:
    return [
        *(sys.executable, "-m", "aidnet.cli", "preprocess", str(manifest)),
        *("--out", str(cache), "--workers", str(workers)),
    ]


def _preprocess(manifest: Path, cache: Path, workers: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(
        _command(manifest, cache, workers), capture_output=True, text=True, check=True
    )
    return time.perf_counter() - t0, done.stdout.strip().splitlines()[-1]


def _finished(cache: Path) -> list[Path]:
    return [p for p in cache.glob("*.npz") if not p.name.startswith(".")]


def _cohort(folder: Path, subjects: int, size: str = "small") -> Path:
    from aidnet.phantom import make_cohort

    return make_cohort(folder / "cohort", subjects=subjects, seed=0, size=size)


def bench_cohort_workers(
    repeats: int, subjects: int = 20, size: str = "full", manifest: Path | None = None
) -> dict:
    """Median wall time of ``aidnet preprocess`` (``subjects`` × 2 phantom scans of ``size``,
    or an existing ``manifest``) with ``--workers 1`` and ``--workers 2``, each on a fresh
    cache; ratio = workers 2 / workers 1."""
    with tempfile.TemporaryDirectory(prefix="aidnet-bench-") as tmp:
        folder = Path(tmp)
        generated = manifest is None
        if manifest is None:
            manifest = _cohort(folder, subjects, size)
        runs: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(repeats):
            for workers in (1, 2):
                seconds, _ = _preprocess(manifest, folder / f"cache-{workers}-{repeat}", workers)
                runs[workers].append(seconds)
    medians = {w: statistics.median(times) for w, times in runs.items()}
    return {
        "cohort": f"phantom, {size}" if generated else str(manifest),
        "scans": len(manifest.read_text(encoding="utf-8").splitlines()) - 1,
        "workers_1_s": {"median": medians[1], "runs": runs[1]},
        "workers_2_s": {"median": medians[2], "runs": runs[2]},
        "ratio_2_to_1": medians[2] / medians[1],
        "cpus": os.cpu_count(),
    }


def bench_cohort_resume(subjects: int = 20, workers: int = 1, manifest: Path | None = None) -> dict:
    """Kill ``aidnet preprocess`` (SIGKILL to its process group) once half the cache files
    exist, re-run it, and report how many files the re-run reused and how long it took."""
    with tempfile.TemporaryDirectory(prefix="aidnet-bench-") as tmp:
        folder = Path(tmp)
        if manifest is None:
            manifest = _cohort(folder, subjects)
        cache = folder / "cache"
        scans = len(manifest.read_text(encoding="utf-8").splitlines()) - 1
        proc = subprocess.Popen(
            _command(manifest, cache, workers),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while proc.poll() is None and len(_finished(cache)) < scans // 2:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        left_behind = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".npz"))
        finished = len(_finished(cache))
        seconds, summary = _preprocess(manifest, cache, workers)
        after = sorted(p.name for p in cache.iterdir())
    return {
        "scans": scans,
        "finished_before_kill": finished,
        "temporary_files_after_kill": len(left_behind),
        "resume_s": seconds,
        "resume_summary": summary,
        "files_after_resume": len(after),
        "temporary_files_after_resume": sum(not n.endswith(".npz") for n in after),
    }


if __name__ == "__main__":  # pragma: no cover - manual run: python -m benchmarks.cohort
    import json

    print(json.dumps(bench_cohort_workers(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
    print(json.dumps(bench_cohort_resume()))
