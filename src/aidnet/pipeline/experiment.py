"""``aidnet experiment``: the paper's comparison (§2.4, §3; Figs. 4 and 5) on one cohort.

Ten rows — ResNet-101, DenseNet-121, ID-Net, AID-Net λ=0 and AID-Net λ=0.001, each with
strategy 1 (2 classes) and 2 (3 classes) — are trained on ONE subject split and evaluated on its
test scans. Layout of ``OUT``::

    experiment.json           settings (a re-run with other settings is refused)
    splits.csv                the shared split; every row's run/splits.csv must equal it
    cache/                    preprocessed scans, shared by all rows
    rows/<row-id>/run/        training run (checkpoints, log, config, splits.csv)
    rows/<row-id>/eval/       predictions.csv, metrics.json, ROC and confusion PNGs
    rows/<row-id>/done.json   written atomically when the row is finished: a re-run skips it
                              (and the row's last.pt, only needed to resume, is removed)
    comparison.csv/.json      one line per row, DeLong p vs AID-Net λ=0.001 of the strategy
    figures/                  ROC overlays (Fig. 5) and confusion matrices (Fig. 4) per strategy
    gallery/                  Grad-CAM / SAG overlays of test cases of AID-Net λ=0.001, strat. 2
    report.html

A row that fails is reported and the others go on; a re-run resumes a half-trained row from its
``last.pt`` and skips finished ones.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidnet.atomic import write_text_atomic
from aidnet.errors import AidnetError

MODEL_LABELS = {
    "resnet101": "ResNet-101",
    "densenet121": "DenseNet-121",
    "idnet": "ID-Net",
    "aidnet": "AID-Net",
}


@dataclass(frozen=True)
class Row:
    """One line of the paper's comparison."""

    model: str
    strategy: int
    lambda_: float | None  # contrastive-loss weight; None for the single-scan baselines

    @property
    def group(self) -> str:
        return self.model if self.model != "aidnet" else f"aidnet-l{self.lambda_:g}"

    @property
    def id(self) -> str:
        return f"{self.group}-s{self.strategy}"

    @property
    def label(self) -> str:
        name = MODEL_LABELS[self.model]
        if self.model == "aidnet":
            name += f" λ={self.lambda_:g}"
        return f"{name}, strategy {self.strategy}"


ROWS = tuple(
    Row(model, strategy, lam)
    for strategy in (1, 2)
    for model, lam in (
        ("resnet101", None),
        ("densenet121", None),
        ("idnet", 0.001),
        ("aidnet", 0.0),
        ("aidnet", 0.001),
    )
)
REFERENCE = {1: "aidnet-l0.001-s1", 2: "aidnet-l0.001-s2"}
GALLERY_ROW = "aidnet-l0.001-s2"


def select_rows(names: list[str] | None) -> list[Row]:
    """Rows by id (``idnet-s1``) or group (``idnet``, ``aidnet-l0``: both strategies)."""
    if not names:
        return list(ROWS)
    wanted: set[str] = set()
    for name in names:
        matched = {r.id for r in ROWS if name in (r.id, r.group)}
        if not matched:
            raise AidnetError(
                f"unknown row '{name}'; choose from: {', '.join(r.id for r in ROWS)} "
                f"(or a model group: {', '.join(dict.fromkeys(r.group for r in ROWS))})"
            )
        wanted |= matched
    return [r for r in ROWS if r.id in wanted]


def check_input_size(
    models: set[str], input_size: tuple[int, int, int], features: tuple[int, ...]
) -> None:
    """Refuse, before anything trains, a preset whose input a model cannot take (shapes only,
    on PyTorch's meta device: no memory, no arithmetic)."""
    import torch

    from aidnet.models.registry import build_model

    for name in sorted(models):
        with torch.device("meta"):
            model = build_model(name, num_classes=3, features=tuple(features)).eval()
            x = torch.zeros(1, 2, *input_size)
            try:
                with torch.no_grad():
                    model(x, x if model.siamese else None)
            except RuntimeError as exc:
                raise AidnetError(
                    f"{MODEL_LABELS[name]} cannot take the preset's input size "
                    f"{tuple(input_size)} (Z, Y, X): {str(exc).splitlines()[0]}; "
                    "use a preset with a larger input_size"
                ) from None


