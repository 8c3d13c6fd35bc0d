"""Scan → AID-Net network input (paper §2.1) and the geometry to map results back.

Names are imported on first use, so that light users (the cache, a process pool's parent)
do not pay for torch and SciPy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from aidnet.preprocess.config import PreprocessConfig

if TYPE_CHECKING:
    from aidnet.preprocess.geometry import CropGeometry
    from aidnet.preprocess.sample import Sample, calcium_candidates, preprocess_volume

__all__ = ["CropGeometry", "PreprocessConfig", "Sample", "calcium_candidates", "preprocess_volume"]
_WHERE = {
    "CropGeometry": "aidnet.preprocess.geometry",
    "Sample": "aidnet.preprocess.sample",
    "preprocess_volume": "aidnet.preprocess.sample",
    "calcium_candidates": "aidnet.preprocess.sample",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'aidnet.preprocess' has no attribute {name!r}")
