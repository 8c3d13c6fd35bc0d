"""``aidnet evaluate`` of uncached scans: wall time with ``--workers 1`` and ``--workers 2``.

Each run is the real command line in a fresh process with a fresh cache (interpreter start,
imports, the workers' start-up, preprocessing and prediction: what a user waits for), on the
CPU, without the localisation step (``--no-localise``: it does not depend on ``--workers``).
The model is an untrained network of the preset's size: its weights do not change the time.

Reduced size for a smoke test::

    python -m benchmarks.evaluate_workers --subjects 2 --size small --preset tiny --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the speed-up (workers 1 time / workers 2 time) asked for on a machine with 2 cores
TARGET_SPEEDUP = 1.7


def write_checkpoint(path: Path, preset: str, seed: int = 0) -> Path:
    """An untrained model of ``preset`` saved as an aidnet checkpoint at ``path``."""
    import torch

    from aidnet.config import load_config
    from aidnet.training.checkpoint import cpu_weights, save_checkpoint
    from aidnet.training.loop import model_for, model_spec

    config = load_config(preset)
    torch.manual_seed(seed)
    model = model_for(config)
    spec = model_spec(config)
    save_checkpoint(
        path, {"model": cpu_weights(model), "model_spec": spec, "config": config.to_dict()}
    )
    return path


def _command(checkpoint: Path, manifest: Path, out: Path, workers: int, device: str) -> list[str]:
    return [
        *(sys.executable, "-m", "aidnet.cli", "evaluate"),
        *("--checkpoint", str(checkpoint), "--manifest", str(manifest)),
        *("--out", str(out), "--cache", str(out / "cache")),
        *("--workers", str(workers), "--device", device, "--no-localise"),
    ]


def _evaluate(checkpoint: Path, manifest: Path, out: Path, workers: int, device: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        _command(checkpoint, manifest, out, workers, device),
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - t0


def bench_evaluate_workers(
    repeats: int,
    subjects: int = 20,
    size: str = "full",
    preset: str = "demo",
    device: str = "cpu",
) -> dict:
    """Median wall time of ``aidnet evaluate`` on ``subjects`` × 2 uncached phantom scans of
    ``size`` with ``--workers 1`` and ``--workers 2`` (alternating, each on a fresh cache);
    speed-up = workers 1 / workers 2, against :data:`TARGET_SPEEDUP`."""
    from aidnet.phantom import make_cohort

    with tempfile.TemporaryDirectory(prefix="aidnet-bench-") as tmp:
        folder = Path(tmp)
        manifest = make_cohort(folder / "cohort", subjects=subjects, seed=0, size=size)
        checkpoint = write_checkpoint(folder / "model" / "best.pt", preset)
        runs: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(repeats):
            for workers in (1, 2):
                out = folder / f"eval-{workers}-{repeat}"
                runs[workers].append(_evaluate(checkpoint, manifest, out, workers, device))
        same = all(
            (folder / f"eval-1-{r}" / "predictions.csv").read_bytes()
            == (folder / f"eval-2-{r}" / "predictions.csv").read_bytes()
            for r in range(repeats)
        )
        scans = len(manifest.read_text(encoding="utf-8").splitlines()) - 1
    medians = {w: statistics.median(times) for w, times in runs.items()}
    speedup = medians[1] / medians[2]
    return {
        "cohort": f"phantom, {size}, {subjects} subjects",
        "scans": scans,
        "preset": preset,
        "device": device,
        "workers_1_s": {"median": medians[1], "runs": runs[1]},
        "workers_2_s": {"median": medians[2], "runs": runs[2]},
        "ratio_2_to_1": medians[2] / medians[1],
        "speedup_2_over_1": speedup,
        "same_predictions": same,
        "target": {"speedup_2_over_1": TARGET_SPEEDUP, "cores": 2},
        "meets_target": speedup >= TARGET_SPEEDUP,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    from benchmarks.output import emit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=20, help="2 scans each")
    parser.add_argument("--size", default="full", help="phantom size: full, medium or small")
    parser.add_argument("--preset", default="demo", help="sets the network input size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args()
    result = bench_evaluate_workers(
        args.repeats, subjects=args.subjects, size=args.size, preset=args.preset, device=args.device
    )
    emit(result, args.out)


if __name__ == "__main__":  # pragma: no cover - manual run: python -m benchmarks.evaluate_workers
    main()
