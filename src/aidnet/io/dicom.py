"""DICOM CT series: reading a folder into a canonical :class:`Volume`, and writing one.

Headers are read first (no pixels) and the axial CT stack with most slices is chosen (see
:mod:`aidnet.io.dicom_series`). Slices are ordered by ImagePositionPatient projected on the slice
normal — never by file name or InstanceNumber — checked for gaps, duplicates and gantry tilt, and
only then decoded, with RescaleSlope/RescaleIntercept applied. An enhanced (multi-frame) CT file
is read the same way, its frames standing in for slice files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aidnet.errors import AidnetError
from aidnet.io.dicom_files import read_headers
from aidnet.io.dicom_frames import slice_name
from aidnet.io.dicom_pixels import frames_hu, slice_hu
from aidnet.io.dicom_series import choose_stack
from aidnet.io.dicom_write import CT_IMAGE_STORAGE, write_dicom_series
from aidnet.io.orient import reorient_with_grid, spacing_of
from aidnet.io.volume import Volume

__all__ = ["CT_IMAGE_STORAGE", "read_dicom_series", "write_dicom_series"]

MAX_TILT_DEGREES = 0.1
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def read_dicom_series(folder: Path) -> Volume:
    """Read the CT series in ``folder`` (the axial stack with most slices if there are several),
    or the enhanced multi-frame CT file ``folder`` names."""
    folder = Path(folder)
    headers = read_headers(folder)
    if not headers:
        raise AidnetError(f"{folder}: no DICOM images found in this folder")
    stack = choose_stack(folder, headers)
    row_dir, col_dir = (v / np.linalg.norm(v) for v in np.split(stack.orientation, 2))
    normal = np.cross(row_dir, col_dir)
    normal = normal / np.linalg.norm(normal)
    positions = np.array(
        [np.asarray(s.ImagePositionPatient, dtype=np.float64) for s in stack.slices]
    )
    order = np.argsort(positions @ normal, kind="stable")
    if normal[2] > 0:  # stack head → feet, as canonical z runs, to spare a copy when flipping
        order = order[::-1]
    slices = [stack.slices[i] for i in order]
    positions = positions[order]
    check_positions(folder, slices, positions, normal)
    sy, sx = pixel_spacing(folder, slices)
    rows, columns = stack.shape
    array = np.empty((len(slices), rows, columns), dtype=np.float32)
    multi: dict[str, list[int]] = {}  # multi-frame file → where its frames go in the stack
    for k, s in enumerate(slices):
        if getattr(s, "frame", None) is None:
            array[k] = slice_hu(Path(s.filename), rows, columns)
        else:
            multi.setdefault(s.filename, []).append(k)
    for filename, where in multi.items():
        array[where] = frames_hu(Path(filename), [slices[k] for k in where], rows, columns)

    lps = np.eye(4)
    lps[:3, 0] = (positions[-1] - positions[0]) / (len(slices) - 1)
    lps[:3, 1] = col_dir * sy
    lps[:3, 2] = row_dir * sx
    lps[:3, 3] = positions[0]
    ras = lps.copy()
    ras[:3, :] = _LPS_TO_RAS @ lps[:3, :]
    array, affine, grid = reorient_with_grid(array, ras)
    return Volume(array=array, spacing=spacing_of(affine), affine=affine, source=grid)


def check_positions(
    folder: Path, slices: list[Any], positions: np.ndarray, normal: np.ndarray
) -> None:
    """Fail on duplicate slices, gaps or irregular spacing, and gantry tilt."""
    steps = np.abs(np.diff(positions @ normal))
    z = positions[:, 2]
    same = np.flatnonzero(steps < 0.01)
    if same.size:
        i = int(same[0])
        names = f"{slice_name(slices[i])} and {slice_name(slices[i + 1])}"
        raise AidnetError(
            f"{folder}: two slices at the same position z = {z[i]:.2f} mm ({names}); "
            "duplicate slices or two series mixed in one"
        )
    median = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - median) > 0.05 * median + 0.01)
    if bad.size:
        i = int(bad[0])
        more = f" ({bad.size} irregular steps in all)" if bad.size > 1 else ""
        low, high = sorted((z[i], z[i + 1]))
        raise AidnetError(
            f"{folder}: irregular slice spacing: {steps[i]:.2f} mm between the slices at "
            f"z = {low:.2f} and z = {high:.2f} mm, the others are {median:.2f} mm apart"
            f"{more}; a slice may be missing"
        )
    offset = positions[-1] - positions[0]
    cos = abs(float(offset @ normal)) / float(np.linalg.norm(offset))
    tilt = float(np.degrees(np.arccos(min(cos, 1.0))))
    if tilt > MAX_TILT_DEGREES:
        raise AidnetError(
            f"{folder}: gantry tilt of {tilt:.1f}° (slices are shifted sideways along the "
            "stack); tilted series are not supported, resample it to an untilted grid first"
        )


def pixel_spacing(folder: Path, slices: list[Any]) -> tuple[float, float]:
    """(row spacing, column spacing) in mm, the same for every slice."""
    values = set()
    for s in slices:
        if "PixelSpacing" not in s:
            where = Path(s.filename).parent / slice_name(s)
            raise AidnetError(f"{where}: no PixelSpacing in this CT image")
        values.add(tuple(round(float(v), 4) for v in s.PixelSpacing))
    if len(values) != 1:
        raise AidnetError(
            f"{folder}: slices of one stack have different PixelSpacing {sorted(values)}"
        )
    sy, sx = (float(v) for v in slices[0].PixelSpacing)  # exact, not the rounded key
    return sy, sx
