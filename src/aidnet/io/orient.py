"""Reorientation of any (array, affine) pair to the canonical (z, y, x) orientation."""

from __future__ import annotations

import numpy as np

from aidnet.io.volume import SourceGrid

# For each canonical array axis (z, y, x): the RAS world axis it runs along and its sign.
# z → −S (feet), y → −A (posterior), x → −R (patient left).
_TARGET = ((2, -1.0), (1, -1.0), (0, -1.0))


def canonical_axes(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Source axis and flip for each canonical axis (z, y, x) of an array with ``affine``."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms == 0):
        raise ValueError("affine has a zero-length axis")
    # world axis each array axis mostly runs along
    dominant = np.argmax(np.abs(m / norms), axis=0)
    if len(set(dominant.tolist())) != 3:
        raise ValueError("affine axes are degenerate (two array axes along one world axis)")
    perm = tuple(int(np.flatnonzero(dominant == world)[0]) for world, _ in _TARGET)
    flips = [
        bool(np.sign(m[world, src]) != sign)
        for src, (world, sign) in zip(perm, _TARGET, strict=True)
    ]
    return (perm[0], perm[1], perm[2]), (flips[0], flips[1], flips[2])


def reorient_with_grid(
    array: np.ndarray, affine: np.ndarray, dtype: np.dtype | type | None = None
) -> tuple[np.ndarray, np.ndarray, SourceGrid]:
    """Like :func:`reorient_canonical`, also returning the :class:`SourceGrid` that undoes it.

    With ``dtype``, the result is a new C-contiguous array of that type, made in one pass over
    the input (a reader can hand in a view of the file's own buffer).
    """
    affine = np.asarray(affine, dtype=np.float64)
    perm, flips = canonical_axes(affine)
    out = np.transpose(array, perm)
    new_affine = affine.copy()
    new_affine[:, :3] = affine[:, perm]
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=axis)
            n = out.shape[axis]
            new_affine[:3, 3] = new_affine[:3, 3] + new_affine[:3, axis] * (n - 1)
            new_affine[:3, axis] = -new_affine[:3, axis]
    grid = SourceGrid(axes=perm, flips=flips, affine=affine.copy())
    if dtype is not None:
        converted = np.empty(out.shape, dtype=dtype)
        np.copyto(converted, out, casting="unsafe")
        out = converted
    elif not out.flags.c_contiguous:
        out = np.ascontiguousarray(out)
    return out, new_affine, grid


def reorient_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip the axes of ``array`` so that it is canonical; return (array, affine).

    ``affine`` maps the array's own index (i0, i1, i2, 1) to RAS mm. Only axis permutations and
    flips are applied (no resampling), so an oblique scan stays oblique in its affine.
    """
    out, new_affine, _ = reorient_with_grid(array, affine)
    return out, new_affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along each array axis, in mm."""
    norms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return float(norms[0]), float(norms[1]), float(norms[2])
