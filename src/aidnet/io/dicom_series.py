"""Choosing the CT image stack to read when a folder holds several series or orientations.

Images are grouped by SeriesInstanceUID, orientation and matrix size; only CT stacks whose slice
normal lies within ``MAX_AXIAL_ANGLE`` of the patient's z axis are candidates. The one with the
most slices is read, and a note on the ``aidnet`` logger says which and what was skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aidnet.errors import AidnetError

MAX_AXIAL_ANGLE = 30.0  # degrees between the slice normal and the patient z axis
_SAME_ORIENTATION = 1e-2  # largest difference of direction cosines within one stack
log = logging.getLogger("aidnet")


@dataclass
class Stack:
    """Images of one series that share orientation and matrix size."""

    uid: str
    orientation: np.ndarray
    shape: tuple[int, int]
    slices: list[Any] = field(default_factory=list)

    @property
    def first(self) -> Any:
        return self.slices[0]

    @property
    def modality(self) -> str:
        return str(self.first.get("Modality", "") or "unknown").upper()

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    @property
    def axial(self) -> bool:
        cos = abs(float(self.normal[2])) / max(float(np.linalg.norm(self.normal)), 1e-12)
        return cos >= np.cos(np.radians(MAX_AXIAL_ANGLE))

    def describe(self) -> str:
        number = self.first.get("SeriesNumber", "?")
        text = str(self.first.get("SeriesDescription", "") or "").strip()
        name = f"series {number}" + (f" '{text}'" if text else "")
        return f"{name} ({len(self.slices)} slice{'s' if len(self.slices) != 1 else ''})"


def group_stacks(headers: list[Any]) -> list[Stack]:
    """Group image headers into stacks (series × orientation × matrix size)."""
    stacks: list[Stack] = []
    for ds in headers:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue  # no geometry (a dose screen, a secondary capture)
        uid = str(ds.get("SeriesInstanceUID", "?"))
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        for stack in stacks:
            if (
                stack.uid == uid
                and stack.shape == shape
                and np.max(np.abs(stack.orientation - orientation)) <= _SAME_ORIENTATION
            ):
                stack.slices.append(ds)
                break
        else:
            stacks.append(Stack(uid, orientation, shape, [ds]))
    return stacks


def choose_stack(folder: Path, headers: list[Any]) -> Stack:
    """The axial CT stack with the most slices; a note names it when others were skipped."""
    stacks = group_stacks(headers)
    if not stacks:
        raise AidnetError(f"{folder}: no DICOM images with patient position found in this folder")
    ct = [s for s in stacks if s.modality == "CT"]
    if not ct:
        modalities = ", ".join(sorted({s.modality for s in stacks}))
        raise AidnetError(f"{folder}: not a CT series (modality {modalities})")
    candidates = [s for s in ct if s.axial and len(s.slices) >= 2]
    if not candidates:
        found = "; ".join(s.describe() for s in ct)
        raise AidnetError(
            f"{folder}: no axial CT stack of at least 2 slices (found {found}); "
            "localizers and coronal or sagittal reformats cannot be read as a chest CT volume"
        )
    candidates.sort(key=lambda s: len(s.slices), reverse=True)
    best = candidates[0]
    ties = [s for s in candidates if len(s.slices) == len(best.slices)]
    if len(ties) > 1:
        listed = "; ".join(s.describe() for s in ties)
        raise AidnetError(
            f"{folder}: {len(ties)} CT series have {len(best.slices)} slices each, cannot choose: "
            f"{listed}; move one series into a folder of its own"
        )
    skipped = len(stacks) - 1
    if skipped:
        log.warning(
            "%s: reading %s, the largest axial CT stack; skipped %d other series or stack%s",
            folder,
            best.describe(),
            skipped,
            "" if skipped == 1 else "s",
        )
    return best
