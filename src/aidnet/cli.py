"""The ``aidnet`` command line. Heavy imports live inside the commands so ``--help`` is instant.

Every user mistake or bad input ends as one line ``aidnet: error: …`` and exit code 2.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aidnet.commandline import REQUIRED, CommandLine, argument, echo, option
from aidnet.errors import AidnetError
from aidnet.presets import DEFAULT_PRESET

F = TypeVar("F", bound=Callable[..., Any])


def _version() -> str:
    from aidnet import __version__

    return f"aidnet {__version__}"


app = CommandLine(
    "aidnet",
    "Weakly supervised coronary artery calcium detection in chest CT (AID-Net).",
    _version,
)


def run(argv: list[str]) -> int:
    """Run one ``aidnet`` command line (without the program name); return its exit status."""
    _show_notes()
    return app.run(argv)


class _NoteHandler(logging.Handler):
    """Prints warnings of the ``aidnet`` logger as ``aidnet: note: …`` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        echo(f"aidnet: note: {record.getMessage()}", err=True)


def _show_notes() -> None:
    logger = logging.getLogger("aidnet")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        handler = _NoteHandler(logging.WARNING)
        logger.addHandler(handler)


def friendly(func: F) -> F:
    """Turn AidnetError, a refusal of the file system and Ctrl-C into one line on stderr and a
    non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AidnetError as exc:
            echo(f"aidnet: error: {exc}", err=True)
            raise SystemExit(2) from None
        except OSError as exc:  # the file system refused (a folder that cannot be made, a full
            # disk, no permission): where and why, in the same one line
            where = f"{exc.filename}: " if exc.filename else ""
            echo(f"aidnet: error: {where}{exc.strerror or exc}", err=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            echo("aidnet: interrupted; finished work is kept, re-run to resume", err=True)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]


@app.command
@friendly
def phantom(
    out: Path = option(REQUIRED, "--out", help="Folder for manifest.csv, images/ and labels/."),
    subjects: int = option(20, "--subjects", min=1, help="Number of subjects (2 scans each)."),
    seed: int = option(0, "--seed", help="Random seed; the cohort is deterministic."),
    size: str = option(
        "small",
        "--size",
        help="full (512x512, 0.6-0.9 mm pixels), medium (256x256, 2.5-3 mm slices) or small "
        "(128x128, coarse).",
    ),
    dicom_fraction: float = option(
        0.0, "--dicom-fraction", min=0.0, max=1.0, help="Share of scans also written as DICOM."
    ),
    workers: int = option(
        1, "--workers", min=1, help="Parallel processes (the cohort is the same for any number)."
    ),
) -> None:
    """Write a synthetic non-contrast chest-CT cohort with exact Agatston truth."""
    from aidnet.phantom import make_cohort
    from aidnet.phantom.cohort import SIZES

    if size not in SIZES:
        raise AidnetError(f"--size must be one of {', '.join(SIZES)}, not '{size}'")
    manifest = make_cohort(
        out,
        subjects=subjects,
        seed=seed,
        size=size,
        dicom_fraction=dicom_fraction,
        progress=True,
        workers=workers,
    )
    echo(f"wrote {manifest}")


@app.command
@friendly
def agatston(
    image: Path = argument(REQUIRED, help="CT image: DICOM folder, NIfTI, NRRD or MHA."),
    mask: Path | None = option(None, "--mask", help="Label map on the same grid."),
    label: int = option(1, "--label", help="Label of the mask whose lesions count."),
    as_json: bool = option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Agatston score, risk category and lesions of one scan (see docs/agatston-and-phantom.md)."""
    import json

    import numpy as np

    from aidnet.agatston import agatston as score
    from aidnet.io.read import read_volume

    volume = read_volume(image)
    labels = None
    if mask is not None:
        labels = read_volume(mask).array
        if labels.shape != volume.array.shape:
            raise AidnetError(
                f"{mask}: mask shape {labels.shape} does not match image shape {volume.array.shape}"
            )
        labels = np.rint(labels).astype(np.int32)
    result = score(volume.array, volume.spacing, mask=labels, label=label)
    if as_json:
        echo(json.dumps({"image": str(image), **result.to_dict()}, indent=2))
        return
    echo(f"Agatston score: {result.score:.2f}")
    echo(f"risk category:  {result.category}")
    echo(f"lesions:        {len(result.lesions)}")
    if result.lesions:
        echo(f"{'slice':>6} {'area_mm2':>9} {'peak_HU':>8} {'weight':>6} {'score':>8}")
        for les in result.lesions:
            echo(
                f"{les.slice_index:>6} {les.area_mm2:>9.2f} {les.peak_hu:>8.0f} "
                f"{les.weight:>6} {les.score:>8.2f}"
            )


