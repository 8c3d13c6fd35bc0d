"""``aidnet predict``: raw CT file(s) in, ``prediction.json`` and heat maps out.

One scan goes through one path of the network (both paths share their weights); with a rescan,
both go through and their class probabilities are averaged, and a disagreement between the two
scans' predicted classes is flagged (in a scan–rescan pair the calcium should not change).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aidnet.errors import AidnetError
from aidnet.io.volume import Volume
from aidnet.pipeline.common import Trained, ensemble_name, load_ensemble
from aidnet.preprocess.config import PreprocessConfig
from aidnet.preprocess.geometry import CropGeometry
from aidnet.preprocess.sample import Sample
from aidnet.training.checkpoint import file_sha256

CLASS_NAMES = {2: ["no CAC", "CAC"], 3: ["0", "1-399", ">=400"]}


@dataclass
class Explained:
    """One scan's class probabilities and heat maps (on the original canonical grid)."""

    probs: np.ndarray
    maps: dict[str, np.ndarray]
    geometry: CropGeometry
    volume: Volume


@dataclass(frozen=True)
class ScanJob:
    """Read and preprocess the scan ``path`` to the network input ``size`` (in any process)."""

    index: int
    path: Path
    config: PreprocessConfig


def prepare_scan(path: Path, config: PreprocessConfig) -> tuple[Volume, Sample]:
    """The scan read from ``path`` and its network input (a trained model's ``preprocess``);
    a problem is one AidnetError line that names the file."""
    from aidnet.io.read import read_volume
    from aidnet.preprocess import preprocess_volume

    volume = read_volume(path)
    try:
        return volume, preprocess_volume(volume, config)
    except AidnetError as exc:
        if str(path) in str(exc):
            raise
        raise AidnetError(f"{path}: {exc}") from None


def _run_scan_job(job: ScanJob) -> tuple[int, tuple[Volume, Sample] | BaseException]:
    try:
        return job.index, prepare_scan(job.path, job.config)
    except Exception as exc:  # raised in the caller's process, not lost in the pool's
        return job.index, exc


def _lost_scan_job(job: ScanJob, exc: BaseException) -> tuple[int, BaseException]:
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(exc, BrokenProcessPool):
        exc = AidnetError(f"{job.path}: a worker process died (out of memory?); re-run it")
    return job.index, exc


def prepare_scans(
    paths: list[Path], config: PreprocessConfig, workers: int = 1
) -> list[tuple[Volume, Sample]]:
    """:func:`prepare_scan` of each path, in ``workers`` processes (the cache layer's pool,
    :func:`aidnet.data.pool.run_unordered`), in the order given; the first problem is raised."""
    from aidnet.data.pool import run_unordered

    jobs = [ScanJob(i, Path(path), config) for i, path in enumerate(paths)]
    results: dict[int, tuple[Volume, Sample] | BaseException] = dict(
        run_unordered(_run_scan_job, jobs, workers, lost=_lost_scan_job)
    )
    for i in range(len(jobs)):
        result = results[i]
        if isinstance(result, BaseException):
            raise result
    return [results[i] for i in range(len(jobs))]  # type: ignore[misc]


def explain_prepared(members: list[Trained], volume: Volume, sample: Sample) -> Explained:
    """Classify one preprocessed scan, with its Grad-CAM (and SAG attention) map, each model on
    its own device; for an ensemble the class probabilities are averaged, and so is each heat
    map all members have, rescaled to a maximum of 1."""
    from aidnet.explain.maps import ensemble_maps
    from aidnet.inference import class_probs
    from aidnet.pipeline.device import autocast_dtype
    from aidnet.preprocess.sample import on_original_grid

    calcium = on_original_grid(sample.calcium, sample.geometry.crop_box, volume.shape)
    x = torch.from_numpy(sample.image)[None]
    probs = []
    for member in members:
        dev = member.device
        amp = autocast_dtype(dev, member.amp, bf16=False)  # CPUs: float32
        with (
            torch.no_grad(),
            torch.autocast(device_type=dev.type, dtype=amp, enabled=amp is not None),
        ):
            logits = member.model.forward_single(x.to(dev)).logits
        probs.append(class_probs(logits)[0].cpu().numpy().astype(np.float64))
    maps = ensemble_maps(members, sample.image, sample.geometry, calcium)
    return Explained(np.mean(probs, axis=0), maps, sample.geometry, volume)


