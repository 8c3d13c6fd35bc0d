"""One scan's heat maps scored against its label map (a manifest's ``label_path`` column):
the rows of ``localisation.csv`` and their summary, shared by ``evaluate`` and ``explain``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from aidnet.data.cache import CachedScan
from aidnet.data.datasets import Item
from aidnet.data.manifest import ScanRecord
from aidnet.inference import Trained
from aidnet.io.volume import Volume
from aidnet.preprocess.geometry import CropGeometry

LABEL_COLUMN = "label_path"
R = TypeVar("R")


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


def localise_item(trained: Trained | list[Trained], item: Item, base: Path) -> list[dict]:
    """Score one scan's maps against its label map; [] without coronary calcium labels. For a
    seed ensemble (a list) its averaged maps (:func:`aidnet.explain.maps.ensemble_maps`), with
    the first member's Grad-CAM grid for the single-cell reference."""
    from aidnet.data.cache import load_cached

    cached = load_cached(item.cache)
    geometry = CropGeometry.from_dict(cached.geometry)
    labels = coronary_labels(item.record, base, geometry)
    if labels is None:
        return []
    return score_network_maps(network_maps_of(trained, item, cached.image), base, labels)


@dataclass(frozen=True)
class NetworkMaps:
    """What the networks give for one scan, on their input grid (small, so it travels to a
    worker process): each member's maps, whether its Grad-CAM map is kept on the calcium, and
    the first member's Grad-CAM grid."""

    item: Item
    maps: list[dict[str, np.ndarray]]
    map_on_calcium: list[bool]
    grid: tuple[int, int, int]


def network_maps_of(trained: Trained | list[Trained], item: Item, image: np.ndarray) -> NetworkMaps:
    """The network half of :func:`localise_item` (on the models' device)."""
    from aidnet.explain.gradcam import feature_grid, network_maps
    from aidnet.explain.maps import as_members

    members = as_members(trained)
    inputs = [torch.from_numpy(image)[None].to(member.device) for member in members]
    maps = [network_maps(m.model, x) for m, x in zip(members, inputs, strict=True)]
    flags = [bool(member.model.map_on_calcium) for member in members]
    grid = feature_grid(members[0].model, inputs[0])
    return NetworkMaps(item, maps, flags, grid)


def score_network_maps(
    net: NetworkMaps, base: Path, labels: np.ndarray | None = None
) -> list[dict]:
    """The CPU half of :func:`localise_item`: the maps on the scan's own grid, kept on its
    calcium candidates, averaged over the members and scored against the label map (read
    here unless given); [] without coronary calcium labels. Runs in any process."""
    from aidnet.data.cache import load_cached
    from aidnet.io.read import read_volume

    cached = load_cached(net.item.cache)
    geometry = CropGeometry.from_dict(cached.geometry)
    if labels is None:
        labels = coronary_labels(net.item.record, base, geometry)
        if labels is None:
            return []
    volume = None if cached.calcium is not None else read_volume(net.item.record.path)
    maps = maps_of_scan(net, cached, geometry, volume)
    return localisation_rows(net.item.record, maps, labels, geometry, net.grid)


def maps_of_scan(
    net: NetworkMaps, cached: CachedScan, geometry: CropGeometry, volume: Volume | None
) -> dict[str, np.ndarray]:
    """The networks' maps of one scan on its own grid, kept on its calcium candidates (from
    the cache file, or recomputed from ``volume``) and averaged over the members."""
    from aidnet.explain.maps import average_maps, maps_on_original, scan_calcium

    calcium = scan_calcium(cached, geometry, volume)
    return average_maps(
        [
            maps_on_original(m, geometry, calcium, on_calcium)
            for m, on_calcium in zip(net.maps, net.map_on_calcium, strict=True)
        ]
    )


def has_coronary_labels(job: tuple[Item, Path]) -> bool:
    """Whether a scan's label map holds coronary calcium (runs in any process)."""
    from aidnet.data.cache import load_cached

    item, base = job
    geometry = CropGeometry.from_dict(load_cached(item.cache).geometry)
    return coronary_labels(item.record, base, geometry) is not None


def _score_job(job: tuple[NetworkMaps, Path]) -> list[dict]:
    net, base = job
    return score_network_maps(net, base)


def localise_items(
    trained: Trained | list[Trained], items: list[Item], base: Path, workers: int = 1
) -> Iterator[tuple[Item, list[dict]]]:
    """(item, :func:`localise_item` rows) for every item, in completion order; with
    ``workers`` > 1 as :func:`maps_then_cpu` runs it, the rows the same either way."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield item, localise_item(trained, item, base)
        return
    yield from maps_then_cpu(
        trained, items, _score_job, base, workers, wanted=has_coronary_labels, unwanted=[]
    )


def maps_then_cpu(
    trained: Trained | list[Trained],
    items: list[Item],
    cpu_job: Callable[[tuple[NetworkMaps, Any]], R],
    extra: Any,
    workers: int,
    wanted: Callable[[tuple[Item, Any]], bool] | None = None,
    unwanted: Any = None,
) -> Iterator[tuple[Item, R]]:
    """(item, ``cpu_job((maps, extra))``) for every item, in completion order, where ``maps``
    are the item's :class:`NetworkMaps`.

    This process runs the networks on their device, one scan after another, and hands each
    scan's maps to a pool of ``workers`` processes as soon as they are made: there the work on
    the CPU (maps on the scan's full grid, files, scores) runs while the networks make the
    next scan's. With ``wanted`` (run in the pool first, on ``(item, extra)``) an item it
    refuses gets ``unwanted`` and no network pass. The first error raised in a worker stops
    the run (pending work cancelled, workers ended) and is raised here."""
    from concurrent.futures import FIRST_COMPLETED, Future, as_completed, wait

    from aidnet.data.cache import load_cached
    from aidnet.data.pool import process_pool

    with process_pool(workers) as pool:
        checks = [pool.submit(wanted, (item, extra)) if wanted else None for item in items]
        pending: dict[Future, Item] = {}
        for item, check in zip(items, checks, strict=True):
            if check is not None and not _result(check, item):
                yield item, unwanted
                continue
            net = network_maps_of(trained, item, load_cached(item.cache).image)
            pending[pool.submit(cpu_job, (net, extra))] = item
            done, _ = wait(pending, timeout=0, return_when=FIRST_COMPLETED)
            for future in done:
                item_done = pending.pop(future)
                yield item_done, _result(future, item_done)
        for future in as_completed(list(pending)):
            item_done = pending.pop(future)
            yield item_done, _result(future, item_done)


def _result(future, item: Item):
    """A worker's result; a worker that died (killed, out of memory) is one clear error."""
    from concurrent.futures.process import BrokenProcessPool

    from aidnet.errors import AidnetError

    try:
        return future.result()
    except BrokenProcessPool:
        raise AidnetError(
            f"{item.record.path}: a worker process stopped (killed, or out of memory?) while "
            "working on this scan; finished scans are kept: re-run, with fewer --workers"
        ) from None


def localisation_summary(rows: list[dict]) -> dict:
    """``metrics["localisation"]``: one summary per kind of map (empty without rows)."""
    from aidnet.explain.localisation import summarise

    names = list(dict.fromkeys(r["map"] for r in rows))
    return {name: summarise([r["score"] for r in rows if r["map"] == name]) for name in names}
