"""One scan's heat maps on its original grid and their files: the path that ``explain``,
``evaluate`` and ``predict`` share from a network input to NIfTI maps and PNG overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aidnet.data.cache import CachedScan
from aidnet.inference import Trained
from aidnet.io.volume import Volume
from aidnet.preprocess.geometry import CropGeometry


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
    calcium (``map_on_calcium``, AID-Net's calcium head): that map is the network's features
    times its calcium channel, and the calcium channel is these candidates resampled, so on the
    scan's grid the map belongs on them too. A network voxel spans several of the scan's (8 mm
    along z at the demo size), and this puts the peak on the calcium inside it rather than at
    its centre.
    """
    from aidnet.explain.gradcam import network_maps

    x = torch.from_numpy(image)[None].to(trained.device)
    net_maps = network_maps(trained.model, x)
    return maps_on_original(net_maps, geometry, calcium, trained.model.map_on_calcium)


def maps_on_original(
    net_maps: dict[str, np.ndarray],
    geometry: CropGeometry,
    calcium: np.ndarray | None,
    map_on_calcium: bool,
) -> dict[str, np.ndarray]:
    """The CPU half of :func:`original_maps`: one network's maps on its input grid
    (:func:`aidnet.explain.gradcam.network_maps`) → on the original grid, kept on ``calcium``
    as described there (Grad-CAM only when the model's ``map_on_calcium``)."""
    from aidnet.explain.gradcam import normalise

    maps = {name: geometry.to_original(net_map) for name, net_map in net_maps.items()}
    if calcium is not None:
        if map_on_calcium:
            maps["gradcam"] = normalise(maps["gradcam"] * calcium)
        maps["integrated_gradients"] = normalise(maps["integrated_gradients"] * calcium)
        if "attention" in maps:
            maps["attention_calcium"] = normalise(maps["attention"] * calcium)
    return maps


def ensemble_maps(
    members: list[Trained],
    image: np.ndarray,
    geometry: CropGeometry,
    calcium: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """:func:`original_maps` of one network or of a seed ensemble: for several members, each
    map all of them have, averaged and rescaled to a maximum of 1."""
    return average_maps([original_maps(member, image, geometry, calcium) for member in members])


def average_maps(maps: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A seed ensemble's maps from its members' (each on the original grid): every map all of
    them have, averaged and rescaled to a maximum of 1; one member's maps as they are."""
    from aidnet.explain.gradcam import normalise

    if len(maps) == 1:
        return maps[0]
    shared = [name for name in maps[0] if all(name in m for m in maps)]
    return {name: normalise(np.mean([m[name] for m in maps], axis=0)) for name in shared}


def as_members(trained: Trained | list[Trained]) -> list[Trained]:
    """One network or a seed ensemble, as the list of its members."""
    return trained if isinstance(trained, list) else [trained]


def scan_calcium(cached: CachedScan, geometry: CropGeometry, volume: Volume | None) -> np.ndarray:
    """The calcium candidates of a cached scan on its original grid: as the cache file keeps
    them, or, in a file written before it kept them, recomputed from ``volume`` (the scan
    itself; needed only then)."""
    from aidnet.preprocess import calcium_candidates
    from aidnet.preprocess.config import config_from_dict

    kept = cached.calcium_mask()
    if kept is not None:
        return kept
    if volume is None:
        raise ValueError("this cache file keeps no calcium candidates: the scan is needed")
    config = config_from_dict(cached.config, geometry.network_shape)
    return calcium_candidates(volume, config)


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
