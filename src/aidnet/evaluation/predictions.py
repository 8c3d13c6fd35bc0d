"""predictions.csv and metrics.json, written atomically."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aidnet.atomic import atomic_path

COLUMNS = ["subject", "visit", "p_cac", "p_class0", "p_class1", "p_class2", "predicted", "label"]


def class_columns(probs: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """``p_cac``, ``p_class0..2`` (0 where the model has 2 classes) and the argmax class of one
    scan's class probabilities (P(CAC) = P(1) + P(2) for 3 classes, paper's strategy 2)."""
    values = [float(v) for v in probs]
    padded = values + [0.0] * (3 - len(values))
    return {
        "p_cac": float(sum(values[1:])),
        "p_class0": padded[0],
        "p_class1": padded[1],
        "p_class2": padded[2],
        "predicted": int(np.argmax(values)),
    }


def _atomic_text(path: Path, write) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        write(fh)


def write_predictions_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """DESIGN.md columns first, then any pass-through manifest columns."""
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
            for key in ("p_cac", "p_class0", "p_class1", "p_class2"):
                if isinstance(out.get(key), float):
                    out[key] = f"{out[key]:.6f}"
            writer.writerow(out)

    _atomic_text(path, write)


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
