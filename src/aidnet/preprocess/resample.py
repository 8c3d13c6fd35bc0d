"""Crop → network grid: area/max pooling where the grid shrinks, trilinear where it grows.

Both follow the ``align_corners=False`` convention of :class:`CropGeometry`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _resample(array: np.ndarray, size: tuple[int, int, int], pool) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrunk = tuple(min(n, s) for n, s in zip(t.shape[2:], size, strict=True))
    if shrunk != tuple(t.shape[2:]):
        t = pool(t, shrunk)
    if shrunk != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode="trilinear", align_corners=False)
    return t[0, 0].numpy()


def resample_mean(array: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Average over each network voxel's footprint (no aliasing), linear where it upsamples."""
    return _resample(array, size, F.adaptive_avg_pool3d)


def resample_max(mask: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Max over each network voxel's footprint (a mask or weights in [0, 1]), so a one-voxel
    calcification never vanishes; linear where it upsamples. Float32 in [0, 1]."""
    return _resample(mask, size, F.adaptive_max_pool3d)
