"""The network family (paper §2.2–2.3): AID-Net, ID-Net and the single-scan baselines."""

from aidnet.models.aidnet import AIDNet
from aidnet.models.base import CACNet, FeatureMaps, SingleOutput
from aidnet.models.blocks import ConvBlock3d, SoftAttentionGate3d
from aidnet.models.encoder import Encoder3d
from aidnet.models.registry import MODELS, build_model

__all__ = [
    "MODELS",
    "AIDNet",
    "CACNet",
    "ConvBlock3d",
    "Encoder3d",
    "FeatureMaps",
    "SingleOutput",
    "SoftAttentionGate3d",
    "build_model",
]
