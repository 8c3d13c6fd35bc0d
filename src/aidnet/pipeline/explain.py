"""``aidnet explain``: heat maps on each scan's own grid and affine, plus PNG overlays.

Also the one path from a cached scan to its heat maps on the original grid, and their
localisation scores against a manifest's ``label_path`` annotations (used by ``evaluate``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aidnet.data.cache import CachedScan, load_cached
from aidnet.data.datasets import Item
from aidnet.data.manifest import ScanRecord
from aidnet.io.volume import Volume
from aidnet.pipeline.common import (
    Trained,
    cached_items,
    load_trained,
    on_device,
    raise_if_failed,
    select_records,
)
from aidnet.preprocess.geometry import CropGeometry

LABEL_COLUMN = "label_path"


def original_maps(
    trained: Trained,
    image: np.ndarray,
    geometry: CropGeometry,
    calcium: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The heat maps of one network input ``image`` (2×Z×Y×X) (see
    :func:`aidnet.explain.gradcam.network_maps`), mapped back through its
    :class:`CropGeometry` to the original canonical grid: float32 in [0, 1], high = important.

    With ``calcium`` (the scan's calcium candidates on that grid, see
    :func:`aidnet.preprocess.calcium_candidates`) the integrated gradients are kept on those voxels
    only, and the SAG map also comes as ``attention_calcium``, each rescaled to a maximum of 1.
    So is Grad-CAM when the model's map before global average pooling is itself kept on the
    calcium (AID-Net's calcium head): that map is the network's features times its calcium
    channel, and the calcium channel is these candidates resampled, so on the scan's grid the
    map belongs on them too. A network voxel spans several of the scan's (8 mm along z at the
    demo size), and this puts the peak on the calcium inside it rather than at its centre.
    """
    from aidnet.explain.gradcam import network_maps, normalise

    x = torch.from_numpy(image)[None].to(trained.device)
    maps = {
        name: geometry.to_original(net_map).astype(np.float32)
        for name, net_map in network_maps(trained.model, x).items()
    }
    if calcium is not None:
        if trained.model.map_on_calcium:
            maps["gradcam"] = normalise(maps["gradcam"] * calcium)
        maps["integrated_gradients"] = normalise(maps["integrated_gradients"] * calcium)
        if "attention" in maps:
            maps["attention_calcium"] = normalise(maps["attention"] * calcium)
    return maps


def scan_calcium(cached: CachedScan, geometry: CropGeometry, volume: Volume) -> np.ndarray:
    """The calcium candidates of a cached scan, recomputed on its original grid."""
    from aidnet.preprocess import calcium_candidates
    from aidnet.preprocess.config import config_from_dict

    config = config_from_dict(cached.config, geometry.network_shape)
    return calcium_candidates(volume, config)


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
    trained: Trained,
    image: np.ndarray,
    record: ScanRecord,
    maps: dict[str, np.ndarray],
    labels: np.ndarray,
    geometry: CropGeometry,
) -> list[dict]:
    """:func:`localisation_rows` with Grad-CAM's grid taken from the model on ``image``."""
    from aidnet.explain.gradcam import feature_grid

    grid = feature_grid(trained.model, torch.from_numpy(image)[None].to(trained.device))
    return localisation_rows(record, maps, labels, geometry, grid)


def localise_item(trained: Trained, item: Item, base: Path) -> list[dict]:
    """Score one scan's maps against its label map; [] without coronary calcium labels."""
    from aidnet.io.read import read_volume

    cached = load_cached(item.cache)
    geometry = CropGeometry.from_dict(cached.geometry)
    labels = coronary_labels(item.record, base, geometry)
    if labels is None:
        return []
    calcium = scan_calcium(cached, geometry, read_volume(item.record.path))
    maps = original_maps(trained, cached.image, geometry, calcium)
    return scored_rows(trained, cached.image, item.record, maps, labels, geometry)


def localisation_summary(rows: list[dict]) -> dict:
    """``metrics["localisation"]``: one summary per kind of map (empty without rows)."""
    from aidnet.explain.localisation import summarise

    names = list(dict.fromkeys(r["map"] for r in rows))
    return {name: summarise([r["score"] for r in rows if r["map"] == name]) for name in names}