@app.command
@friendly
def preprocess(
    manifest: Path = argument(REQUIRED, help="Cohort manifest CSV."),
    out: Path = option(REQUIRED, "--out", help="Cache folder (one file per scan)."),
    preset: str = option(DEFAULT_PRESET, "--preset", help="Sets the input size, preprocessing."),
    workers: int = option(1, "--workers", min=1, help="Parallel processes."),
    qc: bool = option(
        False, "--qc", help="Also draw OUT/qc/<subject>_<visit>.png: lungs and crop box."
    ),
) -> None:
    """Preprocess every scan of a manifest into the cache (resumable; failures are skipped)."""
    from aidnet.config import load_config
    from aidnet.data.cache import preprocess_cohort, write_noise_table
    from aidnet.data.manifest import read_manifest
    from aidnet.preprocess.config import for_training

    config = for_training(load_config(preset))
    records = read_manifest(manifest, check_files=False)  # a missing scan fails alone
    result = preprocess_cohort(records, out, config, workers=workers, qc=qc)
    failures = result.failures
    for key in sorted(failures):
        echo(f"failed {key}: {failures[key]}", err=True)
    echo(
        f"{len(result.done)} of {len(records)} scans preprocessed into {out} "
        f"({result.reused} reused, {len(failures)} failed)"
    )
    if config.noise_ceiling and result.done:
        echo(write_noise_table(records, result, out))
    if failures:
        raise AidnetError(f"{len(failures)} scan(s) failed; see the lines above")


@app.command
@friendly
def train(
    manifest: Path = option(REQUIRED, "--manifest", help="Cohort manifest CSV."),
    out: Path = option(REQUIRED, "--out", help="Run folder (checkpoints, logs, split)."),
    preset: str = option(
        DEFAULT_PRESET, "--preset", help="tiny, demo, paper, full or a YAML file."
    ),
    model: str | None = option(None, "--model", help="aidnet, idnet, resnet101 or densenet121."),
    strategy: int | None = option(None, "--strategy", help="1: 2 classes, 2: 3 classes."),
    lambda_: float | None = option(None, "--lambda", help="Contrastive loss weight."),
    head: str | None = option(
        None,
        "--head",
        help="AID-Net/ID-Net map before pooling: calcium (default), gated (AID-Net) or stage.",
    ),
    negative_evidence: float | None = option(
        None,
        "--negative-evidence",
        help="Weight of the calcium head's evidence penalty on CAC-negative scans (0: off).",
    ),
    ema_decay: float | None = option(
        None,
        "--ema-decay",
        help="Per-step decay of the weight average that validation and best.pt use (0: off).",
    ),
    grad_clip: float | None = option(
        None,
        "--grad-clip",
        help="Largest gradient norm per step; larger ones are scaled down to it (0: off).",
    ),
    select_from: float | None = option(
        None,
        "--select-from",
        help="Choose best.pt among the epochs after this fraction of them (0: every epoch).",
    ),
    cpu_amp: bool | None = option(
        None,
        "--cpu-amp/--no-cpu-amp",
        help="bfloat16 autocast on CPUs: about 2x faster where the CPU has native bfloat16.",
    ),
    lr: float | None = option(
        None, "--lr", min=0.0, help="Peak learning rate (the preset's by default)."
    ),
    epochs: int | None = option(None, "--epochs", min=1),
    batch_size: int | None = option(
        None, "--batch-size", min=1, help="Pairs (or scans) per step and per process."
    ),
    seed: int | None = option(None, "--seed"),
    cache: Path | None = option(None, "--cache", help="Preprocessed-scan cache folder."),
    workers: int = option(1, "--workers", min=1, help="Preprocessing processes."),
    device: str | None = option(None, "--device", help="cpu, cuda, cuda:1 …"),
    resume: bool = option(False, "--resume", help="Continue the run in --out."),
    splits: Path | None = option(
        None, "--splits", help="Another run's splits.csv: train on the same subject split."
    ),
) -> None:
    """Train a model on the manifest's scan–rescan pairs from Agatston scores alone."""
    from aidnet.config import load_config
    from aidnet.training.loop import train as run_training

    if resume:
        _check_resume_flags(
            out,
            {
                "--model": ("model", model),
                "--strategy": ("strategy", strategy),
                "--lambda": ("lambda_", lambda_),
                "--head": ("head", head),
                "--negative-evidence": ("negative_evidence", negative_evidence),
                "--ema-decay": ("ema_decay", ema_decay),
                "--grad-clip": ("grad_clip", grad_clip),
                "--select-from": ("select_from", select_from),
                "--cpu-amp": ("cpu_amp", cpu_amp),
                "--lr": ("lr", lr),
                "--batch-size": ("batch_size", batch_size),
                "--seed": ("seed", seed),
            },
            epochs,
        )
    config = load_config(
        preset,
        model=model,
        strategy=strategy,
        lambda_=lambda_,
        head=head,
        negative_evidence=negative_evidence,
        ema_decay=ema_decay,
        grad_clip=grad_clip,
        select_from=select_from,
        cpu_amp=cpu_amp,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
    )
    if device is not None:  # a device this machine lacks is one line, before any work
        from aidnet.pipeline.device import resolve_device

        resolve_device(device)
    best = run_training(
        config,
        manifest,
        out,
        resume=resume,
        cache_dir=cache,
        workers=workers,
        device=device,
        splits=splits,
    )
    echo(f"best checkpoint: {best}")