def _settings(manifest: Path, config) -> dict[str, Any]:
    out = config.to_dict()
    for key in ("model", "strategy", "lambda"):
        out.pop(key)
    return {"manifest": str(manifest.resolve()), "config": out}


def _prepare(out: Path, manifest: Path, config) -> tuple[dict[str, str], list]:
    """Check or write experiment.json and the shared splits.csv; return the split and the
    labelled scans."""
    from aidnet.data.splits import read_splits, split_subjects, write_splits
    from aidnet.training.loop import labelled_records

    records = labelled_records(manifest)  # a missing or empty manifest fails here
    settings = _settings(manifest, config)
    saved_path = out / "experiment.json"
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        if saved != settings:
            changed = sorted(
                k for k in settings["config"] if saved["config"].get(k) != settings["config"][k]
            )
            if saved["manifest"] != settings["manifest"]:
                changed.insert(0, "manifest")
            raise AidnetError(
                f"{out}: holds an experiment with other settings ({', '.join(changed)}); "
                "re-run it with the same --manifest, --preset and --epochs, or use another --out"
            )
    assignment = split_subjects(
        records,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )
    split_file = out / "splits.csv"
    if split_file.exists():
        if read_splits(split_file) != assignment:
            raise AidnetError(f"{split_file}: differs from the split of this manifest and preset")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_splits(split_file, assignment)
    if not saved_path.exists():
        write_text_atomic(saved_path, json.dumps(settings, indent=2))
    return assignment, records


def _check_same_split(out: Path, run: Path) -> None:
    own = run / "splits.csv"
    if own.exists() and own.read_bytes() != (out / "splits.csv").read_bytes():
        raise AidnetError(
            f"{own}: this row was trained on another subject split than {out / 'splits.csv'}; "
            "remove the row's folder to retrain it, or use another --out"
        )


def run_row(
    row: Row,
    out: Path,
    manifest: Path,
    config,
    *,
    workers: int = 1,
    device: str | None = None,
    n_boot: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) on ``device`` and evaluate one row; write its done marker last."""
    import dataclasses

    from aidnet.data.cache import record_cache_dir
    from aidnet.pipeline.evaluate import evaluate_run
    from aidnet.training.loop import train

    row_dir = out / "rows" / row.id
    run = row_dir / "run"
    _check_same_split(out, run)
    if not (run / "splits.csv").exists():  # the run reuses a split it finds in its folder
        run.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "splits.csv", run / "splits.csv")
    row_config = dataclasses.replace(
        config,
        model=row.model,
        strategy=row.strategy,
        lambda_=config.lambda_ if row.lambda_ is None else row.lambda_,
        # ID-Net has no attention to gate with: AID-Net without the SAG is the calcium head
        head="calcium" if config.head == "gated" and row.model == "idnet" else config.head,
    ).validate()
    resume = (run / "last.pt").exists()
    t0 = time.perf_counter()
    train(
        row_config,
        manifest,
        run,
        resume=resume,
        cache_dir=out / "cache",
        workers=workers,
        device=device,
        progress=progress,
    )
    record_cache_dir(run, out / "cache")  # `aidnet evaluate RUN` then finds the shared cache
    _check_same_split(out, run)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate_run(
        run,
        manifest,
        row_dir / "eval",
        split="test",
        cache_dir=out / "cache",
        n_boot=n_boot,
        device=device,
        workers=workers,
    )
    done = {
        "row": row.id,
        "resumed": resume,
        "train_s": train_s,
        "evaluate_s": time.perf_counter() - t0,
        "auc": metrics.get("auc"),
        "n": metrics.get("n"),
    }
    write_text_atomic(row_dir / "done.json", json.dumps(done, indent=2))
    # a finished row needs only best.pt: last.pt carries the optimiser state for resuming
    # (three times the weights: about 1 GB for ResNet-101)
    (run / "last.pt").unlink(missing_ok=True)
    return done


def _read_predictions(path: Path) -> tuple[dict[tuple[str, str], tuple[int, float]], bool]:
    """(subject, visit) → (CAC label, P(CAC)) of the labelled scans, and whether P(CAC) is at
    full precision (see :func:`aidnet.evaluation.predictions.read_predictions`)."""
    from aidnet.evaluation.predictions import read_predictions

    rows, full = read_predictions(path)
    scans = {
        (r["subject"], r["visit"]): (int(int(r["label"]) > 0), float(r["p_cac"]))
        for r in rows
        if r["label"] != ""
    }
    return scans, full


def _delong_vs(row_eval: Path, ref_eval: Path) -> dict[str, Any] | None:
    """DeLong's test of a row's AUC against the reference row's, on the scans both scored,
    a subject's scans one cluster (Obuchowski 1997), from full-precision probabilities."""
    import numpy as np

    from aidnet.evaluation.delong import delong_test

    (mine, mine_full), (ref, ref_full) = _read_predictions(row_eval), _read_predictions(ref_eval)
    keys = sorted(set(mine) & set(ref))
    y = np.array([mine[k][0] for k in keys])
    if len(keys) < 3 or y.min() == y.max():
        return None
    if any(mine[k][0] != ref[k][0] for k in keys):
        raise AidnetError(f"{row_eval}: labels differ from the reference row's on the same scans")
    a = np.array([mine[k][1] for k in keys])
    b = np.array([ref[k][1] for k in keys])
    subjects = np.array([subject for subject, _ in keys])
    result = delong_test(y, a, b, groups=subjects)
    return {
        **result.to_dict(),
        "n": len(keys),
        "cluster": "subject",
        "probabilities": "full precision" if mine_full and ref_full else "6 decimals (CSV)",
    }


