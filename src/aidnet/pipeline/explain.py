"""``aidnet explain``: heat maps on each scan's own grid and affine, plus PNG overlays."""

from __future__ import annotations

from pathlib import Path

import torch

from aidnet.data.cache import load_cached
from aidnet.data.datasets import Item
from aidnet.pipeline.common import (
    Trained,
    cached_items,
    load_trained,
    raise_if_failed,
    select_records,
)


def explain_item(trained: Trained, item: Item, out: Path) -> dict:
    """Grad-CAM (and attention) of one scan → NIfTI on the original grid + a PNG overlay."""
    from aidnet.explain.gradcam import attention_map, grad_cam
    from aidnet.explain.overlay import save_overlay_png
    from aidnet.io.nifti import write_nifti
    from aidnet.io.read import read_volume
    from aidnet.preprocess.geometry import CropGeometry

    cached = load_cached(item.cache)
    geometry = CropGeometry.from_dict(cached.geometry)
    x = torch.from_numpy(cached.image)[None]
    volume = read_volume(item.record.path)
    written: dict = {"key": item.record.key}
    maps = {"gradcam": grad_cam(trained.model, x)}
    attention = attention_map(trained.model, x)
    if attention is not None:
        maps["attention"] = attention
    for name, net_map in maps.items():
        original = geometry.to_original(net_map).astype("float32")
        path = write_nifti(original, volume.affine, out / f"{item.record.key}_{name}.nii.gz")
        written[name] = path
        png = out / f"{item.record.key}_{name}.png"
        save_overlay_png(
            volume.array, original, volume.spacing, png, title=f"{item.record.key} — {name}"
        )
        written[f"{name}_png"] = png
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
) -> list[dict]:
    """Explain the manifest's scans (optionally only ``keys``, at most ``limit``)."""
    trained = load_trained(checkpoint)
    records = select_records(manifest, trained, split)
    if keys is not None:
        wanted = set(keys)
        records = [r for r in records if r.key in wanted]
    if limit is not None:
        records = records[:limit]
    out.mkdir(parents=True, exist_ok=True)
    items, failures = cached_items(records, trained, cache_dir, out)
    written = [explain_item(trained, item, out) for item in items]
    raise_if_failed(failures, "explained")
    return written
