"""One GPU job, end to end: phantom cohort → preprocessing → training → test AUC + pointing game.

Defaults: a 240-subject ``medium`` phantom cohort, the ``full`` preset for its epochs (100) on
``cuda``, 16 worker processes for the phantom and the preprocessing. It prints and writes
``OUT/gpu_job_<preset>.json`` after every phase (so a job cut short still leaves the phases it
finished): training pairs per second, the median epoch time, test AUC with n, the pointing
game of each heat map, and the wall time of each phase. With ``$OUT`` set (the device tool),
the JSON, the run's ``log.csv`` and the evaluation's ``metrics.json`` are copied there too.

Here, on a CPU, at a reduced size::

    .venv/bin/python -m benchmarks.gpu_job --out runs/gpu_job --device cpu --workers 2 \\
        --subjects 14 --size small --preset tiny --epochs 2

Through the device tool (one H200, 16 cores; see docs/benchmarks.md): first, here,
``sh benchmarks/gpu_wheels.sh`` (fills ``.whl/``), then ``run`` with ``carry: [".whl"]``,
``timeout_s: 600`` and the command::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 \\
      || exit; python3 -m benchmarks.gpu_job --out /tmp/gpu_job --device cuda --workers 16

Add ``--preset paper`` for the published recipe. Re-running into the same ``--out`` reuses a
cohort written with the same subjects, size and seed, and the preprocessed cache; the training
run of a preset is started afresh each time.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

COHORT_INFO = "cohort.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for everything")
    parser.add_argument("--preset", default="full", help="training preset or YAML config")
    parser.add_argument("--subjects", type=int, default=240, help="phantom subjects (2 scans)")
    parser.add_argument("--size", default="medium", help="phantom size: small, medium or full")
    parser.add_argument("--seed", type=int, default=0, help="phantom and training seed")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument(
        "--workers",
        type=int,
        default=16,
        help="processes writing the phantom, preprocessing and scoring heat maps",
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=None,
        help="DataLoader processes in training (the config's num_workers); default: the preset's",
    )
    parser.add_argument(
        "--no-localise", action="store_true", help="skip the pointing game (test AUC only)"
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap rounds for the CIs")
    return parser


def _check_device(name: str) -> str:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: PyTorch sees no CUDA GPU here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise SystemExit(f"--device {name}: use cuda, cuda:N or cpu")
    return name


def _machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": device,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cohort(args: argparse.Namespace, folder: Path) -> tuple[Path, bool]:
    """The phantom manifest, and whether an earlier run's cohort of the same settings was kept."""
    from aidnet.phantom import make_cohort

    wanted = {"subjects": args.subjects, "size": args.size, "seed": args.seed}
    manifest, info = folder / "manifest.csv", folder / COHORT_INFO
    try:
        if manifest.exists() and json.loads(info.read_text()) == wanted:
            return manifest, True
    except (OSError, ValueError):
        pass
    info.unlink(missing_ok=True)
    manifest = make_cohort(
        folder,
        subjects=args.subjects,
        seed=args.seed,
        size=args.size,
        progress=True,
        workers=args.workers,
    )
    info.write_text(json.dumps(wanted))
    return manifest, False