def explain_scan(trained: Trained | list[Trained], path: Path) -> Explained:
    """Read, preprocess and classify one scan, with its Grad-CAM (and SAG attention) map.

    For several models (an ensemble, see :func:`aidnet.pipeline.common.load_ensemble`) the
    scan is read and preprocessed once (see :func:`explain_prepared`).
    """
    from aidnet.explain.maps import as_members

    members = as_members(trained)
    volume, sample = prepare_scan(path, members[0].preprocess)
    return explain_prepared(members, volume, sample)


def predict_scans(
    checkpoint: Path | list[Path],
    scans: list[Path],
    out: Path,
    *,
    device: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Predict one scan or a scan–rescan pair and write ``out/prediction.json``; several
    checkpoints are an ensemble (probabilities and heat maps averaged).

    The networks and heat maps run on ``device`` (see :mod:`aidnet.pipeline.device`); a scan
    and its rescan are read and preprocessed in ``workers`` processes."""
    from aidnet.evaluation.predictions import class_columns, write_metrics_json
    from aidnet.explain.maps import write_maps
    from aidnet.pipeline.device import resolve_device

    if not 1 <= len(scans) <= 2:
        raise AidnetError("give one scan, or a scan and its rescan")
    dev = resolve_device(device)
    members = load_ensemble(checkpoint, dev)
    trained = members[0]
    for scan in scans:
        if not scan.exists():
            raise AidnetError(f"{scan}: file not found")
    prepared = prepare_scans(scans, trained.preprocess, workers)  # all read before any write
    explained = [explain_prepared(members, volume, sample) for volume, sample in prepared]
    out.mkdir(parents=True, exist_ok=True)
    # file names say scan/rescan, never the input's name (it may hold a patient's name)
    heatmaps = [
        write_maps(e.maps, e.geometry, e.volume, out, key)
        for e, key in zip(explained, ("scan", "rescan"), strict=False)
    ]
    probs = [e.probs for e in explained]
    names = CLASS_NAMES[trained.num_classes]
    per_scan = []
    for scan, p, files in zip(scans, probs, heatmaps, strict=True):
        columns = class_columns(p)
        per_scan.append(
            {
                "input": str(scan),
                "heatmaps": {name: path.name for name, path in files.items()},
                "p_cac": columns["p_cac"],
                "class_probabilities": dict(zip(names, p.tolist(), strict=True)),
                "predicted_class": columns["predicted"],
                "predicted_label": names[columns["predicted"]],
            }
        )
    for entry, (_, sample) in zip(per_scan, prepared, strict=True):
        if sample.noise is not None:  # the model reads scans with its noise ceiling
            entry["noise"] = sample.noise.to_dict()
    mean = np.mean(probs, axis=0)
    combined = class_columns(mean)
    result: dict[str, Any] = {
        "p_cac": combined["p_cac"],
        "class_probabilities": dict(zip(names, mean.tolist(), strict=True)),
        "predicted_class": combined["predicted"],
        "predicted_label": names[combined["predicted"]],
        "cac": bool(combined["p_cac"] >= 0.5),
        "threshold": 0.5,
        "scans": per_scan,
        "disagreement": len({s["predicted_class"] for s in per_scan}) > 1,
        "model": ensemble_name(members),
        "strategy": 1 if trained.num_classes == 2 else 2,
    }
    paths = [m.path for m in members]
    if len(paths) == 1:
        result["checkpoint"] = str(paths[0])
        result["checkpoint_sha256"] = file_sha256(paths[0])
    else:
        result["checkpoint"] = [str(p) for p in paths]
        result["checkpoint_sha256"] = [file_sha256(p) for p in paths]
    write_metrics_json(out / "prediction.json", result)
    return result