def comparison_rows(out: Path, failures: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per row of the paper (finished, failed or not run), in the paper's order."""
    entries = []
    for row in ROWS:
        row_dir = out / "rows" / row.id
        entry: dict[str, Any] = {
            "id": row.id,
            "label": row.label,
            "model": row.model,
            "strategy": row.strategy,
            "lambda": row.lambda_,
        }
        if not (row_dir / "done.json").exists():
            if row.id in failures:
                entry.update(status="failed", error=failures[row.id])
            else:
                entry["status"] = "not run"
            entries.append(entry)
            continue
        metrics = json.loads((row_dir / "eval" / "metrics.json").read_text())
        entry["status"] = "done"
        for key in ("n", "n_positive", "accuracy", "auc", "sensitivity", "specificity"):
            entry[key] = metrics.get(key)
            if key not in ("n", "n_positive"):
                entry[f"{key}_ci95"] = metrics.get(f"{key}_ci95")
        for key in ("confusion_2x2", "confusion_3x3", "roc", "localisation"):
            if key in metrics:
                entry[key] = metrics[key]
        ref_dir = out / "rows" / REFERENCE[row.strategy]
        entry["delong"] = None
        if row.id != REFERENCE[row.strategy] and (ref_dir / "done.json").exists():
            entry["delong"] = _delong_vs(
                row_dir / "eval" / "predictions.csv", ref_dir / "eval" / "predictions.csv"
            )
        entries.append(entry)
    return entries


RATES = ("accuracy", "auc", "sensitivity", "specificity")
CSV_COLUMNS = [
    "row",
    "model",
    "strategy",
    "lambda",
    "status",
    "n",
    "n_positive",
    *(f"{rate}{end}" for rate in RATES for end in ("", "_ci_low", "_ci_high")),
    "delong_vs",
    "delong_auc_difference",
    "delong_z",
    "delong_p",
]


def write_comparison(out: Path, entries: list[dict[str, Any]]) -> None:
    from aidnet.evaluation.predictions import write_metrics_json

    lines = []
    for e in entries:
        line: dict[str, Any] = {
            "row": e["id"],
            "model": e["model"],
            "strategy": e["strategy"],
            "lambda": "" if e["lambda"] is None else f"{e['lambda']:g}",
            "status": e["status"],
        }
        if e["status"] == "done":
            line.update(n=e["n"], n_positive=e["n_positive"])
            for key in RATES:
                ci = e.get(f"{key}_ci95") or [None, None]
                line.update({key: e[key], f"{key}_ci_low": ci[0], f"{key}_ci_high": ci[1]})
            if e["delong"]:
                line.update(
                    delong_vs=REFERENCE[e["strategy"]],
                    delong_auc_difference=e["delong"]["difference"],
                    delong_z=e["delong"]["z"],
                    delong_p=e["delong"]["p"],
                )
        lines.append(
            {
                k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else v)
                for k, v in line.items()
            }
        )
    text = [",".join(CSV_COLUMNS)]
    for line in lines:
        text.append(",".join(_cell(line.get(c, "")) for c in CSV_COLUMNS))
    write_text_atomic(out / "comparison.csv", "\n".join(text) + "\n")
    slim = [{k: v for k, v in e.items() if k != "roc"} for e in entries]
    write_metrics_json(out / "comparison.json", {"reference": REFERENCE, "rows": slim})