def _train_pairs(run: Path, manifest: Path, batch_size: int) -> int:
    """Pairs one epoch trains on: scan–rescan pairs of the train subjects, in whole batches
    (:func:`aidnet.training.batches.epoch_batches` drops an incomplete last one)."""
    with (run / "splits.csv").open(newline="") as fh:
        train = {r["subject"] for r in csv.DictReader(fh) if r["split"] == "train"}
    with manifest.open(newline="", encoding="utf-8") as fh:
        scans: dict[str, int] = {}
        for row in csv.DictReader(fh):
            if row["subject"] in train and row["agatston"].strip():
                scans[row["subject"]] = scans.get(row["subject"], 0) + 1
    pairs = sum(n - 1 for n in scans.values() if n > 1)
    return (pairs // batch_size) * batch_size if pairs >= batch_size else pairs


def _epoch_seconds(run: Path) -> list[float]:
    with (run / "log.csv").open(newline="") as fh:
        return [float(r["seconds"]) for r in csv.DictReader(fh)]


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _evaluate(args: argparse.Namespace, best: Path, manifest: Path, cache: Path) -> dict:
    """Test-split metrics and localisation of ``best``, networks and heat maps on the device."""
    from aidnet.pipeline.evaluate import evaluate_run

    out = args.out / f"eval_{args.preset_name}"
    if out.exists():  # no localisation scores resumed from an earlier job's model
        shutil.rmtree(out)
    return evaluate_run(
        best,
        manifest,
        out,
        split="test",
        cache_dir=cache,
        n_boot=args.n_boot,
        localise=not args.no_localise,
        device=args.device,
        workers=args.workers,
    )


def _summary(metrics: dict) -> dict[str, Any]:
    test = {
        "auc": _finite(metrics.get("auc")),
        "auc_ci95": metrics.get("auc_ci95"),
        "accuracy": _finite(metrics.get("accuracy")),
        "n": metrics.get("n"),
        "n_positive": metrics.get("n_positive"),
        "device": metrics.get("device"),
        "precision": metrics.get("precision"),
    }
    pointing = {
        name: {
            "hit_rate": _finite(s["pointing_hit_rate"]),
            "ci95": s["pointing_hit_rate_ci95"],
            "n": s["n"],
        }
        for name, s in metrics.get("localisation", {}).items()
    }
    return {"test": test, "pointing_game": pointing}


class Report:
    """The job's JSON, rewritten after every phase (and copied to ``$OUT`` when it is set)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data
        self.data["phases_s"] = {}

    def phase(self, name: str, seconds: float, **fields: Any) -> None:
        self.data["phases_s"][name] = round(seconds, 3)
        self.data.update(fields)
        self.data["finished"] = list(self.data["phases_s"])
        self.write()
        print(f"[{name}] {seconds:.1f} s", flush=True)

    def write(self) -> None:
        from aidnet.atomic import write_text_atomic

        write_text_atomic(self.path, json.dumps(self.data, indent=2) + "\n")
        _export(self.path)


def _export(path: Path, name: str | None = None) -> None:
    """Copy ``path`` to ``$OUT`` (the device tool's folder), when that is set."""
    target = os.environ.get("OUT")
    if target and path.is_file():
        shutil.copyfile(path, Path(target) / (name or path.name))


def _print(data: dict[str, Any]) -> None:
    train, test, phases = data["train"], data["test"], data["phases_s"]
    print(
        f"\n{data['preset']} on {data['machine']['device']}"
        f" ({data['machine'].get('gpu', platform.processor() or 'CPU')}), "
        f"{data['cohort']['subjects']} {data['cohort']['size']} phantom subjects"
    )
    print(
        f"training: {train['pairs_per_s']:.2f} pairs/s over the median epoch "
        f"({train['median_epoch_s']:.2f} s, {train['pairs_per_epoch']} pairs, "
        f"{train['epochs']} epochs)"
    )
    auc = "undefined" if test["auc"] is None else f"{test['auc']:.3f}"
    print(f"test AUC {auc} (n = {test['n']} scans, {test['n_positive']} with CAC)")
    for name, s in data["pointing_game"].items():
        rate = "n/a" if s["hit_rate"] is None else f"{s['hit_rate']:.3f}"
        print(f"pointing game, {name}: {rate} (n = {s['n']})")
    print("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))


def run_job(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the job; return what it writes as JSON."""
    args = _parser().parse_args(argv)
    device = _check_device(args.device)
    if args.subjects < 1 or args.workers < 1:
        raise SystemExit("--subjects and --workers must be at least 1")
    from aidnet.config import PRESETS, load_config
    from aidnet.data.cache import preprocess_cohort
    from aidnet.preprocess.config import for_training
    from aidnet.training.loop import labelled_records, train

    # None leaves the preset's value
    config = load_config(
        args.preset, epochs=args.epochs, seed=args.seed, num_workers=args.loader_workers
    )
    args.preset_name = args.preset if args.preset in PRESETS else Path(args.preset).stem
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(
        args.out / f"gpu_job_{args.preset_name}.json",
        {
            "preset": args.preset_name,
            "config": {
                k: config.to_dict()[k]
                for k in ("model", "input_size", "features", "batch_size", "epochs", "num_workers")
            },
            "cohort": {"subjects": args.subjects, "size": args.size, "seed": args.seed},
            "workers": args.workers,
            "machine": _machine(device),
            "argv": sys.argv[1:] if argv is None else argv,
        },
    )
    t_job = time.perf_counter()

    t0 = time.perf_counter()
    manifest, reused = _cohort(args, args.out / "cohort")
    report.phase("phantom", time.perf_counter() - t0, cohort_reused=reused)

    t0 = time.perf_counter()
    cache = args.out / "cache"
    done = preprocess_cohort(
        labelled_records(manifest), cache, for_training(config), workers=args.workers
    )
    report.phase(
        "preprocess",
        time.perf_counter() - t0,
        preprocess={
            "scans": len(done.done),
            "reused": done.reused,
            "failed": len(done.failures),
        },
    )

    run = args.out / f"train_{args.preset_name}"
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    best = train(config, manifest, run, cache_dir=cache, workers=args.workers, device=device)
    seconds = time.perf_counter() - t0
    epochs = _epoch_seconds(run)
    pairs = _train_pairs(run, manifest, config.batch_size)
    median = statistics.median(epochs)
    report.phase(
        "train",
        seconds,
        train={
            "epochs": len(epochs),
            "pairs_per_epoch": pairs,
            "median_epoch_s": median,
            "pairs_per_s": pairs / median,
            "pairs_per_s_whole_phase": pairs * len(epochs) / seconds,
            "epoch_s": epochs,
            "note": "an epoch's time includes its validation pass",
        },
    )
    _export(run / "log.csv", f"log_{args.preset_name}.csv")

    t0 = time.perf_counter()
    metrics = _evaluate(args, best, manifest, cache)
    report.phase("evaluate", time.perf_counter() - t0, **_summary(metrics))
    _export(
        args.out / f"eval_{args.preset_name}" / "metrics.json", f"metrics_{args.preset_name}.json"
    )

    report.data["phases_s"]["total"] = round(time.perf_counter() - t_job, 3)
    report.write()
    _print(report.data)
    print(f"wrote {report.path}")
    return report.data


def main() -> None:
    from aidnet.errors import AidnetError

    try:
        run_job()
    except AidnetError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