def write_maps(
    maps: dict[str, np.ndarray], geometry: CropGeometry, volume: Volume, out: Path, key: str
) -> dict[str, Path]:
    """Each map (on the original canonical grid) as ``out/<key>_<name>.nii.gz`` on the input
    file's own grid and affine, and as ``out/<key>_<name>.png`` (slices through its peak)."""
    from aidnet.explain.overlay import save_overlay_png
    from aidnet.io.nifti import write_nifti

    written: dict[str, Path] = {}
    for name, original in maps.items():
        written[name] = write_nifti(*geometry.to_source(original), out / f"{key}_{name}.nii.gz")
        png = out / f"{key}_{name}.png"
        save_overlay_png(volume.array, original, volume.spacing, png, title=f"{key} — {name}")
        written[f"{name}_png"] = png
    return written


def explain_item(trained: Trained, item: Item, out: Path, base: Path | None = None) -> dict:
    """Grad-CAM (and attention) of one scan → NIfTI on the input's own grid and affine + PNG
    overlays; with ``base`` (the manifest folder) and a label map, also its localisation rows
    (under ``localisation``)."""
    from aidnet.io.read import read_volume

    cached = load_cached(item.cache)
    geometry = CropGeometry.from_dict(cached.geometry)
    volume = read_volume(item.record.path)
    maps = original_maps(trained, cached.image, geometry, scan_calcium(cached, geometry, volume))
    key = item.record.key
    written: dict = {"key": key, **write_maps(maps, geometry, volume, out, key)}
    labels = None if base is None else coronary_labels(item.record, base, geometry)
    if labels is not None:
        written["localisation"] = scored_rows(
            trained, cached.image, item.record, maps, labels, geometry
        )
    return written


def explain_manifest(
    checkpoint: Path,
    manifest: Path,
    out: Path,
    *,
    limit: int | None = None,
    cache_dir: Path | None = None,
    keys: list[str] | None = None,
    split: str = "all",
    device: str | None = None,
    workers: int = 1,
) -> list[dict]:
    """Explain the manifest's scans (optionally only ``keys``, at most ``limit``); with label
    maps in the manifest (``label_path``) also ``out/localisation.csv``.

    The network and its heat maps run on ``device`` (see :func:`aidnet.pipeline.evaluate_run`);
    scans not yet in the cache (without ``cache_dir``: the one the run's training filled) are
    preprocessed in ``workers`` processes.

    Resumable: each finished scan is logged in ``out/.explain-progress.jsonl`` (see
    :mod:`aidnet.pipeline.resume`); run again after a kill, the scans whose maps are all there
    are not computed again. The log is removed when every scan succeeded.
    """
    from tqdm import tqdm

    from aidnet.explain.localisation import write_localisation_csv
    from aidnet.pipeline.device import resolve_device
    from aidnet.pipeline.resume import ScanLog, job_context

    dev = resolve_device(device)  # a bad --device fails before the model loads
    trained = on_device(load_trained(checkpoint), dev)
    records = select_records(manifest, trained, split)
    if keys is not None:
        wanted = set(keys)
        records = [r for r in records if r.key in wanted]
    if limit is not None:
        records = records[:limit]
    out.mkdir(parents=True, exist_ok=True)
    items, failures = cached_items(records, trained, cache_dir, out, workers=workers)
    log = ScanLog(out / EXPLAIN_LOG, job_context("explain", trained.path), manifest.parent)
    written = []
    for item in tqdm(items, desc="explain", unit="scan", disable=None):
        entry = _from_log(log.get(item))
        if entry is None:
            entry = explain_item(trained, item, out, base=manifest.parent)
            log.add(item, _to_log(entry))
        written.append(entry)
    rows = [row for w in written for row in w.get("localisation", [])]
    if rows:
        write_localisation_csv(out / "localisation.csv", rows)
    else:  # no stale scores from an earlier run into the same folder
        (out / "localisation.csv").unlink(missing_ok=True)
    if not failures:
        log.remove()
    raise_if_failed(failures, "explained")
    return written


EXPLAIN_LOG = ".explain-progress.jsonl"


def _to_log(entry: dict) -> dict:
    from aidnet.pipeline.resume import rows_to_json

    out: dict = {k: str(v) for k, v in entry.items() if k != "localisation"}
    if "localisation" in entry:
        out["localisation"] = rows_to_json(entry["localisation"])
    return out


def _from_log(value: dict | None) -> dict | None:
    """A logged :func:`explain_item` result, or None if any of its files has gone."""
    from aidnet.pipeline.resume import rows_from_json

    if value is None:
        return None
    entry: dict = {"key": value["key"]}
    for name, path in value.items():
        if name in ("key", "localisation"):
            continue
        if not Path(path).is_file():
            return None
        entry[name] = Path(path)
    if "localisation" in value:
        entry["localisation"] = rows_from_json(value["localisation"])
    return entry
