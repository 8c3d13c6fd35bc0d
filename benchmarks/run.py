"""``make bench``: speed and memory of the stages, medians over repeated runs, written as JSON.

Each benchmark reports the median wall time over ``--repeats`` runs and, where it makes sense,
a ratio against a reference measured in the same process (so numbers from different machines
compare as ratios). Nothing here is a test: targets are recorded next to the measurements.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.cohort import bench_cohort_resume, bench_cohort_workers
from benchmarks.evaluate_workers import bench_evaluate_workers
from benchmarks.localise import bench_localise
from benchmarks.models import bench_models, bench_models_gpu
from benchmarks.preprocess import bench_preprocess
from benchmarks.startup import bench_startup


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_phantom(repeats: int) -> dict:
    from aidnet.phantom import render_pair

    out = {}
    for size in ("small", "full"):
        median, times = timed(lambda s=size: render_pair(11, s, 1), repeats)
        out[f"render_pair_{size}_s"] = {"median": median, "runs": times, "scans": 2}
    out["target_full_scan_s"] = 5.0
    out["full_scan_median_s"] = out["render_pair_full_s"]["median"] / 2
    return out


def bench_agatston(repeats: int) -> dict:
    import numpy as np

    from aidnet.agatston import agatston
    from aidnet.phantom import render_pair

    volume, labels, _ = render_pair(11, "full", 2)[0]
    hu = np.rint(volume.array).astype(np.int16)
    median, times = timed(lambda: agatston(hu, volume.spacing, mask=labels, label=1), repeats)
    ref, _ = timed(lambda: (hu >= 130).sum(), repeats)
    return {
        "agatston_full_scan_s": {"median": median, "runs": times},
        "ratio_to_threshold_pass": median / ref,
        "shape": list(hu.shape),
    }


BENCHES = {
    "phantom": bench_phantom,
    "agatston": bench_agatston,
    "preprocess": bench_preprocess,
    "models": bench_models,
    "models_gpu": bench_models_gpu,
    "cohort_workers": bench_cohort_workers,
    "cohort_resume": lambda repeats: bench_cohort_resume(),
    "evaluate_workers": bench_evaluate_workers,
    "localise": bench_localise,
    "startup": bench_startup,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or BENCHES:
        result = BENCHES[name](args.repeats)
        result["machine"] = {
            "python": platform.python_version(),
            "cpu": platform.processor(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(result, indent=2))
        print(f"{name}: {json.dumps(result)}")


if __name__ == "__main__":
    main()