def _cell(value: Any) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def write_figures(out: Path, entries: list[dict[str, Any]]) -> dict[str, Path]:
    """ROC overlay and confusion matrices per strategy; caption → PNG (ROC of strategy 2
    first: the report puts the first figure at the top)."""
    from aidnet.evaluation.plots import plot_confusion_grid, plot_roc

    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    confusions: dict[str, Path] = {}
    for strategy in (2, 1):
        done = [e for e in entries if e["strategy"] == strategy and e["status"] == "done"]
        if not done:
            continue
        curves = {
            e["label"].rsplit(",", 1)[0]: (e["roc"]["fpr"], e["roc"]["tpr"], e["auc"])
            for e in done
            if e.get("roc") and e["roc"]["fpr"]
        }
        if curves:
            figures[f"ROC curves, strategy {strategy} (paper Fig. 5)"] = plot_roc(
                curves,
                figures_dir / f"roc_strategy{strategy}.png",
                title=f"ROC, strategy {strategy}: CAC present vs absent",
            )
        short = {e["label"].rsplit(",", 1)[0]: e for e in done}
        confusions[f"2×2 confusion matrices, strategy {strategy} (paper Fig. 4)"] = (
            plot_confusion_grid(
                {k: e["confusion_2x2"] for k, e in short.items()},
                ["no CAC", "CAC"],
                figures_dir / f"confusion_2x2_strategy{strategy}.png",
                f"CAC detection, strategy {strategy}",
            )
        )
        three = {k: e["confusion_3x3"] for k, e in short.items() if "confusion_3x3" in e}
        if three:
            confusions[f"3×3 confusion matrices, strategy {strategy}"] = plot_confusion_grid(
                three,
                ["0", "1-399", ">=400"],
                figures_dir / f"confusion_3x3_strategy{strategy}.png",
                f"Agatston class, strategy {strategy}",
            )
    return {**figures, **confusions}


