"""``aidnet predict``: raw CT file(s) in, ``prediction.json`` and heat maps out.

One scan goes through one path of the network (both paths share their weights); with a rescan,
both go through and their class probabilities are averaged, and a disagreement between the two
scans' predicted classes is flagged (in a scan–rescan pair the calcium should not change).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aidnet.errors import AidnetError
from aidnet.io.volume import Volume
from aidnet.pipeline.common import Trained, ensemble_name, load_ensemble
from aidnet.preprocess.geometry import CropGeometry

CLASS_NAMES = {2: ["no CAC", "CAC"], 3: ["0", "1-399", ">=400"]}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Explained:
    """One scan's class probabilities and heat maps (on the original canonical grid)."""

    probs: np.ndarray
    maps: dict[str, np.ndarray]
    geometry: CropGeometry
    volume: Volume


def explain_scan(trained: Trained | list[Trained], path: Path) -> Explained:
    """Read, preprocess and classify one scan, with its Grad-CAM (and SAG attention) map.

    For several models (an ensemble, see :func:`aidnet.pipeline.common.load_ensemble`) the
    scan is read and preprocessed once; the class probabilities are averaged, and so is each
    heat map all members have, rescaled to a maximum of 1.
    """
    from aidnet.evaluation.metrics import class_probs
    from aidnet.explain.gradcam import normalise
    from aidnet.io.read import read_volume
    from aidnet.pipeline.explain import original_maps
    from aidnet.preprocess import PreprocessConfig, preprocess_volume
    from aidnet.preprocess.sample import on_original_grid

    members = trained if isinstance(trained, list) else [trained]
    volume = read_volume(path)
    try:
        sample = preprocess_volume(volume, PreprocessConfig(size=members[0].input_size))
    except AidnetError as exc:
        if str(path) in str(exc):
            raise
        raise AidnetError(f"{path}: {exc}") from None
    calcium = on_original_grid(sample.calcium, sample.geometry.crop_box, volume.shape)
    x = torch.from_numpy(sample.image)[None]
    probs, maps = [], []
    for member in members:
        with torch.no_grad():
            logits = member.model.forward_single(x).logits
        probs.append(class_probs(logits)[0].numpy().astype(np.float64))
        maps.append(original_maps(member, sample.image, sample.geometry, calcium))
    if len(members) == 1:
        return Explained(probs[0], maps[0], sample.geometry, volume)
    shared = [name for name in maps[0] if all(name in m for m in maps)]
    mean_maps = {name: normalise(np.mean([m[name] for m in maps], axis=0)) for name in shared}
    return Explained(np.mean(probs, axis=0), mean_maps, sample.geometry, volume)


def predict_scans(checkpoint: Path | list[Path], scans: list[Path], out: Path) -> dict[str, Any]:
    """Predict one scan or a scan–rescan pair and write ``out/prediction.json``; several
    checkpoints are an ensemble (probabilities and heat maps averaged)."""
    from aidnet.evaluation.predictions import class_columns, write_metrics_json
    from aidnet.pipeline.explain import write_maps

    if not 1 <= len(scans) <= 2:
        raise AidnetError("give one scan, or a scan and its rescan")
    members = load_ensemble(checkpoint)
    trained = members[0]
    for scan in scans:
        if not scan.exists():
            raise AidnetError(f"{scan}: file not found")
    explained = [explain_scan(members, scan) for scan in scans]  # all read before any write
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