def _check_resume_flags(out: Path, flags: dict[str, tuple[str, Any]], epochs: int | None) -> None:
    """A resumed run keeps its saved configuration: a flag that contradicts it is an error;
    ``--epochs`` extends (or shortens) the run and is written to its config.yaml."""
    import dataclasses

    from aidnet.config import read_saved_config, save_config

    path = out / "config.yaml"
    if not path.exists():
        return
    saved = read_saved_config(path)
    for flag, (field, value) in flags.items():
        if value is not None and getattr(saved, field) != value:
            raise AidnetError(
                f"{out}: this run was started with {flag} {getattr(saved, field)}, not {value}; "
                f"drop {flag} to resume it, or start a new run in another --out"
            )
    if epochs is not None and epochs != saved.epochs:
        save_config(dataclasses.replace(saved, epochs=epochs), path)


@app.command
@friendly
def evaluate(
    checkpoint: list[Path] = option(
        REQUIRED, "--checkpoint", help="Run folder or checkpoint file; repeat it for an ensemble."
    ),
    manifest: Path = option(REQUIRED, "--manifest", help="Cohort manifest CSV."),
    out: Path = option(REQUIRED, "--out", help="Folder for predictions.csv and metrics.json."),
    split: str = option("all", "--split", help="all, or test/val/train of the run's saved split."),
    cache: Path | None = option(None, "--cache", help="Preprocessed-scan cache folder."),
    bf16: bool = option(
        False,
        "--bf16",
        help="Run the networks in bfloat16 autocast: about 2x faster where the CPU has native "
        "bfloat16.",
    ),
    no_localise: bool = option(
        False,
        "--no-localise",
        help="Skip scoring the heat maps against the manifest's label maps (no localisation.csv); "
        "for a large model that step takes far longer than the predictions.",
    ),
    device: str | None = option(
        None, "--device", help="cpu, cuda, cuda:1 …; default: the GPU when there is one."
    ),
    workers: int = option(
        1,
        "--workers",
        min=1,
        help="Processes preprocessing the scans not yet in the cache, and scoring the heat maps "
        "on the CPU while the networks run.",
    ),
) -> None:
    """Predict every labelled scan of a manifest and write predictions and metrics."""
    from aidnet.pipeline import evaluate_run

    metrics = evaluate_run(
        [find_run(c) for c in checkpoint],
        manifest,
        out,
        split=split,
        cache_dir=cache,
        bf16=bf16,
        localise=not no_localise,
        device=device,
        workers=workers,
    )
    echo(_metrics_line(metrics))
    echo(f"wrote {out / 'predictions.csv'} and {out / 'metrics.json'}")


@app.command
@friendly
def predict(
    checkpoint: list[Path] | None = option(
        None,
        "--checkpoint",
        help="Run folder or checkpoint file; repeat it for an ensemble. Default: the shipped "
        "model, trained on synthetic scans only (docs/model-card.md).",
    ),
    scan: Path = argument(REQUIRED, help="CT image: DICOM folder, NIfTI, NRRD or MHA."),
    rescan: Path | None = argument(None, help="Optional rescan of the same person."),
    out: Path = option(REQUIRED, "--out", help="Folder for prediction.json."),
    device: str | None = option(
        None, "--device", help="cpu, cuda, cuda:1 …; default: the GPU when there is one."
    ),
    workers: int = option(
        1, "--workers", min=1, help="Processes reading and preprocessing the scan and rescan."
    ),
) -> None:
    """P(CAC) and Agatston class of one scan, or of a scan-rescan pair (averaged)."""
    from aidnet.pipeline.predict import predict_scans

    scans = [scan] if rescan is None else [scan, rescan]
    checkpoints = [find_run(c) for c in checkpoint] if checkpoint else [_default_model()]
    result = predict_scans(checkpoints, scans, out, device=device, workers=workers)
    line = (
        f"P(CAC) = {result['p_cac']:.3f}, predicted class {result['predicted_label']} "
        f"({result['model']})"
    )
    if result["disagreement"]:
        classes = ", ".join(s["predicted_label"] for s in result["scans"])
        line += f"; note: scan and rescan disagree ({classes})"
    echo(line)
    echo(f"wrote {out / 'prediction.json'}")