def write_gallery(
    out: Path,
    manifest: Path,
    k: int = 6,
    log: Callable[[str], None] = print,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Heat-map overlays of test cases (TP/FN/FP/TN) of AID-Net λ=0.001, strategy 2; reused
    while that row's done marker is unchanged."""
    from aidnet.pipeline.explain import explain_manifest
    from aidnet.report.html import gallery_entries, pick_gallery

    row_dir = out / "rows" / GALLERY_ROW
    if not (row_dir / "done.json").exists():
        return []
    gallery_dir = out / "gallery"
    marker = gallery_dir / "gallery.json"
    stamp = (row_dir / "done.json").read_text()
    picked = pick_gallery(row_dir / "eval" / "predictions.csv", k=k)
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("row_done") == stamp and all(
            Path(m["gradcam_png"]).exists() for m in saved["maps"]
        ):
            return gallery_entries(picked, saved["maps"])
    log(f"gallery: heat maps of {len(picked)} test cases of {GALLERY_ROW}")
    maps = explain_manifest(
        row_dir / "run",
        manifest,
        gallery_dir,
        keys=[c["key"] for c in picked],
        cache_dir=out / "cache",
        device=device,
    )
    as_json = [{k: str(v) for k, v in m.items() if k == "key" or k.endswith("_png")} for m in maps]
    write_text_atomic(marker, json.dumps({"row_done": stamp, "maps": as_json}, indent=2))
    return gallery_entries(picked, as_json)


def run_experiment(
    manifest: Path,
    preset: str,
    out: Path,
    *,
    rows: list[str] | None = None,
    epochs: int | None = None,
    workers: int = 1,
    device: str | None = None,
    n_boot: int = 1000,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train, evaluate and compare the selected rows; write the comparison, figures and
    report. Raises AidnetError (after writing what it could) when a row failed.

    Training, evaluation and heat maps run on ``device`` (None: the GPU when there is one);
    scans are preprocessed in ``workers`` processes."""
    from aidnet.config import load_config
    from aidnet.data.cache import record_cache_dir
    from aidnet.pipeline.device import resolve_device
    from aidnet.report.html import localisation_rows, write_report

    if device is not None:  # a bad --device fails before anything trains
        device = str(resolve_device(device))
    if not manifest.is_file():
        raise AidnetError(f"{manifest}: manifest not found")
    selected = select_rows(rows)
    config = load_config(preset, epochs=epochs)
    check_input_size({r.model for r in selected}, config.input_size, config.features)
    assignment, records = _prepare(out, manifest, config)
    for row in selected:  # a row folder from another split is refused before anything trains
        _check_same_split(out, out / "rows" / row.id / "run")
    failures: dict[str, str] = {}
    t_start = time.perf_counter()
    for i, row in enumerate(selected, start=1):
        head = f"[{i}/{len(selected)}] {row.id}"
        if (out / "rows" / row.id / "done.json").exists():
            log(f"{head}: finished earlier, skipped")
            run = out / "rows" / row.id / "run"
            if run.is_dir() and (out / "cache").is_dir():  # finished before runs recorded it
                record_cache_dir(run, out / "cache")
            continue
        resuming = (out / "rows" / row.id / "run" / "last.pt").exists()
        log(
            f"{head}: {'resuming' if resuming else 'training'} {row.label} "
            f"({config.epochs} epochs, {config.preset} preset)"
        )
        try:
            done = run_row(
                row,
                out,
                manifest,
                config,
                workers=workers,
                device=device,
                n_boot=n_boot,
                progress=progress,
            )
        except Exception as exc:  # one failed row must not lose the others
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failures[row.id] = f"{type(exc).__name__}: {message}"
            log(f"{head}: FAILED ({failures[row.id]}); the other rows go on")
            continue
        auc = "n/a" if done["auc"] is None else f"{done['auc']:.3f}"
        log(
            f"{head}: done (train {done['train_s']:.0f} s, evaluate {done['evaluate_s']:.0f} s) "
            f"test AUC {auc}, n={done['n']}"
        )
    entries = comparison_rows(out, failures)
    write_comparison(out, entries)
    figures = write_figures(out, entries)
    gallery = write_gallery(out, manifest, log=log, device=device)
    localisation = [
        row
        for e in entries
        if e["status"] == "done"
        for row in localisation_rows(e, label=e["label"])
    ]
    finished = [e for e in entries if e["status"] == "done"]
    n_test = sum(1 for v in assignment.values() if v == "test")
    write_report(
        out / "report.html",
        title="aidnet experiment — the AID-Net paper's comparison",
        summary={
            "manifest": str(manifest),
            "subjects": f"{len(assignment)} ({n_test} in the test split, shared by every row)",
            "labelled scans": f"{len(records)} (class 0 / 1–399 / ≥400: "
            + " / ".join(str(sum(r.label == c for r in records)) for c in (0, 1, 2))
            + ")",
            "preset": f"{config.preset}: input {tuple(config.input_size)} (Z, Y, X), "
            f"{config.epochs} epochs, lr {config.lr}, batch {config.batch_size}",
            "rows finished": f"{len(finished)} of {len(ROWS)}",
            "gallery": f"test cases of {GALLERY_ROW}" if gallery else "n/a (row not finished)",
        },
        figures=figures,
        comparison=entries,
        reference=REFERENCE,
        localisation=localisation,
        gallery=gallery,
    )
    log(
        f"wrote {out / 'comparison.csv'} and {out / 'report.html'} "
        f"({time.perf_counter() - t_start:.0f} s)"
    )
    if failures:
        first = sorted(failures)[0]
        raise AidnetError(
            f"{len(failures)} of {len(selected)} rows failed (first: {first}: {failures[first]}); "
            "finished rows are kept, re-run the same command to retry the others"
        )
    return entries
