"""One cache file: an ``.npz`` of the network input, its crop geometry and the settings that
made it, written atomically under a temporary name that says which process writes it."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aidnet.atomic import atomic_path
from aidnet.errors import AidnetError

#: the arrays every cache file holds (``config`` is missing from files of older versions)
MEMBERS = ("image.npy", "geometry.npy")


@dataclass(frozen=True)
class CachedScan:
    image: np.ndarray  # (2, Z, Y, X) float32
    geometry: dict
    config: dict = field(default_factory=dict)  # PreprocessConfig.to_dict() that made it
    # Noise.to_dict() where the noise ceiling read the scan; None without it or in older files
    noise: dict | None = None
    # the calcium candidates on the crop grid (Sample.calcium) as flat C-order indices into the
    # crop box, so heat maps need not segment the scan again; None in older files
    calcium: np.ndarray | None = None

    def calcium_mask(self) -> np.ndarray | None:
        """The calcium candidates on the scan's whole (canonical) grid, bool; None when the
        file predates them."""
        from aidnet.preprocess.sample import on_original_grid

        if self.calcium is None:
            return None
        box = tuple(int(v) for v in self.geometry["crop_box"])
        crop = np.zeros(_crop_shape(self.geometry), dtype=bool)
        crop.flat[self.calcium] = True
        shape = tuple(int(n) for n in self.geometry["original_shape"])
        return on_original_grid(crop, box, shape)  # type: ignore[arg-type]


def _crop_shape(geometry: dict) -> tuple[int, int, int]:
    z0, z1, y0, y1, x0, x1 = (int(v) for v in geometry["crop_box"])
    return z1 - z0, y1 - y0, x1 - x0


def temp_suffix(suffix: str) -> str:
    """Suffix for :func:`atomic_path` naming this process, so that the temporary files of a
    killed process can be recognised and removed (see :func:`remove_stale_temps`)."""
    return f".pid{os.getpid()}{suffix}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files left in ``folder`` by processes that no longer run."""
    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(".tmp-*.pid*"):
        pid_text = tmp.name.rsplit(".pid", 1)[1].split(".", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def save_cached(
    path: Path,
    image: np.ndarray,
    geometry: dict,
    config: dict | None = None,
    noise: dict | None = None,
    calcium: np.ndarray | None = None,
) -> None:
    """Write one cache file; ``calcium``, where given, is the crop-grid candidate mask
    (``Sample.calcium``), kept as the flat indices of its voxels."""
    arrays: dict[str, object] = {
        "image": image.astype(np.float32),
        "geometry": json.dumps(geometry),
        "config": json.dumps(config or {}),
        "noise": json.dumps(noise),
    }
    if calcium is not None:
        flat = np.flatnonzero(np.asarray(calcium, dtype=bool))
        arrays["calcium"] = flat.astype(np.int32 if calcium.size < 2**31 else np.int64)
    with atomic_path(path, suffix=temp_suffix(".npz")) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def load_cached(path: Path) -> CachedScan:
    try:
        with np.load(path) as data:
            config = json.loads(str(data["config"])) if "config" in data.files else {}
            geometry = json.loads(str(data["geometry"]))
            calcium = data["calcium"] if "calcium" in data.files else None
            if calcium is not None:
                _check_calcium(calcium, geometry)
            return CachedScan(
                image=data["image"],
                geometry=geometry,
                config=config,
                noise=_noise(data),
                calcium=calcium,
            )
    except Exception as exc:
        raise AidnetError(f"{path}: unreadable cache file ({exc}); delete it and re-run") from None


def _check_calcium(calcium: np.ndarray, geometry: dict) -> None:
    size = int(np.prod(_crop_shape(geometry)))
    if calcium.ndim != 1 or (calcium.size and (calcium.min() < 0 or calcium.max() >= size)):
        raise ValueError("its calcium candidates do not fit its crop box")


def _noise(data) -> dict | None:
    if "noise" not in data.files:
        return None
    noise = json.loads(str(data["noise"]))
    return noise if isinstance(noise, dict) else None


def cached_noise(path: Path) -> dict | None:
    """The noise reading a cache file holds (see :class:`CachedScan`), reading no image data."""
    try:
        with np.load(path) as data:
            return _noise(data)
    except Exception as exc:
        raise AidnetError(f"{path}: unreadable cache file ({exc}); delete it and re-run") from None


def cache_file_problem(path: Path) -> str | None:
    """Why the existing cache file ``path`` cannot be used (empty, cut short, not an npz, an
    array missing), or None when it looks whole.

    Reads the zip directory at the end of the file and no array data, so checking a large
    cache costs little; a file cut short anywhere has lost that directory.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            entries = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        return f"cut short or not an npz file: {str(exc) or type(exc).__name__}"
    missing = [name for name in MEMBERS if name not in names]
    if missing:
        return f"no {', '.join(m.removesuffix('.npy') for m in missing)} array"
    if any(info.header_offset + info.compress_size > size for info in entries):
        return "cut short: an array ends past the end of the file"
    return None
