"""``aidnet evaluate``: raw images in, DESIGN.md outputs out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aidnet.pipeline.common import (
    cached_items,
    ensemble_name,
    load_ensemble,
    raise_if_failed,
    select_ensemble_records,
)

LOCALISATION_LOG = ".localisation-progress.jsonl"


def evaluate_run(
    checkpoint: Path | list[Path],
    manifest: Path,
    out: Path,
    *,
    split: str = "all",
    cache_dir: Path | None = None,
    n_boot: int = 1000,
    localise: bool = True,
    bf16: bool = False,
    device: str | None = None,
    workers: int = 1,
) -> dict:
    """Write predictions.csv, metrics.json, roc.png and confusion PNGs; return the metrics.

    The localisation is resumable: each scored scan is logged in
    ``out/.localisation-progress.jsonl`` (see :mod:`aidnet.pipeline.resume`) until the outputs
    are written with no scan failed.

    With ``localise`` and label maps in the manifest (``label_path``), the Grad-CAM and SAG
    maps of every scan whose label map holds coronary calcium are scored (pointing game, mass
    shares; :mod:`aidnet.explain.localisation`): ``localisation.csv`` per scan and map, and
    ``metrics["localisation"][map]`` summaries.

    The networks and the heat maps run on ``device`` (``cpu``, ``cuda``, ``cuda:1`` …; None: the
    GPU when there is one, as ``aidnet train``; see :mod:`aidnet.pipeline.device`). With ``bf16``
    the networks predict under bfloat16 autocast where the CPU has it natively; on a GPU they do
    so when they were trained with mixed precision (``metrics["precision"]`` says which); the
    heat maps are computed in float32 either way.

    Scans not yet in the cache are preprocessed in ``workers`` processes, and the
    localisation's work on the CPU (each scan's maps on its full grid, the scores) runs in as
    many while the networks make the next scan's maps (:func:`aidnet.explain.scoring.
    localise_items`; the same scores as with one); without
    ``cache_dir`` the cache the run's training filled is used
    (:func:`aidnet.pipeline.common.default_cache_dir`).

    Several checkpoints (a list) are an ensemble: their class probabilities are averaged (see
    :func:`aidnet.pipeline.common.load_ensemble`), and so are their heat maps, as ``aidnet
    predict`` does (:func:`aidnet.explain.maps.ensemble_maps`).
    """
    from aidnet.pipeline.device import autocast_dtype, precision_name, resolve_device

    dev = resolve_device(device)  # a bad --device fails first

    from tqdm import tqdm

    from aidnet.evaluation.metrics import binary_metrics, multiclass_confusion
    from aidnet.evaluation.plots import plot_confusion, plot_roc
    from aidnet.evaluation.predictions import (
        class_columns,
        noise_columns,
        write_metrics_json,
        write_predictions_csv,
    )
    from aidnet.explain.localisation import write_localisation_csv
    from aidnet.explain.scoring import localisation_summary, localise_items
    from aidnet.inference import PREDICT_BATCH, predict_items
    from aidnet.pipeline.resume import ScanLog, ensemble_context, rows_from_json, rows_to_json
    from aidnet.training.precision import check_bf16

    members = load_ensemble(checkpoint, dev)
    # on a CPU: float32, with a warning, where it lacks bfloat16
    amps = [autocast_dtype(dev, m.amp, bf16) for m in members]
    for m, amp in zip(members, amps, strict=True):  # oneDNN's wrong convolutions in float32
        if amp is not None and dev.type == "cpu":
            check_bf16(m.model, (PREDICT_BATCH, 2, *m.input_size), "--bf16", backward=False)
    trained = members[0]
    records = select_ensemble_records(manifest, members, split)
    out.mkdir(parents=True, exist_ok=True)
    items, failures = cached_items(records, trained, cache_dir, out, workers=workers)
    # localisation first: a label map that does not fit its scan stops before any output
    context = ensemble_context("localise", [m.path for m in members])
    log = ScanLog(out / LOCALISATION_LOG, context, manifest.parent)
    rows_of: dict[str, list[dict]] = {}
    todo = []
    for item in items if localise else []:
        logged = log.get(item)
        if logged is None:
            todo.append(item)
        else:
            rows_of[item.record.key] = rows_from_json(logged)
    with tqdm(
        total=len(rows_of) + len(todo),
        initial=len(rows_of),
        desc="localise",
        unit="scan",
        disable=None if localise else True,
    ) as progress:
        for item, rows in localise_items(members, todo, manifest.parent, workers=workers):
            log.add(item, rows_to_json(rows))
            rows_of[item.record.key] = rows
            progress.update()
    loc_rows = [row for item in items for row in rows_of.get(item.record.key, [])]
    probs = np.mean(
        [
            predict_items(
                m.model, items, trained.num_classes, dev, desc=f"predict {i + 1}", amp=amp
            )
            for i, (m, amp) in enumerate(zip(members, amps, strict=True))
        ],
        axis=0,
    )
    rows = []
    for item, p in zip(items, probs, strict=True):
        label = item.record.label
        if label is not None and trained.num_classes == 2:
            label = int(label > 0)
        rows.append(
            {
                "subject": item.record.subject,
                "visit": item.record.visit,
                **class_columns(p),
                "label": "" if label is None else int(label),
                **(noise_columns(item.cache) if trained.preprocess.noise_ceiling else {}),
                **item.record.extras,
            }
        )
    write_predictions_csv(out / "predictions.csv", rows)
    labelled = [r for r in rows if r["label"] != ""]
    y = np.array([int(int(r["label"]) > 0) for r in labelled])
    p_cac = np.array([r["p_cac"] for r in labelled])
    subjects = np.array([r["subject"] for r in labelled])
    metrics: dict = (
        binary_metrics(y, p_cac, n_boot=n_boot, groups=subjects)
        if labelled
        else {"n": 0, "auc": None}
    )
    paths = [str(m.path) for m in members]
    metrics["checkpoint"] = paths[0] if len(paths) == 1 else paths
    metrics["model"] = ensemble_name(members)
    metrics["split"] = split
    precisions = sorted({precision_name(amp) for amp in amps})
    metrics["precision"] = precisions[0] if len(precisions) == 1 else precisions
    metrics["device"] = str(dev)
    metrics["n_failed"] = len(failures)
    if labelled:
        plot_roc(
            {metrics["model"]: (metrics["roc"]["fpr"], metrics["roc"]["tpr"], metrics["auc"])},
            out / "roc.png",
        )
        plot_confusion(
            metrics["confusion_2x2"],
            ["no CAC", "CAC"],
            out / "confusion_2x2.png",
            "CAC detection (2x2)",
        )
        if trained.num_classes == 3:
            truth = [int(r["label"]) for r in labelled]
            predicted = [int(r["predicted"]) for r in labelled]
            metrics["confusion_3x3"] = multiclass_confusion(truth, predicted, num_classes=3)
            plot_confusion(
                metrics["confusion_3x3"],
                ["0", "1-399", ">=400"],
                out / "confusion_3x3.png",
                "Agatston class (3x3)",
            )
    if loc_rows:
        write_localisation_csv(out / "localisation.csv", loc_rows)
        metrics["localisation"] = localisation_summary(loc_rows)
    else:  # no stale scores from an earlier evaluation into the same folder
        (out / "localisation.csv").unlink(missing_ok=True)
    write_metrics_json(out / "metrics.json", metrics)
    if not failures:
        log.remove()
    raise_if_failed(failures, "evaluated")
    return metrics