@app.command
@friendly
def explain(
    checkpoint: list[Path] | None = option(
        None,
        "--checkpoint",
        help="Run folder or checkpoint file; repeat it for an ensemble (maps averaged). Default: "
        "the shipped model, trained on synthetic scans only (docs/model-card.md).",
    ),
    manifest: Path = option(REQUIRED, "--manifest", help="Cohort manifest CSV."),
    out: Path = option(REQUIRED, "--out", help="Folder for heat maps and PNG overlays."),
    limit: int | None = option(None, "--limit", min=1, help="At most this many scans."),
    cache: Path | None = option(None, "--cache", help="Preprocessed-scan cache folder."),
    device: str | None = option(
        None, "--device", help="cpu, cuda, cuda:1 …; default: the GPU when there is one."
    ),
    workers: int = option(
        1,
        "--workers",
        min=1,
        help="Processes preprocessing the scans not yet in the cache, and writing the maps' "
        "files while the networks run.",
    ),
) -> None:
    """Grad-CAM (and SAG attention) heat maps on each scan's own grid, as NIfTI and PNG."""
    from aidnet.pipeline import explain_manifest

    written = explain_manifest(
        [find_run(c) for c in checkpoint] if checkpoint else _default_model(),
        manifest,
        out,
        limit=limit,
        cache_dir=cache,
        device=device,
        workers=workers,
    )
    echo(f"wrote heat maps for {len(written)} scans to {out}")


@app.command
@friendly
def demo(
    out: Path = option(Path("runs/demo"), "--out", help="Folder for everything."),
    subjects: int = option(120, "--subjects", min=10, help="Phantom subjects."),
    preset: str = option(
        DEFAULT_PRESET, "--preset", help="tiny, demo, paper, full or a YAML file."
    ),
    seed: int = option(0, "--seed"),
) -> None:
    """The whole job on a synthetic cohort: phantom, train, evaluate, explain, report."""
    from aidnet.pipeline import run_demo

    metrics = run_demo(out, subjects=subjects, preset=preset, seed=seed)
    echo(_metrics_line(metrics))
    echo(f"report: {out / 'report.html'}")


@app.command
@friendly
def experiment(
    manifest: Path = option(REQUIRED, "--manifest", help="Cohort manifest CSV."),
    out: Path = option(REQUIRED, "--out", help="Folder for every row, the table and report."),
    preset: str = option(
        DEFAULT_PRESET, "--preset", help="tiny, demo, paper, full or a YAML file."
    ),
    rows: str | None = option(
        None,
        "--rows",
        help="Comma-separated rows (e.g. idnet-s1,aidnet-l0.001) or model groups; default all 10.",
    ),
    epochs: int | None = option(None, "--epochs", min=1),
    workers: int = option(1, "--workers", min=1, help="Preprocessing processes."),
    device: str | None = option(
        None, "--device", help="cpu, cuda, cuda:1 …; default: the GPU when there is one."
    ),
) -> None:
    """The paper's comparison: 5 models x 2 strategies on one subject split, DeLong tests,
    ROC overlay, confusion matrices, report.html (resumable per row)."""
    from aidnet.pipeline.experiment import run_experiment

    names = [n.strip() for n in rows.split(",") if n.strip()] if rows else None
    run_experiment(manifest, preset, out, rows=names, epochs=epochs, workers=workers, device=device)
    echo(f"report: {out / 'report.html'}")


