"""predictions.csv (with its full-precision twin predictions.json) and metrics.json, written
atomically."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aidnet.atomic import atomic_path
from aidnet.evaluation.metrics import called_class

COLUMNS = ["subject", "visit", "p_cac", "p_class0", "p_class1", "p_class2", "predicted", "label"]


def class_columns(probs: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """``p_cac``, ``p_class0..2`` (0 where the model has 2 classes) and the called class of one
    scan's class probabilities (P(CAC) = P(1) + P(2) for 3 classes, paper's strategy 2; the
    call is :func:`aidnet.evaluation.metrics.called_class`, which agrees with the 2×2)."""
    values = [float(v) for v in probs]
    padded = values + [0.0] * (3 - len(values))
    return {
        "p_cac": float(np.sum(values[1:])),
        "p_class0": padded[0],
        "p_class1": padded[1],
        "p_class2": padded[2],
        "predicted": called_class(values),
    }


#: columns of a model read with the noise ceiling: the reading and the smoothing (Noise.to_dict)
NOISE_COLUMNS = ("noise_hu", "smoothed_mm")


def noise_columns(cache: Path) -> dict[str, Any]:
    """``noise_hu`` and ``smoothed_mm`` of one scan as its cache file holds them; blank where
    the file has no reading (written before it kept one, or too little soft tissue seen)."""
    from aidnet.data.cache_file import cached_noise

    noise = cached_noise(cache) or {}
    return {k: "" if noise.get(k) is None else noise[k] for k in NOISE_COLUMNS}


def _atomic_text(path: Path, write) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        write(fh)


PROBABILITIES = ("p_cac", "p_class0", "p_class1", "p_class2")


def full_precision_path(csv_path: Path) -> Path:
    """``predictions.json`` beside ``predictions.csv``."""
    return csv_path.with_suffix(".json")


def write_predictions_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """DESIGN.md columns first, then any pass-through manifest columns; probabilities to 6
    decimals. The DESIGN.md columns also go, at full precision, to :func:`full_precision_path`
    (written first): statistics are computed from that, not from the rounded CSV, where
    confident models' probabilities tie at 1.000000 or 0.000000."""
    full = [{k: row.get(k, "") for k in COLUMNS} for row in rows]
    _atomic_text(full_precision_path(path), lambda fh: json.dump(_json_safe(full), fh))
    extras: list[str] = []
    for row in rows:
        extras.extend(k for k in row if k not in COLUMNS and k not in extras)

    def write(fh) -> None:
        writer = csv.DictWriter(
            fh, fieldnames=COLUMNS + extras, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        for row in rows:
            out = dict(row)
            for key in PROBABILITIES:
                if isinstance(out.get(key), float):
                    out[key] = f"{out[key]:.6f}"
            writer.writerow(out)

    _atomic_text(path, write)


def read_predictions(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The rows of ``predictions.csv`` (DESIGN.md columns) with their probabilities at full
    precision, and whether they are: the values come from :func:`full_precision_path` when it
    holds the same scans and, to 6 decimals, the same probabilities; otherwise (written before
    it existed) from the CSV itself."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [{k: r[k] for k in COLUMNS} for r in csv.DictReader(fh)]
    try:
        full = json.loads(full_precision_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        full = None
    if isinstance(full, list) and _same_predictions(rows, full):
        for r, f in zip(rows, full, strict=True):
            r.update({k: float(f[k]) for k in PROBABILITIES})
        return rows, True
    for r in rows:
        r.update({k: float(r[k]) for k in PROBABILITIES})
    return rows, False


def _same_predictions(rows: list[dict[str, Any]], full: list[Any]) -> bool:
    if len(full) != len(rows):
        return False
    for r, f in zip(rows, full, strict=True):
        if not isinstance(f, dict) or [str(f.get("subject")), str(f.get("visit"))] != [
            r["subject"],
            r["visit"],
        ]:
            return False
        for key in PROBABILITIES:
            if not isinstance(f.get(key), float | int) or f"{f[key]:.6f}" != r[key]:
                return False
    return True


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


def write_metrics_json(path: Path, metrics: dict[str, Any]) -> None:
    """JSON without NaN tokens (null instead)."""
    _atomic_text(path, lambda fh: json.dump(_json_safe(metrics), fh, indent=2, allow_nan=False))
