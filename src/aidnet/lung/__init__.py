"""Lung segmentation and the dilated lung convex hull (AID-Net paper §2.1, DSB2017 step 1)."""

from aidnet.lung.hull import lung_hull
from aidnet.lung.segment import segment_lungs

__all__ = ["lung_hull", "segment_lungs"]
