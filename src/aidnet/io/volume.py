"""The in-memory CT volume shared by every stage (DESIGN.md, "Conventions").

Arrays are indexed ``(z, y, x)`` in the canonical orientation:

* ``z`` runs head → feet (cranio-caudal),
* ``y`` runs anterior → posterior,
* ``x`` runs patient right → patient left (radiological display).

``affine`` maps an array index ``(z, y, x, 1)`` to RAS+ world millimetres (the NIfTI
convention). In the canonical orientation its 3×3 part is
``[[0, 0, -sx], [0, -sy, 0], [-sz, 0, 0]]`` up to rounding: moving along +x goes to the
patient's left (−R), along +y to posterior (−A), along +z to the feet (−S).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def all_finite(array: np.ndarray) -> bool:
    """True unless a float array holds NaN or ±inf (two reductions; no mask is allocated)."""
    if array.size == 0 or not np.issubdtype(array.dtype, np.floating):
        return True
    # min and max propagate NaN, and an infinity is one of them
    return bool(np.isfinite(array.min()) and np.isfinite(array.max()))


@dataclass(frozen=True)
class SourceGrid:
    """How a reader turned the input file's own array into the canonical one.

    Canonical axis ``k`` is source axis ``axes[k]``, reversed when ``flips[k]``; ``affine`` maps
    a source index to RAS+ mm. The source array is in the order ``write_nifti`` takes (the
    reverse of NIfTI's (i, j, k); for DICOM: slice, row, column in file order of position).
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    affine: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SourceGrid):
            return NotImplemented
        return (
            tuple(self.axes) == tuple(other.axes)
            and tuple(self.flips) == tuple(other.flips)
            and np.allclose(self.affine, other.affine)
        )

    __hash__ = None  # type: ignore[assignment]

    def to_source(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A canonical (z, y, x) array on the source's own layout, with the source affine."""
        flipped = tuple(axis for axis, flip in enumerate(self.flips) if flip)
        out = np.flip(array, axis=flipped) if flipped else array
        out = np.transpose(out, np.argsort(self.axes))
        return np.ascontiguousarray(out), self.affine.copy()


def canonical_affine(
    spacing: tuple[float, float, float], origin_ras: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """Affine of a canonical (z, y, x) array with ``spacing`` = (sz, sy, sx) mm.

    ``origin_ras`` is the RAS position of voxel (0, 0, 0).
    """
    sz, sy, sx = (float(s) for s in spacing)
    affine = np.zeros((4, 4))
    affine[0, 2] = -sx
    affine[1, 1] = -sy
    affine[2, 0] = -sz
    affine[:3, 3] = origin_ras
    affine[3, 3] = 1.0
    return affine


@dataclass(frozen=True)
class Volume:
    """A CT scan in Hounsfield units with its geometry.

    ``array`` is (Z, Y, X), float32 or int16 HU; ``spacing`` is (sz, sy, sx) in mm;
    ``affine`` maps (z, y, x, 1) indices to RAS+ mm. ``source`` (set by the readers) records how
    the input file's array was reoriented, so results can be written on the input's own grid.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source: SourceGrid | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return int(z), int(y), int(x)

    @property
    def slice_thickness(self) -> float:
        """Distance between axial slices in mm (the Agatston slice thickness)."""
        return float(self.spacing[0])

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry with other voxel values (a mask, a heat map)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match volume {self.array.shape}")
        return Volume(array=array, spacing=self.spacing, affine=self.affine, source=self.source)

    def to_source(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map a canonical (z, y, x) array (mask, heat map) to the input file's own layout.

        Returns ``(source_array, source_affine)``; ``write_nifti(*volume.to_source(mask), path)``
        writes a NIfTI with the input file's shape and affine. Volumes made in memory (no
        ``source``) are returned as they are.
        """
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match volume {self.array.shape}")
        if self.source is None:
            return np.asarray(array), np.asarray(self.affine, dtype=np.float64).copy()
        return self.source.to_source(array)
