"""Rebuild the shipped default model (``make default-model``): phantom → train → test → ship.

The protocol of the model-card trials, in one command:

1. a phantom cohort (``--size``, medium by default; ``--subjects``, ``--seed``), written in
   ``--workers`` processes;
2. training with ``src/aidnet/weights/recipe.yaml`` (the recommended ``full`` preset at the
   size the recipe names), on ``--device``, once per training seed (``--seeds``, default three),
   every seed on the first seed's subject split, so all are tested on the same held-out
   subjects; each run resumes where it stopped. With ``--side-by-side`` the seeds train at
   once, each in its own process with its share of the CPU threads (``seed-N/train.log``);
3. each seed evaluated on the held-out test subjects: AUC (subject bootstrap interval) and the
   Grad-CAM pointing game against the phantom's label maps, and, when ``make real-scans`` has
   fetched them (``--scans``), P(CAC) and the Grad-CAM peak on the two real pyradiomics scans;
   with several seeds, their ensemble (averaged probabilities and heat maps) the same way;
4. the seed to ship is the one with the best validation AUC (its ``best.pt``): chosen without
   looking at the test subjects or the real scans. ``OUT/default_model.json`` holds every
   seed's figures, the choice and, for it, whether each target of docs/model-card.md is met;
   with ``--ship`` its ``best.pt`` is copied to ``src/aidnet/weights/default.pt``.

Everything runs locally; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "src" / "aidnet" / "weights" / "recipe.yaml"
SHIPPED = ROOT / "src" / "aidnet" / "weights" / "default.pt"

#: what a default model must reach before it ships (issue 32, docs/model-card.md)
TARGETS = {"test_auc": 0.95, "pointing_game": 0.85, "lung2_p_cac": 0.5, "lung2_peak_mm": 10.0}


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"need distinct seeds, got {text!r}")
    return seeds


def _real_scans(folder: Path, checkpoint: list[Path]) -> dict | str:
    """P(CAC) and the Grad-CAM peak on lung1 and lung2 (benchmarks/real_check.py) of a model
    or a seed ensemble, or why not."""
    from benchmarks.real_check import check, real_scans

    scans = real_scans(folder)
    if not all(p.exists() for p in scans.values()):
        return f"not run: {folder} does not hold lung1 and lung2 (make real-scans)"
    from aidnet.api import load_model

    return check(load_model(checkpoint, device="cpu"), scans)


def _threads(processes: int) -> int:
    """CPU threads for each of ``processes`` trainings that share this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // processes)


def _train_side_by_side(
    args: argparse.Namespace, manifest: Path, runs: dict[int, Path], split: Path
) -> None:
    """Every seed's ``aidnet train`` at once, each in its own process, on ``split`` and the
    filled cache, with the thread-pool variables (``OMP_NUM_THREADS`` …) set so that their
    threads add up to the cores (left at torch's default, each would start one per core and
    they would crowd each other out); each resumes where it stopped, and its output goes to
    ``RUN/train.log``."""
    from aidnet.data.pool import THREAD_VARIABLES
    from aidnet.errors import AidnetError

    threads = str(_threads(len(runs)))
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, threads)}
    procs: dict[int, tuple[subprocess.Popen, Path]] = {}
    try:
        for seed, run in runs.items():
            run.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "aidnet.cli", "train", "--manifest", str(manifest)]
            cmd += ["--out", str(run), "--preset", str(args.recipe), "--seed", str(seed)]
            cmd += ["--cache", str(args.out / "cache"), "--splits", str(split)]
            cmd += ["--device", args.device] if args.device else []
            cmd += ["--epochs", str(args.epochs)] if args.epochs else []
            cmd += ["--resume"] if (run / "last.pt").exists() else []
            log = run / "train.log"
            with log.open("a") as fh:
                procs[seed] = (subprocess.Popen(cmd, stdout=fh, stderr=fh, env=env), log)
        exits = [(seed, proc.wait(), log) for seed, (proc, log) in procs.items()]
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.terminate()
    for seed, code, log in exits:
        if code != 0:
            lines = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise AidnetError(f"{log}: seed {seed}'s training failed (exit {code}): {lines[-1]}")


def _evaluate(args: argparse.Namespace, manifest: Path, runs: list[Path], out: Path) -> dict:
    """A model's (one run) or a seed ensemble's (several) figures on the held-out test
    subjects and on the two real scans."""
    from aidnet.pipeline import evaluate_run
    from benchmarks.real_scans import default_dest

    done = out / "metrics.json"
    if done.exists() and all(done.stat().st_mtime > (r / "best.pt").stat().st_mtime for r in runs):
        # a rerun after an interruption: this model's evaluation finished before it
        metrics = json.loads(done.read_text())
    else:
        metrics = evaluate_run(
            runs if len(runs) > 1 else runs[0],
            manifest,
            out,
            split="test",
            cache_dir=args.out / "cache",
            device=args.device,
            workers=args.workers,
        )
    pointing = metrics.get("localisation", {}).get("gradcam", {})
    return {
        "test_auc": metrics.get("auc"),
        "test_auc_ci95": metrics.get("auc_ci95"),
        "test_scans": metrics.get("n"),
        "pointing_game": pointing.get("pointing_hit_rate"),
        "pointing_game_ci95": pointing.get("pointing_hit_rate_ci95"),
        "pointing_scans": pointing.get("n"),
        "real_scans": _real_scans(args.scans or default_dest(), [r / "best.pt" for r in runs]),
    }


