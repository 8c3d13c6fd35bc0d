"""Scan → AID-Net network input (paper §2.1) and the geometry to map results back."""

from aidnet.preprocess.config import PreprocessConfig
from aidnet.preprocess.geometry import CropGeometry
from aidnet.preprocess.sample import Sample, preprocess_volume

__all__ = ["CropGeometry", "PreprocessConfig", "Sample", "preprocess_volume"]
