"""Where the network grid sits in the original scan (DESIGN.md, "Conventions")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aidnet.errors import AidnetError
from aidnet.io.volume import SourceGrid


def _ints(values, n: int, name: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if len(out) != n:
        raise ValueError(f"{name} needs {n} integers, got {values!r}")
    return out


@dataclass(frozen=True)
class CropGeometry:
    """The crop box of a scan and the network grid it was resampled to (paper §2.1).

    ``crop_box`` = (z0, z1, y0, y1, x0, x1) are half-open original voxel indices. The network
    grid covers the box edge to edge (the ``align_corners=False`` convention): network voxel
    ``n`` along an axis of box length ``L`` and network length ``N`` has its centre at original
    index ``start + (n + 0.5) · L / N − 0.5``.
    """

    original_shape: tuple[int, int, int]
    original_affine: tuple[tuple[float, ...], ...]
    crop_box: tuple[int, int, int, int, int, int]
    network_shape: tuple[int, int, int]
    source: SourceGrid | None = None  # how the input file's own array maps to the original grid

    def __post_init__(self) -> None:
        shape = _ints(self.original_shape, 3, "original_shape")
        box = _ints(self.crop_box, 6, "crop_box")
        net = _ints(self.network_shape, 3, "network_shape")
        affine = np.asarray(self.original_affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"original_affine must be 4×4, got shape {affine.shape}")
        for axis in range(3):
            lo, hi = box[2 * axis], box[2 * axis + 1]
            if not 0 <= lo < hi <= shape[axis]:
                raise ValueError(f"crop_box {box} does not fit in shape {shape}")
        if min(net) < 1:
            raise ValueError(f"network_shape must be positive, got {net}")
        object.__setattr__(self, "original_shape", shape)
        object.__setattr__(self, "crop_box", box)
        object.__setattr__(self, "network_shape", net)
        object.__setattr__(self, "original_affine", tuple(tuple(map(float, r)) for r in affine))

    @property
    def affine(self) -> np.ndarray:
        """The original scan's affine as a 4×4 array."""
        return np.asarray(self.original_affine, dtype=np.float64)

    @property
    def crop_start(self) -> np.ndarray:
        return np.asarray(self.crop_box[0::2], dtype=np.float64)

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        b = self.crop_box
        return b[1] - b[0], b[3] - b[2], b[5] - b[4]

    @property
    def scale(self) -> np.ndarray:
        """Original voxels per network voxel along (z, y, x)."""
        return np.asarray(self.crop_shape, dtype=np.float64) / np.asarray(self.network_shape)

    @property
    def network_affine(self) -> np.ndarray:
        """4×4 affine mapping a network index (z, y, x, 1) to RAS mm."""
        to_original = np.eye(4)
        to_original[:3, :3] = np.diag(self.scale)
        to_original[:3, 3] = self.crop_start + 0.5 * self.scale - 0.5
        return self.affine @ to_original

    def network_to_original_index(self, idx: np.ndarray) -> np.ndarray:
        """(N, 3) network (z, y, x) indices → (N, 3) float original indices."""
        idx = np.asarray(idx, dtype=np.float64).reshape(-1, 3)
        return self.crop_start + (idx + 0.5) * self.scale - 0.5

    def original_to_network_index(self, idx: np.ndarray) -> np.ndarray:
        """(N, 3) original (z, y, x) indices → (N, 3) float network indices (exact inverse)."""
        idx = np.asarray(idx, dtype=np.float64).reshape(-1, 3)
        return (idx - self.crop_start + 0.5) / self.scale - 0.5

    def to_original(self, net_array: np.ndarray) -> np.ndarray:
        """A (Z, Y, X) map on the network grid → float32 map on the original grid.

        The crop region is resampled with linear interpolation (edges held constant); voxels
        outside the crop box are 0.
        """
        import torch
        import torch.nn.functional as F

        net = np.asarray(net_array, dtype=np.float32)
        if net.shape != self.network_shape:
            raise ValueError(f"expected a map of shape {self.network_shape}, got {net.shape}")
        region = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(net))[None, None],
            size=self.crop_shape,
            mode="trilinear",
            align_corners=False,
        )[0, 0].numpy()
        out = np.zeros(self.original_shape, dtype=np.float32)
        b = self.crop_box
        out[b[0] : b[1], b[2] : b[3], b[4] : b[5]] = region
        return out

    def to_source(self, original_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A map on the original (canonical) grid → (array, affine) on the input file's own
        grid, ready for ``write_nifti`` so it overlays the user's scan voxel for voxel."""
        if self.source is None:
            return np.asarray(original_map), self.affine
        return self.source.to_source(original_map)

    def to_dict(self) -> dict:
        """JSON-safe dict (lists of ints and floats)."""
        out: dict = {
            "original_shape": list(self.original_shape),
            "original_affine": [list(r) for r in self.original_affine],
            "crop_box": list(self.crop_box),
            "network_shape": list(self.network_shape),
        }
        if self.source is not None:
            out["source"] = {
                "axes": list(self.source.axes),
                "flips": [bool(f) for f in self.source.flips],
                "affine": np.asarray(self.source.affine, dtype=np.float64).tolist(),
            }
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CropGeometry:
        """Inverse of :meth:`to_dict`; a malformed dict raises AidnetError."""
        try:
            source = data.get("source")
            grid = None
            if source is not None:
                grid = SourceGrid(
                    axes=tuple(int(a) for a in source["axes"]),  # type: ignore[arg-type]
                    flips=tuple(bool(f) for f in source["flips"]),  # type: ignore[arg-type]
                    affine=np.asarray(source["affine"], dtype=np.float64).reshape(4, 4),
                )
            return cls(
                original_shape=data["original_shape"],
                original_affine=data["original_affine"],
                crop_box=data["crop_box"],
                network_shape=data["network_shape"],
                source=grid,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AidnetError(f"invalid crop geometry ({exc!r}); re-run preprocessing") from None
