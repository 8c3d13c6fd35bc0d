"""``aidnet demo`` / ``make demo``: the whole job on a built-in synthetic cohort.

phantom cohort → train AID-Net on scan–rescan pairs → evaluate on the held-out test subjects →
Grad-CAM heat maps for a gallery of test cases → one self-contained report.html. Re-running
reuses what is already finished (cohort, cache, completed epochs).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from aidnet.atomic import write_text_atomic
from aidnet.errors import AidnetError


def run_demo(out: Path, *, subjects: int = 120, preset: str = "demo", seed: int = 0) -> dict:
    from aidnet.config import load_config, save_config
    from aidnet.data.manifest import read_manifest
    from aidnet.phantom import make_cohort
    from aidnet.pipeline.evaluate import evaluate_run
    from aidnet.pipeline.explain import explain_manifest
    from aidnet.report.html import (
        gallery_entries,
        localisation_rows,
        pick_gallery,
        write_report,
    )
    from aidnet.training.loop import train

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cohort = out / "cohort"
    manifest = cohort / "manifest.csv"
    timings: dict[str, float] = {}
    # a re-run reuses finished stages: keep the times they took when they ran
    try:
        earlier = json.loads((out / "timings.json").read_text())
    except (OSError, ValueError):
        earlier = {}

    t0 = time.perf_counter()
    manifest_existed = manifest.exists()
    if not manifest_existed:
        print(f"[1/5] writing a synthetic cohort of {subjects} subjects to {cohort}")
        make_cohort(
            cohort, subjects=subjects, seed=seed, size="small", dicom_fraction=0.1, progress=True
        )
    else:
        print(f"[1/5] reusing the cohort in {cohort}")
    timings["phantom_s"] = time.perf_counter() - t0
    if manifest_existed:
        timings["phantom_s"] = earlier.get("phantom_s", timings["phantom_s"])

    run = out / "run"
    config = load_config(preset, seed=seed)
    t0 = time.perf_counter()
    print(
        f"[2/5] training {config.model} ({config.preset} preset, {config.epochs} epochs) in {run}"
    )
    resume = (run / "last.pt").exists()
    if resume:
        print("      resuming the existing run")
    train(config, manifest, run, resume=resume, workers=2)
    timings["train_s"] = time.perf_counter() - t0 + (earlier.get("train_s", 0.0) if resume else 0.0)

    t0 = time.perf_counter()
    print("[3/5] evaluating on the held-out test subjects")
    metrics = evaluate_run(run, manifest, out, split="test")
    timings["evaluate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print("[4/5] Grad-CAM heat maps for a gallery of test cases")
    picked = pick_gallery(out / "predictions.csv")
    maps = explain_manifest(run, manifest, out / "heatmaps", keys=[c["key"] for c in picked])
    timings["explain_s"] = time.perf_counter() - t0
    if len(maps) < len(picked):
        raise AidnetError(f"{out}: only {len(maps)} of {len(picked)} heat maps could be written")
    if len(picked) < 3:  # a small cohort's test split (10 subjects: one subject, two scans)
        logging.getLogger("aidnet").warning(
            "the test split holds %d labelled scans, so the gallery shows %d heat maps; "
            "more --subjects give a fuller one",
            len(picked),
            len(picked),
        )

    print("[5/5] writing the report")
    records = read_manifest(manifest)
    classes = [r.label for r in records]
    summary = {
        "cohort": f"{len({r.subject for r in records})} synthetic subjects, {len(records)} scans "
        f"(class 0 / 1–399 / ≥400: {classes.count(0)} / {classes.count(1)} / {classes.count(2)})",
        "model": f"{config.model}, strategy {config.strategy}, λ = {config.lambda_}, "
        f"input {tuple(config.input_size)} (Z, Y, X)",
        "training": f"{config.epochs} epochs, Adam lr {config.lr}, batch {config.batch_size} pairs",
        "test split": f"{metrics.get('n')} scans of held-out subjects",
        "timings": ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items())
        + (" (training summed over resumed runs)" if resume else ""),
    }
    figures = {
        "ROC curve (test)": out / "roc.png",
        "Confusion matrix 2x2": out / "confusion_2x2.png",
    }
    if (out / "confusion_3x3.png").exists():
        figures["Confusion matrix 3x3"] = out / "confusion_3x3.png"
    write_report(
        out / "report.html",
        title="aidnet demo — AID-Net on a synthetic cohort",
        summary=summary,
        metrics=metrics,
        figures=figures,
        localisation=localisation_rows(metrics),
        gallery=gallery_entries(picked, maps),
    )
    save_config(config, out / "config.yaml")
    timings["this_run_s"] = time.perf_counter() - t_start
    write_text_atomic(out / "timings.json", json.dumps(timings, indent=2))
    return metrics
