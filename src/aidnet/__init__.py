"""aidnet: weakly supervised coronary artery calcium detection in chest CT (AID-Net)."""

__version__ = "0.1.0"
