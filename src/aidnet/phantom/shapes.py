"""Analytic shapes painted on cropped boxes of a scan grid, with partial-volume edges.

Everything works in *patient* millimetres (x to the patient's left, y anterior → posterior,
z head → feet); :class:`Grid` maps them to voxel indices of one acquisition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """One acquisition: voxel grid in scanner mm and the patient's pose on the table."""

    shape: tuple[int, int, int]  # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (sz, sy, sx) mm
    z0: float  # scanner z of slice 0 (mm, head → feet)
    angle: float  # patient roll about the z axis (rad)
    shift: tuple[float, float, float]  # patient translation (x, y, z) mm in scanner space

    @property
    def width(self) -> float:
        """Partial-volume ramp width (mm) for smooth shapes."""
        return float(np.mean(self.spacing))

    def scanner_xy(self) -> tuple[np.ndarray, np.ndarray]:
        _, ny, nx = self.shape
        _, sy, sx = self.spacing
        xs = (np.arange(nx) - (nx - 1) / 2.0) * sx
        ys = (np.arange(ny) - (ny - 1) / 2.0) * sy
        return xs, ys

    def to_patient_xy(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scanner (x, y) grids (broadcastable) → patient (x, y)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = xs - self.shift[0], ys - self.shift[1]
        return (c * dx + s * dy).astype(np.float32), (-s * dx + c * dy).astype(np.float32)

    def slice_z(self) -> np.ndarray:
        """Patient z of every slice."""
        return self.z0 + np.arange(self.shape[0]) * self.spacing[0] - self.shift[2]

    def index_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel box covering the patient-space box [lo, hi] (x, y, z)."""
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing
        c, s = np.cos(self.angle), np.sin(self.angle)
        cx = np.array([lo[0], hi[0], lo[0], hi[0]])
        cy = np.array([lo[1], lo[1], hi[1], hi[1]])
        xs = c * cx - s * cy + self.shift[0]
        ys = s * cx + c * cy + self.shift[1]
        i = xs / sx + (nx - 1) / 2.0
        j = ys / sy + (ny - 1) / 2.0
        k = (np.array([lo[2], hi[2]]) + self.shift[2] - self.z0) / sz
        box = []
        for a, b, n in ((k.min(), k.max(), nz), (j.min(), j.max(), ny), (i.min(), i.max(), nx)):
            start, stop = max(int(np.floor(a)) - 1, 0), min(int(np.ceil(b)) + 2, n)
            if stop <= start:
                return None
            box.append(slice(start, stop))
        return box[0], box[1], box[2]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient (x, y, z) of the voxels of ``box``, shapes (1, ny, nx) twice and (nz, 1, 1)."""
        xs, ys = self.scanner_xy()
        px, py = self.to_patient_xy(xs[None, box[2]], ys[box[1], None])
        pz = self.slice_z()[box[0]].astype(np.float32)
        return px[None], py[None], pz[:, None, None]

    def voxel_steps(self) -> np.ndarray:
        """Patient-space displacement of one voxel step along (z, y, x): rows of a 3×3 matrix."""
        sz, sy, sx = self.spacing
        c, s = np.cos(self.angle), np.sin(self.angle)
        return np.array([[0.0, 0.0, sz], [s * sy, c * sy, 0.0], [c * sx, -s * sx, 0.0]])


def ramp(depth: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume coverage from a signed depth (mm, > 0 inside)."""
    return np.clip(depth / width + 0.5, 0.0, 1.0)


def _composite(vol, lab, box, cov, hu, set_label=None, clear_label=None, only_label=None):
    sub = vol[box]
    if only_label is not None:
        cov = cov * (lab[box] == only_label)
    sub += cov * (np.asarray(hu, dtype=np.float32) - sub)
    if set_label is not None or clear_label is not None:
        lsub = lab[box]
        solid = cov >= 0.5
        if clear_label is not None:
            lsub[solid & (lsub == clear_label)] = 0
        if set_label is not None:
            lsub[solid] = set_label


def paint_tube(vol, lab, grid: Grid, points, radii, hu, **labels) -> None:
    """A tube along a polyline (patient mm) with per-point radii."""
    points = np.asarray(points, dtype=np.float64)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(points),))
    w = grid.width
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
        pad = max(ra, rb) + w
        box = grid.index_box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        if box is None:
            continue
        px, py, pz = grid.coords(box)
        d = (b - a).astype(np.float32)
        dd = float(d @ d) or 1e-6
        t = ((px - a[0]) * d[0] + (py - a[1]) * d[1] + (pz - a[2]) * d[2]) / dd
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt(
            (px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 + (pz - a[2] - t * d[2]) ** 2
        )
        r = ra + t * (rb - ra)
        _composite(vol, lab, box, ramp(r - dist, w), hu, **labels)


def paint_ellipsoid(vol, lab, grid: Grid, center, axes, semi, hu, **labels) -> None:
    """A solid ellipsoid; ``axes`` rows are its unit axes, ``semi`` the semi-axes (mm)."""
    center, axes, semi = (np.asarray(v, dtype=np.float64) for v in (center, axes, semi))
    ext = np.sqrt(((axes * semi[:, None]) ** 2).sum(axis=0)) + grid.width
    box = grid.index_box(center - ext, center + ext)
    if box is None:
        return
    px, py, pz = grid.coords(box)
    q = 0.0
    for e, s in zip(axes, semi, strict=True):
        u = ((px - center[0]) * e[0] + (py - center[1]) * e[1] + (pz - center[2]) * e[2]) / s
        q = q + u * u
    depth = (1.0 - np.sqrt(q)) * float(semi.min())
    _composite(vol, lab, box, ramp(depth, grid.width), hu, **labels)


def blob_coverage(grid: Grid, center, axes, semi, samples: int = 4):
    """Supersampled exact partial-volume coverage of a small ellipsoid: (box, coverage)."""
    center, axes, semi = (np.asarray(v, dtype=np.float64) for v in (center, axes, semi))
    ext = np.sqrt(((axes * semi[:, None]) ** 2).sum(axis=0)) + 0.5 * max(grid.spacing)
    box = grid.index_box(center - ext, center + ext)
    if box is None:
        return None, None
    px, py, pz = grid.coords(box)
    steps = grid.voxel_steps()
    nz_sub = max(samples, int(np.ceil(grid.spacing[0] / 0.5)))
    oz = (np.arange(nz_sub) + 0.5) / nz_sub - 0.5
    oi = (np.arange(samples) + 0.5) / samples - 0.5
    off = (
        oz[:, None, None, None] * steps[0]
        + oi[None, :, None, None] * steps[1]
        + oi[None, None, :, None] * steps[2]
    ).reshape(-1, 3)
    # local ellipsoid coordinates of voxel centres, then of every sub-sample
    rel = [px - center[0], py - center[1], pz - center[2]]
    local = [
        (rel[0] * e[0] + rel[1] * e[1] + rel[2] * e[2]) / s for e, s in zip(axes, semi, strict=True)
    ]
    off_local = (off @ axes.T) / semi  # (n, 3)
    shape = np.broadcast_shapes(px.shape, pz.shape)
    inside = np.zeros(shape, dtype=np.float32)
    for o in off_local.astype(np.float32):
        q = (local[0] + o[0]) ** 2 + (local[1] + o[1]) ** 2 + (local[2] + o[2]) ** 2
        inside += q <= 1.0
    return box, inside / len(off_local)


def paint_blob(vol, lab, grid: Grid, center, axes, semi, hu, label: int) -> None:
    """A dense calcified blob: exact partial volume; ``label`` where it reaches >= 130 HU."""
    box, cov = blob_coverage(grid, center, axes, semi)
    if box is None or not np.any(cov > 0):
        return
    sub = vol[box]
    sub += cov * (np.float32(hu) - sub)
    lsub = lab[box]
    lsub[(cov > 0) & (sub >= 130.0)] = label
