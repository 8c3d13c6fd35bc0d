"""Every setting the scan → network-input step depends on; its key names cache entries."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Bump when the algorithm changes in a way the settings below do not capture.
ALGORITHM_VERSION = "5"  # 3: contrast-enhanced scans are refused; 4: by their blood pool too;
# 5: the hull's margin in millimetres

# options that were added later: off, they leave the settings' dict (and older caches' keys) alone;
# a training configuration and a checkpoint's model spec carry each under the same name
LATER_OPTIONS = ("dim_wall_bone", "dim_outer_bone", "calcium_density", "noise_ceiling")


@dataclass(frozen=True)
class PreprocessConfig:
    """Paper §2.1 settings. ``size`` is the network grid (Z, Y, X); the rest rarely change."""

    size: tuple[int, int, int]
    hu_low: float = -200.0
    hu_high: float = 600.0
    calcium_hu: float = 130.0
    lung_hu: float = -600.0
    hull_ratio: float = 2.0
    hull_margin_mm: float = 10.0  # DSB2017's 10 dilation steps, as millimetres (any scanner)
    margin_mm: float = 0.0
    # bone crossing the region's edge out of the calcium channel, dimmed in the CT (not §2.1)
    dim_wall_bone: bool = False
    # bone on the lungs' outer side — the lung lies between it and the mediastinum — likewise
    # (not §2.1)
    dim_outer_bone: bool = False
    # the calcium channel holds each candidate voxel's density, (HU − 130) / (400 − 130) capped
    # at 1, instead of 1 (not §2.1)
    calcium_density: bool = False
    # a scan noisier than the training phantom (a sharp kernel, a thin low-dose slice) is
    # smoothed in-plane down to the phantom's noise before anything else (preprocess/noise.py;
    # not §2.1)
    noise_ceiling: bool = False

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"network input size must be three positive integers, not {size}")
        object.__setattr__(self, "size", size)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["size"] = list(self.size)
        out["algorithm"] = ALGORITHM_VERSION
        for name in LATER_OPTIONS:
            if not out[name]:  # off: caches from before the option keep their key
                del out[name]
        return out

    def key(self) -> str:
        """Short hash of the settings and the algorithm version (changes when either does)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def as_config(config: PreprocessConfig | tuple[int, int, int]) -> PreprocessConfig:
    """A :class:`PreprocessConfig`, built with defaults when only the network size is given."""
    from aidnet.errors import AidnetError

    if isinstance(config, PreprocessConfig):
        return config
    try:
        return PreprocessConfig(size=tuple(config))  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise AidnetError(str(exc)) from None


def for_training(config: Any) -> PreprocessConfig:
    """The scan → network-input settings a training configuration (:class:`aidnet.config.Config`)
    trains on."""
    options = {name: bool(getattr(config, name)) for name in LATER_OPTIONS}
    return PreprocessConfig(size=config.input_size, **options)


def config_from_dict(data: dict, size: tuple[int, int, int]) -> PreprocessConfig:
    """The :class:`PreprocessConfig` recorded in a cache file (``to_dict``); ``size`` when the
    record is empty (files from before configs were recorded)."""
    names = {f.name for f in dataclasses.fields(PreprocessConfig)}
    known = {k: v for k, v in data.items() if k in names}
    known.setdefault("size", size)
    return PreprocessConfig(**known)
