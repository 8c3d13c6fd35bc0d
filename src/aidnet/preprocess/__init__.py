"""Scan → AID-Net network input (paper §2.1) and the geometry to map results back."""

from aidnet.preprocess.geometry import CropGeometry
from aidnet.preprocess.sample import Sample, preprocess_volume

__all__ = ["CropGeometry", "Sample", "preprocess_volume"]
