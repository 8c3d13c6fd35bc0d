"""Training augmentation for scanner variation on the network input's CT channel.

Real scanners and protocols differ in calibration (a few HU of offset and gain), noise and
slice thickness; the phantom draws some of this per scan and this adds more per epoch. The CT
channel (0) is ``(HU + 200) / 800`` with hidden voxels (lungs, outside the region) at exactly 0;
they stay 0. The calcium channel (1) is left alone: it is thresholded on the scan's own HU
before resampling and cannot be redone here. Never a left–right flip: the heart and the
coronary tree are not symmetric.
"""

from __future__ import annotations

import numpy as np
import torch

_HU_PER_UNIT = 800.0
#: Ranges drawn per scan: HU offset, gain about soft tissue (40 HU), noise sigma (HU) and the
#: Gaussian blur along z (network voxels), which stands in for thicker slices.
OFFSET_HU = 20.0
GAIN = 0.08
NOISE_HU = 12.0
BLUR_Z = 0.8


def _blur_z(ct: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = torch.tensor(taps / taps.sum(), dtype=ct.dtype)
    padded = torch.nn.functional.pad(ct[None, None], (0, 0, 0, 0, radius, radius), mode="replicate")
    return torch.nn.functional.conv3d(padded, kernel.view(1, 1, -1, 1, 1))[0, 0]


def scanner_variation(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A copy of a (2, Z, Y, X) network input with a random offset, gain, noise and z blur on
    the CT channel (see the module docstring); deterministic for a given ``rng`` state."""
    offset, gain, noise, blur = rng.uniform(-1.0, 1.0, size=4)
    out = image.clone()
    ct = out[0]
    hidden = ct <= 0
    if blur > 0:  # half the scans: a thicker slice
        ct = _blur_z(ct, float(blur) * BLUR_Z + 1e-3)
    soft = (40.0 + 200.0) / _HU_PER_UNIT
    ct = soft + (ct - soft) * (1.0 + GAIN * float(gain)) + OFFSET_HU * float(offset) / _HU_PER_UNIT
    sigma = abs(float(noise)) * NOISE_HU / _HU_PER_UNIT
    if sigma > 0:
        seed = int(rng.integers(2**31))
        generator = torch.Generator().manual_seed(seed)
        ct = ct + sigma * torch.randn(ct.shape, generator=generator, dtype=ct.dtype)
    ct = ct.clamp(0.0, 1.0)
    ct[hidden] = 0.0
    out[0] = ct
    return out
