"""Rebuild the shipped default model (``make default-model``): phantom → train → test → ship.

1. a phantom cohort (``--size``, medium by default; ``--subjects``, ``--seed``), written in
   ``--workers`` processes;
2. training with ``src/aidnet/weights/recipe.yaml`` (the recommended ``full`` preset at the
   size the recipe names), on ``--device``;
3. evaluation on the held-out test subjects: AUC (subject bootstrap interval) and the Grad-CAM
   pointing game against the phantom's label maps;
4. with ``--ship``, the best checkpoint copied to ``src/aidnet/weights/default.pt`` and the
   figures to ``OUT/default_model.json`` (docs/model-card.md quotes them).

Everything runs locally; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "src" / "aidnet" / "weights" / "recipe.yaml"
SHIPPED = ROOT / "src" / "aidnet" / "weights" / "default.pt"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    from aidnet.config import load_config
    from aidnet.errors import AidnetError
    from aidnet.phantom import make_cohort
    from aidnet.pipeline import evaluate_run
    from aidnet.training.loop import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/default-model"))
    ap.add_argument("--subjects", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--size", default="medium", help="phantom size (tests: small)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--recipe", type=Path, default=RECIPE)
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe (tests)")
    ap.add_argument("--ship", action="store_true", help="copy best.pt into the package")
    args = ap.parse_args(argv)
    try:
        started = time.perf_counter()
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
        config = load_config(str(args.recipe), epochs=args.epochs)
        run = args.out / "run"
        resume = (run / "last.pt").exists() and not (run / "best.pt").exists()
        if not (run / "best.pt").exists() or resume:
            train(
                config,
                manifest,
                run,
                resume=resume,
                cache_dir=args.out / "cache",
                workers=args.workers,
                device=args.device,
            )
        metrics = evaluate_run(
            run,
            manifest,
            args.out / "eval",
            split="test",
            device=args.device,
            workers=args.workers,
        )
    except AidnetError as exc:
        print(f"default_model: error: {exc}", file=sys.stderr)
        return 2
    pointing = metrics.get("localisation", {}).get("gradcam", {})
    figures = {
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d"),
        "subjects": args.subjects,
        "seed": args.seed,
        "recipe": str(args.recipe.relative_to(ROOT))
        if args.recipe.is_relative_to(ROOT)
        else str(args.recipe),
        "test_auc": metrics.get("auc"),
        "test_auc_ci95": metrics.get("auc_ci95"),
        "test_scans": metrics.get("n"),
        "pointing_game": pointing.get("pointing_hit_rate"),
        "pointing_game_ci95": pointing.get("pointing_hit_rate_ci95"),
        "pointing_scans": pointing.get("n"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "default_model.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    if args.ship:
        shutil.copyfile(run / "best.pt", SHIPPED)
        print(f"shipped {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
