"""Training augmentation of the network input: scanner variation on the CT channel, and
posture (a small in-plane rotation and scale) on both channels.

Real scanners and protocols differ in calibration (a few HU of offset and gain), noise and
slice thickness; the phantom draws some of this per scan and :func:`scanner_variation` adds
more per epoch. The CT channel (0) is ``(HU + 200) / 800`` with hidden voxels (lungs, outside
the region) at exactly 0; they stay 0. The calcium channel (1) is left alone there: it is
thresholded on the scan's own HU before resampling and cannot be redone here.

Patients lie a little rotated and are built differently; :func:`posture_variation` turns and
scales the whole input in-plane about its centre. The CT channel is interpolated; the calcium
channel is moved voxel by voxel (each candidate to the output voxel nearest its new place,
keeping its value), so that no plaque, however small, is lost or dimmed by the resampling.

Never a left–right flip: the heart and the coronary tree are not symmetric.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_HU_PER_UNIT = 800.0
#: Ranges drawn per scan: HU offset, gain about soft tissue (40 HU), noise sigma (HU) and the
#: Gaussian blur along z (network voxels), which stands in for thicker slices.
OFFSET_HU = 20.0
GAIN = 0.08
NOISE_HU = 12.0
BLUR_Z = 0.8
#: Posture ranges drawn per scan: in-plane rotation (degrees) and scale (fraction) about the
#: input's centre, on the network grid.
ROTATE_DEG = 10.0
SCALE = 0.10


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


def _in_plane(angle_deg: float, scale: float) -> np.ndarray:
    """2×2 matrix taking an output voxel's in-plane offset from the centre, (y, x) in voxels,
    to the input's: a rotation by ``angle_deg`` and a magnification by ``scale``."""
    theta = np.deg2rad(angle_deg)
    c, s = np.cos(theta) / scale, np.sin(theta) / scale
    return np.array([[c, -s], [s, c]])


def posture(image: torch.Tensor, angle_deg: float, scale: float) -> torch.Tensor:
    """A copy of a (2, Z, Y, X) network input turned by ``angle_deg`` in-plane and magnified by
    ``scale`` about its centre (see the module docstring); 0° and 1 give the input back."""
    _, depth, height, width = image.shape
    to_input = _in_plane(angle_deg, scale)
    # affine_grid works in (x, y) coordinates of [-1, 1] along each axis: half an extent is 1
    half = np.array([height / 2.0, width / 2.0])
    yx = to_input * half[None, :] / half[:, None]  # (y, x) normalised, output → input
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[0, 0, 0], theta[0, 0, 1] = yx[1, 1], yx[1, 0]  # x_in from (x_out, y_out)
    theta[0, 1, 0], theta[0, 1, 1] = yx[0, 1], yx[0, 0]  # y_in from (x_out, y_out)
    theta[0, 2, 2] = 1.0  # z unchanged
    grid = F.affine_grid(theta, [1, 1, depth, height, width], align_corners=False)
    grid = grid.to(image.dtype)
    ct = image[0][None, None]
    shown = (ct > 0).to(image.dtype)  # hidden voxels hold exactly 0

    def sample(volume: torch.Tensor, mode: str) -> torch.Tensor:
        return F.grid_sample(volume, grid, mode=mode, padding_mode="zeros", align_corners=False)

    # the CT interpolated over shown neighbours only (no blend with the hidden 0 at the lung's
    # edge); shown where the nearest input voxel was
    total, weight = sample(ct, "bilinear")[0, 0], sample(shown, "bilinear")[0, 0]
    keep = sample(shown, "nearest")[0, 0] > 0.5
    out = torch.zeros_like(image)
    out[0] = torch.where(keep, total / weight.clamp_min(1e-6), torch.zeros_like(total))
    out[1] = _move_voxels(image[1], np.linalg.inv(to_input), (height, width))
    return out


def _move_voxels(channel: torch.Tensor, to_output: np.ndarray, shape: tuple[int, int]):
    """Each non-zero voxel of a (Z, Y, X) channel to the output voxel nearest its new in-plane
    place (``to_output``: input offset → output offset, voxels), the larger value where two
    meet; voxels moved out of the grid are dropped."""
    out = torch.zeros_like(channel)
    z, y, x = torch.nonzero(channel, as_tuple=True)
    if z.numel() == 0:
        return out
    centre = np.array([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0])
    offsets = np.stack([y.numpy(), x.numpy()], axis=1) - centre
    new = np.rint(offsets @ to_output.T + centre).astype(np.int64)
    inside = (new[:, 0] >= 0) & (new[:, 0] < shape[0]) & (new[:, 1] >= 0) & (new[:, 1] < shape[1])
    keep = torch.from_numpy(inside)
    flat = (
        z[keep] * (shape[0] * shape[1])
        + torch.from_numpy(new[inside, 0]) * shape[1]
        + torch.from_numpy(new[inside, 1])
    )
    values = channel[z, y, x][keep]
    out.view(-1).scatter_reduce_(0, flat, values, reduce="amax", include_self=True)
    return out


def posture_variation(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """:func:`posture` with an angle of ±``ROTATE_DEG`` and a scale of 1 ± ``SCALE`` drawn
    from ``rng``; deterministic for a given ``rng`` state."""
    angle, scale = rng.uniform(-1.0, 1.0, size=2)
    return posture(image, float(angle) * ROTATE_DEG, 1.0 + float(scale) * SCALE)
