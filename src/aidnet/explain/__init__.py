"""Explanations: 3-D Grad-CAM (paper §2.3, "testing attention"), the SAG map, overlays."""