def _auc(figures: dict) -> float:
    value = figures.get("val_auc")
    return float(value) if value is not None and value == value else -1.0  # NaN: no AUC


def _choose(seeds: dict[str, dict]) -> str:
    """The seed to ship, seen through validation only: the best validation AUC, the first seed
    on a tie."""
    order = list(seeds)
    return max(order, key=lambda s: (_auc(seeds[s]), -order.index(s)))


def _targets(figures: dict) -> dict[str, bool | None]:
    """Each target met (True/False), or None where it was not measured."""
    real = figures["real_scans"]
    lung2 = real.get("lung2", {}) if isinstance(real, dict) else {}
    got = {
        "test_auc": figures["test_auc"],
        "pointing_game": figures["pointing_game"],
        "lung2_p_cac": lung2.get("p_cac"),
        "lung2_peak_mm": lung2.get("peak_to_described_calcium_mm"),
    }
    return {
        key: None
        if got[key] is None
        else (got[key] <= bound if key.endswith("_mm") else got[key] >= bound)
        for key, bound in TARGETS.items()
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    from aidnet.config import load_config
    from aidnet.errors import AidnetError
    from aidnet.phantom import make_cohort
    from aidnet.training.loop import prepare_data, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/default-model"))
    ap.add_argument("--subjects", type=int, default=480)
    ap.add_argument("--seed", type=int, default=7, help="the phantom cohort's seed")
    ap.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="training seeds: 0,1,2")
    ap.add_argument("--size", default="medium", help="phantom size (tests: small)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--recipe", type=Path, default=RECIPE)
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe (tests)")
    ap.add_argument("--scans", type=Path, default=None, help="lung1/lung2 (make real-scans)")
    ap.add_argument("--ship", action="store_true", help="copy the chosen best.pt into the package")
    ap.add_argument(
        "--side-by-side",
        action="store_true",
        help="train the seeds at once, one process each (several seeds on one CPU)",
    )
    args = ap.parse_args(argv)
    started = time.perf_counter()
    seeds: dict[str, dict] = {}
    ensemble: dict | None = None
    cache = args.out / "cache"
    try:
        manifest = args.out / "cohort" / "manifest.csv"
        if not manifest.exists():
            make_cohort(
                args.out / "cohort",
                subjects=args.subjects,
                seed=args.seed,
                size=args.size,
                progress=True,
                workers=args.workers,
            )
        runs = {seed: args.out / f"seed-{seed}" for seed in args.seeds}
        first = runs[args.seeds[0]]
        if args.side_by_side:
            # the first seed's split and the filled cache, before any training starts
            first.mkdir(parents=True, exist_ok=True)
            config = load_config(str(args.recipe), epochs=args.epochs, seed=args.seeds[0])
            prepare_data(config, manifest, first, cache_dir=cache, workers=args.workers)
            _train_side_by_side(args, manifest, runs, first / "splits.csv")
        for seed, run in runs.items():
            if not args.side_by_side:
                # best.pt is written at the first epoch already: only last.pt says how far a
                # run got. Resuming a finished run trains nothing; an interrupted one goes on.
                train(
                    load_config(str(args.recipe), epochs=args.epochs, seed=seed),
                    manifest,
                    run,
                    resume=(run / "last.pt").exists(),
                    cache_dir=cache,
                    workers=args.workers,
                    device=args.device,
                    splits=None if run == first else first / "splits.csv",
                )
            best = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
            seeds[str(seed)] = {
                "run": str(run),
                "best_epoch": best.get("epoch"),
                "val_auc": best.get("val_auc"),
                **_evaluate(args, manifest, [run], run / "eval"),
            }
            print(json.dumps({f"seed {seed}": seeds[str(seed)]}), flush=True)
        if len(runs) > 1:
            ensemble = _evaluate(args, manifest, list(runs.values()), args.out / "ensemble")
            print(json.dumps({"ensemble": ensemble}), flush=True)
    except AidnetError as exc:
        print(f"default_model: error: {exc}", file=sys.stderr)
        return 2
    chosen = _choose(seeds)
    targets = _targets(seeds[chosen])
    figures = {
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d"),
        "subjects": args.subjects,
        "seed": args.seed,
        "recipe": str(args.recipe.relative_to(ROOT))
        if args.recipe.is_relative_to(ROOT)
        else str(args.recipe),
        "seeds": seeds,
        "ensemble": ensemble,
        "chosen_seed": int(chosen),
        "targets": {key: {"bound": TARGETS[key], "met": met} for key, met in targets.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "default_model.json").write_text(json.dumps(figures, indent=2) + "\n")
    missed = [key for key, met in targets.items() if met is not True]
    print(
        f"chosen: seed {chosen} (validation AUC {_auc(seeds[chosen]):.3f}); targets "
        + ("all met" if not missed else "not met or not measured: " + ", ".join(missed))
    )
    if args.ship:
        shutil.copyfile(Path(seeds[chosen]["run"]) / "best.pt", SHIPPED)
        print(f"shipped {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