@app.command
@friendly
def lungs(
    image: Path = argument(REQUIRED, help="CT image: DICOM folder, NIfTI, NRRD or MHA."),
    out: Path = option(REQUIRED, "--out", help="Lung mask to write (.nii.gz or .nii)."),
) -> None:
    """Right (1) and left (2) lung mask of a chest CT, on the input's own grid and affine."""
    import numpy as np

    from aidnet.io.read import read_volume

    if not out.name.endswith((".nii.gz", ".nii")):
        raise AidnetError(f"{out}: the mask is written as NIfTI; give a .nii.gz or .nii name")
    # scipy (the segmentation) loads while the scan is read and decompressed
    _import_in_background("aidnet.lung.segment")
    volume = read_volume(image)
    from aidnet.io.nifti import write_nifti
    from aidnet.lung import segment_lungs

    try:
        mask = segment_lungs(volume)
    except AidnetError as exc:
        if str(image) in str(exc):
            raise
        raise AidnetError(f"{image}: {exc}") from None
    write_nifti(*volume.to_source(mask), out)
    litres = [
        float(np.count_nonzero(mask == label)) * float(np.prod(volume.spacing)) / 1e6
        for label in (1, 2)
    ]
    echo(f"wrote {out} (right lung {litres[0]:.2f} L, left lung {litres[1]:.2f} L)")
    _EXIT_AT_ONCE.add("lungs")


def _import_in_background(*modules: str) -> None:
    """Import ``modules`` in a thread, overlapping their start-up with the main thread's I/O.

    The readers (SimpleITK, zlib) release the GIL, so the imports cost little wall time; an
    import the main thread reaches first simply waits for the thread's (Python's module locks).
    A failure is left to the main thread's own import, where it is reported as usual.
    """
    import importlib
    import threading

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the main thread's import reports it
                return

    threading.Thread(target=load, name="aidnet-imports").start()


def _default_model() -> Path:
    """The shipped default model, with a one-line note on what it is."""
    from aidnet.weights import default_checkpoint

    path = default_checkpoint()
    logging.getLogger("aidnet").warning(
        "no --checkpoint: using the default model, trained on synthetic scans only "
        "(docs/model-card.md); not a clinical device"
    )
    return path


#: how deep below a --checkpoint folder runs are looked for (an experiment's: rows/<row>/run)
RUN_SEARCH_DEPTH = 3


def find_run(path: Path) -> Path:
    """What ``--checkpoint PATH`` names: a checkpoint file or a run folder (one with best.pt) as
    it is; a folder that holds one run further down (``make demo``'s runs/demo holds run/) →
    that run, with a note. Several runs or none is one error line saying what was looked for.
    A path that does not exist is left to the command (it says so in its own words)."""
    if not path.is_dir() or (path / "best.pt").is_file():
        return path
    for depth in range(1, RUN_SEARCH_DEPTH + 1):
        pattern = "/".join(["*"] * depth + ["best.pt"])
        runs = sorted(p.parent for p in path.glob(pattern) if p.is_file())
        if len(runs) == 1:
            logging.getLogger("aidnet").warning(
                "--checkpoint %s: using the run in %s", path, runs[0]
            )
            return runs[0]
        if runs:
            shown = ", ".join(str(r) for r in runs[:3]) + (", …" if len(runs) > 3 else "")
            raise AidnetError(
                f"{path}: holds {len(runs)} runs ({shown}); give one of them as --checkpoint"
            )
    unfinished = " (last.pt is there: the run has not written best.pt yet)"
    raise AidnetError(
        f"{path}: no checkpoint: looked for best.pt in it and in its folders up to "
        f"{RUN_SEARCH_DEPTH} levels down"
        f"{unfinished if (path / 'last.pt').is_file() else ''}; give a run folder "
        "(the --out of aidnet train) or a .pt file"
    )


def _metrics_line(metrics: dict) -> str:
    auc = metrics.get("auc")
    ci = metrics.get("auc_ci95") or [None, None]
    auc_text = "n/a" if auc is None else f"{auc:.3f}"
    if auc is not None and ci[0] is not None:
        auc_text += f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})"
    accuracy = metrics.get("accuracy")
    acc_text = "n/a" if accuracy is None else f"{accuracy:.3f}"
    return f"test AUC {auc_text}, accuracy {acc_text}, n={metrics.get('n')}"


def main() -> None:
    import os
    import sys

    # numpy and scipy bring two OpenBLAS thread pools that no aidnet step uses (torch has its
    # own); starting them, and joining them at exit, costs every process and worker time
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from aidnet.allocator import keep_freed_memory

    keep_freed_memory()  # no page faults for every large buffer of every step (allocator.py)
    _EXIT_AT_ONCE.clear()
    status = run(sys.argv[1:])
    if _EXIT_AT_ONCE and status == 0:
        _exit_now()
    sys.exit(status)


#: commands that, once they succeed, have written all their output atomically and hold no
#: worker, file or thread that needs the interpreter's orderly shutdown (a short command's
#: shutdown, tearing down every imported library, is a noticeable share of its time)
_EXIT_AT_ONCE: set[str] = set()


def _exit_now() -> None:
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
