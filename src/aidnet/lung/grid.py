"""The coarse working grid of lung segmentation: block-mean down, nearest-neighbour back up."""

from __future__ import annotations

import numpy as np

WORKING_MM = 2.5
SLAB_BYTES = 1 << 20


def working_factors(
    spacing: tuple[float, float, float], shape: tuple[int, ...], max_mm: float = WORKING_MM
) -> tuple[int, int, int]:
    """Integer (fz, fy, fx): the largest blocks whose sides stay within ``max_mm`` (at least 1).

    Typical chest CT voxels (0.6–0.9 mm, 1–1.25 mm slices) become 2–2.5 mm working voxels;
    coarser axes are left as they are.
    """
    return tuple(  # type: ignore[return-value]
        int(min(n, max(1, np.floor(max_mm / float(s) + 1e-6))))
        for s, n in zip(spacing, shape, strict=True)
    )


def block_mean(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Float32 mean over (fz, fy, fx) blocks; a remainder that fills no whole block is dropped.

    Summed over slabs of about 1 MiB so that the fz·fy·fx strided passes read each slab from
    the cache instead of the whole scan from memory again (same order of additions, same result).
    """
    fz, fy, fx = factors
    nz, ny, nx = (n // f for n, f in zip(array.shape, factors, strict=True))
    out = np.zeros((nz, ny, nx), dtype=np.float32)
    slab_bytes = fz * array.shape[1] * array.shape[2] * array.itemsize
    step = max(1, SLAB_BYTES // max(1, slab_bytes))
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        part, sums = array[z0 * fz : z1 * fz], out[z0:z1]
        for i in range(fz):
            for j in range(fy):
                for k in range(fx):
                    sums += part[i::fz, j : ny * fy : fy, k : nx * fx : fx]
    out *= np.float32(1.0 / (fz * fy * fx))
    return out


def block_any(mask: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Boolean OR over (fz, fy, fx) blocks, same block layout as :func:`block_mean`."""
    fz, fy, fx = factors
    nz, ny, nx = (n // f for n, f in zip(mask.shape, factors, strict=True))
    out = np.zeros((nz, ny, nx), dtype=bool)
    for i in range(fz):
        for j in range(fy):
            for k in range(fx):
                out |= mask[i : nz * fz : fz, j : ny * fy : fy, k : nx * fx : fx] != 0
    return out


def upsample_nearest(
    small: np.ndarray, shape: tuple[int, int, int], factors: tuple[int, int, int]
) -> np.ndarray:
    """Inverse of the block layout: every fine voxel takes its block's value (edges repeat)."""
    out = small
    for axis, (n, f) in enumerate(zip(shape, factors, strict=True)):
        m = out.shape[axis]
        if m * f == n:
            out = np.repeat(out, f, axis=axis) if f > 1 else out
        else:
            out = np.take(out, np.minimum(np.arange(n) // f, m - 1), axis=axis)
    return out
