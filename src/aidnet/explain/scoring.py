"""One scan's heat maps scored against its label map (a manifest's ``label_path`` column):
the rows of ``localisation.csv`` and their summary, shared by ``evaluate`` and ``explain``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aidnet.data.datasets import Item
from aidnet.data.manifest import ScanRecord
from aidnet.inference import Trained
from aidnet.preprocess.geometry import CropGeometry

LABEL_COLUMN = "label_path"


def label_path_of(record: ScanRecord, base: Path) -> Path | None:
    """The record's ``label_path`` (relative to the manifest folder ``base``), if it has one."""
    text = record.extras.get(LABEL_COLUMN, "").strip()
    if not text:
        return None
    path = Path(text)
    return path if path.is_absolute() else base / path


def coronary_labels(record: ScanRecord, base: Path, geometry: CropGeometry) -> np.ndarray | None:
    """The record's label map on the original grid if it holds coronary calcium, else None."""
    from aidnet.explain.localisation import LABEL_CORONARY, load_label_map

    path = label_path_of(record, base)
    if path is None:
        return None
    labels = load_label_map(path, geometry.original_shape, geometry.affine, scan=record.key)
    return labels if bool((labels == LABEL_CORONARY).any()) else None


def localisation_rows(
    record: ScanRecord,
    maps: dict[str, np.ndarray],
    labels: np.ndarray,
    geometry: CropGeometry,
    grid: tuple[int, int, int] | None = None,
) -> list[dict]:
    """``localisation.csv`` rows of one scan's maps (scores kept under ``score``); with
    Grad-CAM's ``grid`` (see :func:`aidnet.explain.gradcam.feature_grid`) its score also says
    whether the best single cell of that grid would have hit."""
    from dataclasses import replace

    from aidnet.explain.gradcam import cell_peaks
    from aidnet.explain.localisation import best_cell_hit, csv_row, score_maps
    from aidnet.io.orient import spacing_of

    spacing = spacing_of(geometry.affine)
    scores = score_maps(maps, labels, spacing)
    if grid is not None and "gradcam" in scores:
        hit = best_cell_hit(cell_peaks(grid, geometry), labels, spacing)
        scores["gradcam"] = replace(scores["gradcam"], best_cell_hit=hit)
    return [
        {**csv_row(record.subject, record.visit, name, score), "score": score}
        for name, score in scores.items()
    ]


def scored_rows(
    trained: Trained | list[Trained],
    image: np.ndarray,
    record: ScanRecord,
    maps: dict[str, np.ndarray],
    labels: np.ndarray,
    geometry: CropGeometry,
) -> list[dict]:
    """:func:`localisation_rows` with Grad-CAM's grid taken from the model on ``image`` (for a
    seed ensemble, its first member's)."""
    from aidnet.explain.gradcam import feature_grid
    from aidnet.explain.maps import as_members

    first = as_members(trained)[0]
    grid = feature_grid(first.model, torch.from_numpy(image)[None].to(first.device))
    return localisation_rows(record, maps, labels, geometry, grid)


def localise_item(trained: Trained | list[Trained], item: Item, base: Path) -> list[dict]:
    """Score one scan's maps against its label map; [] without coronary calcium labels. For a
    seed ensemble (a list) its averaged maps (:func:`aidnet.explain.maps.ensemble_maps`), with
    the first member's Grad-CAM grid for the single-cell reference."""
    from aidnet.data.cache import load_cached
    from aidnet.explain.maps import scan_maps
    from aidnet.io.read import read_volume

    cached = load_cached(item.cache)
    geometry = CropGeometry.from_dict(cached.geometry)
    labels = coronary_labels(item.record, base, geometry)
    if labels is None:
        return []
    volume = None if cached.calcium is not None else read_volume(item.record.path)
    maps = scan_maps(trained, cached, geometry, volume)
    return scored_rows(trained, cached.image, item.record, maps, labels, geometry)


def localisation_summary(rows: list[dict]) -> dict:
    """``metrics["localisation"]``: one summary per kind of map (empty without rows)."""
    from aidnet.explain.localisation import summarise

    names = list(dict.fromkeys(r["map"] for r in rows))
    return {name: summarise([r["score"] for r in rows if r["map"] == name]) for name in names}
