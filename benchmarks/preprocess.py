"""Preprocessing speed and memory on full-size scans: in-memory volume → cached tensor.

Full-size phantom scans (512 × 512, 259–267 slices) at the paper's input size, single process.
Reported: the median wall time per scan over ``repeats`` runs, the peak memory of a fresh
process doing one scan (whole process and the increment over the loaded volume), the ratio
to a DSB2017-style full-resolution pipeline measured in the same process, and the same scans
with the ``full`` preset's preprocessing options (bone rules, density channel) as a median
and a ratio to §2.1's settings, runs interleaved.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

PAPER_SIZE = (64, 128, 192)
# (subject seed, class, visit): 512×512 scans of 267, 259 and 266 slices
SCANS = ((102, 2, 0), (102, 2, 1), (105, 2, 0))


def _volume(seed: int, cls: int, visit: int):
    from aidnet.phantom import render_pair

    return render_pair(seed, "full", cls)[visit][0]


def scan_to_cache(volume, folder: Path, config=None) -> Path:
    """The measured unit: preprocess one scan (default: §2.1's settings at the paper's size)
    and write its cache file."""
    from aidnet.data.cache import save_cached
    from aidnet.preprocess import PreprocessConfig, preprocess_volume

    config = config or PreprocessConfig(size=PAPER_SIZE)
    sample = preprocess_volume(volume, config)
    path = folder / "scan.npz"
    save_cached(path, sample.image, sample.geometry.to_dict(), config.to_dict())
    return path


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux). Unlike ru_maxrss, VmHWM is not inherited
    from the parent across fork + exec, and writing 5 to clear_refs resets it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(npy: str, queue) -> None:
    import numpy as np

    from aidnet.io.volume import Volume, canonical_affine

    data = np.load(npy, allow_pickle=False)
    spacing = tuple(float(s) for s in data["spacing"])
    volume = Volume(data["hu"], spacing, canonical_affine(spacing))  # type: ignore[arg-type]
    import aidnet.preprocess  # noqa: F401  (imports count towards the baseline, not the step)

    Path("/proc/self/clear_refs").write_text("5")  # peak := now
    before = _status_mib("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        scan_to_cache(volume, Path(tmp))
    peak = _status_mib("VmHWM")
    queue.put(
        {
            "peak_rss_mib": peak,
            "rss_before_mib": before,
            "peak_increment_mib": peak - before,
            "volume_mib": volume.array.nbytes / 2**20,
        }
    )


def peak_memory(volume) -> dict:
    """Peak RSS of a fresh process that loads ``volume`` and preprocesses it once."""
    import numpy as np

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        npy = str(Path(tmp) / "volume.npz")
        np.savez(npy, hu=volume.array, spacing=np.asarray(volume.spacing))
        queue = ctx.Queue()
        child = ctx.Process(target=_memory_child, args=(npy, queue))
        child.start()
        result = queue.get(timeout=600)
        child.join()
    return result


def bench_preprocess(repeats: int) -> dict:
    from aidnet.config import load_config
    from aidnet.preprocess.config import LATER_OPTIONS, for_training
    from benchmarks.dsb_reference import dsb_style_mask

    full = for_training(load_config("full"))  # the recommended preset's later options on top
    per_scan, times_all, full_all = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        volumes = [_volume(*scan) for scan in SCANS]
        scan_to_cache(volumes[0], Path(tmp))  # warm-up: imports, allocator
        for scan, volume in zip(SCANS, volumes, strict=True):
            times: list[float] = []
            full_times: list[float] = []
            for _ in range(repeats):
                for config, out in ((None, times), (full, full_times)):
                    t0 = time.perf_counter()
                    scan_to_cache(volume, Path(tmp), config)
                    out.append(time.perf_counter() - t0)
            per_scan.append(
                {"scan": list(scan), "shape": list(volume.shape), "runs": times, "full": full_times}
            )
            times_all.append(statistics.median(times))
            full_all.append(statistics.median(full_times))
        t0 = time.perf_counter()
        dsb_style_mask(volumes[0].array, volumes[0].spacing)
        reference = time.perf_counter() - t0
    memory = peak_memory(volumes[0])
    median = statistics.median(times_all)
    return {
        "preprocess_full_scan_s": {"median": median, "per_scan": per_scan},
        "dsb_style_reference_s": {"runs": [reference], "scan": list(SCANS[0])},
        "ratio_to_dsb_style": times_all[0] / reference,
        # the same scans with the `full` preset's options (interleaved with the runs above)
        "full_preset_s": {
            "median": statistics.median(full_all),
            "ratio_to_paper_settings": statistics.median(
                f / p for f, p in zip(full_all, times_all, strict=True)
            ),
            "options": {name: getattr(full, name) for name in LATER_OPTIONS},
        },
        "memory": memory,
        "input_size": list(PAPER_SIZE),
        "targets": {"median_s": 1.5, "peak_memory_mib": 2048},
    }
