"""``aidnet explain``: heat maps on each scan's own grid and affine, plus PNG overlays, and
their localisation scores against a manifest's ``label_path`` annotations; resumable.

The path from a cached scan to its maps and their scores is shared with ``evaluate`` and
``predict`` and lives a layer down (:mod:`aidnet.explain.maps`, :mod:`aidnet.explain.scoring`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from aidnet.data.cache import load_cached
from aidnet.data.datasets import Item
from aidnet.explain.maps import write_maps
from aidnet.explain.scoring import (
    NetworkMaps,
    coronary_labels,
    localisation_rows,
    maps_of_scan,
    maps_then_cpu,
    network_maps_of,
)
from aidnet.pipeline.common import (
    Trained,
    cached_items,
    load_ensemble,
    raise_if_failed,
    select_ensemble_records,
)
from aidnet.preprocess.geometry import CropGeometry


def explain_item(
    trained: Trained | list[Trained], item: Item, out: Path, base: Path | None = None
) -> dict:
    """Grad-CAM (and attention) of one scan → NIfTI on the input's own grid and affine + PNG
    overlays; with ``base`` (the manifest folder) and a label map, also its localisation rows
    (under ``localisation``). For a seed ensemble (a list) its members' averaged maps
    (:func:`aidnet.explain.maps.ensemble_maps`), scored on the first member's Grad-CAM grid, as
    ``evaluate`` does."""
    net = network_maps_of(trained, item, load_cached(item.cache).image)
    return write_explained((net, (out, base)))


def write_explained(job: tuple[NetworkMaps, tuple[Path, Path | None]]) -> dict:
    """The CPU half of :func:`explain_item` (any process): the networks' maps of one scan
    on its own grid, kept on its calcium candidates, averaged over the members, written, and
    scored when ``base`` is given and the scan has coronary calcium labels."""
    from aidnet.io.read import read_volume

    net, (out, base) = job
    item = net.item
    cached = load_cached(item.cache)
    geometry = CropGeometry.from_dict(cached.geometry)
    volume = read_volume(item.record.path)
    maps = maps_of_scan(net, cached, geometry, volume)
    key = item.record.key
    written: dict = {"key": key, **write_maps(maps, geometry, volume, out, key)}
    labels = None if base is None else coronary_labels(item.record, base, geometry)
    if labels is not None:
        written["localisation"] = localisation_rows(item.record, maps, labels, geometry, net.grid)
    return written


def explain_items(
    trained: Trained | list[Trained],
    items: list[Item],
    out: Path,
    base: Path | None,
    workers: int = 1,
) -> Iterator[tuple[Item, dict]]:
    """(item, :func:`explain_item` result) for every item, in completion order; with
    ``workers`` > 1 the files and scores are made in worker processes while the networks run
    (:func:`aidnet.explain.scoring.maps_then_cpu`), with the same results."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield item, explain_item(trained, item, out, base=base)
        return
    yield from maps_then_cpu(trained, items, write_explained, (out, base), workers)


def explain_manifest(
    checkpoint: Path | list[Path],
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
    maps in the manifest (``label_path``) also ``out/localisation.csv``. Several checkpoints
    are a seed ensemble (:func:`aidnet.pipeline.common.load_ensemble`): each map is their
    average.

    The network and its heat maps run on ``device`` (see :func:`aidnet.pipeline.evaluate_run`);
    scans not yet in the cache (without ``cache_dir``: the one the run's training filled) are
    preprocessed in ``workers`` processes, and as many write the maps' files and scores while
    the networks make the next scan's maps (:func:`explain_items`).

    Resumable: each finished scan is logged in ``out/.explain-progress.jsonl`` (see
    :mod:`aidnet.pipeline.resume`); run again after a kill, the scans whose maps are all there
    are not computed again. The log is removed when every scan succeeded.
    """
    from tqdm import tqdm

    from aidnet.explain.localisation import write_localisation_csv
    from aidnet.pipeline.device import resolve_device
    from aidnet.pipeline.resume import ScanLog, ensemble_context

    dev = resolve_device(device)  # a bad --device fails before the model loads
    members = load_ensemble(checkpoint, dev)
    records = select_ensemble_records(manifest, members, split)
    if keys is not None:
        wanted = set(keys)
        records = [r for r in records if r.key in wanted]
    if limit is not None:
        records = records[:limit]
    out.mkdir(parents=True, exist_ok=True)
    items, failures = cached_items(records, members[0], cache_dir, out, workers=workers)
    context = ensemble_context("explain", [m.path for m in members])
    log = ScanLog(out / EXPLAIN_LOG, context, manifest.parent)
    done: dict[str, dict] = {}
    todo = []
    for item in items:
        entry = _from_log(log.get(item))
        if entry is None:
            todo.append(item)
        else:
            done[item.record.key] = entry
    with tqdm(
        total=len(items), initial=len(done), desc="explain", unit="scan", disable=None
    ) as progress:
        for item, entry in explain_items(members, todo, out, manifest.parent, workers):
            log.add(item, _to_log(entry))
            done[item.record.key] = entry
            progress.update()
    written = [done[item.record.key] for item in items]
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
