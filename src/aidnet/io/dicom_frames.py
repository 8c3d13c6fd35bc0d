"""Enhanced (multi-frame) CT: one file whose frames are the slices.

Each frame becomes a small header of its own, with the attributes a classic single-frame CT slice
carries at the top level (position, orientation, pixel spacing, rescale) taken from the frame's
own functional groups or, failing that, the shared ones. The series code then treats frames
exactly like slice files: ordered by position, checked for gaps, duplicates and tilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aidnet.errors import AidnetError

# attribute → (functional group sequence, attribute inside it)
_GEOMETRY = {
    "ImagePositionPatient": ("PlanePositionSequence", "ImagePositionPatient"),
    "ImageOrientationPatient": ("PlaneOrientationSequence", "ImageOrientationPatient"),
    "PixelSpacing": ("PixelMeasuresSequence", "PixelSpacing"),
    "RescaleSlope": ("PixelValueTransformationSequence", "RescaleSlope"),
    "RescaleIntercept": ("PixelValueTransformationSequence", "RescaleIntercept"),
}
# top-level attributes every frame keeps (series choice and its messages)
_COPIED = ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Rows", "Columns")


def number_of_frames(ds: Any) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def frame_headers(ds: Any) -> list[Any]:
    """One header per frame of the multi-frame image ``ds`` (``filename`` set, ``frame`` its
    0-based index in the file)."""
    from pydicom.dataset import Dataset

    n = number_of_frames(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared_items = ds.get("SharedFunctionalGroupsSequence") or []
    shared = shared_items[0] if len(shared_items) else None
    if not per_frame:  # a cine or multi-frame capture, not a volume: left to the series choice
        return [ds]
    if len(per_frame) != n:
        raise AidnetError(
            f"{ds.filename}: multi-frame image of {n} frames with {len(per_frame)} per-frame "
            "functional groups; cannot place its frames in space"
        )
    frames = []
    for index, item in enumerate(per_frame):
        frame = Dataset()
        for keyword in _COPIED:
            if keyword in ds:
                setattr(frame, keyword, ds.data_element(keyword).value)
        for keyword, (group, inner) in _GEOMETRY.items():
            value = _functional(item, group, inner)
            if value is None and shared is not None:
                value = _functional(shared, group, inner)
            if value is None and keyword in ds:  # some writers also keep the classic attribute
                value = ds.data_element(keyword).value
            if value is not None:
                setattr(frame, keyword, value)
        frame.filename = ds.filename
        frame.frame = index
        frames.append(frame)
    return frames


def _functional(item: Any, group: str, inner: str) -> Any:
    sequence = item.get(group)
    if not sequence:
        return None
    element = sequence[0].get(inner)
    return element if element is not None and element != "" else None


def slice_name(ds: Any) -> str:
    """A slice's file name, with its frame number when it is one frame of a multi-frame file."""
    name = Path(ds.filename).name
    frame = getattr(ds, "frame", None)
    return name if frame is None else f"{name} frame {frame + 1}"
