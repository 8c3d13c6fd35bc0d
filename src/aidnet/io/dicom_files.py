"""Finding the DICOM images in a folder: headers only, with truncated files caught early.

Files that are clearly not DICOM (text, thumbnails, a DICOMDIR, structured reports) are skipped;
a file that is DICOM but cut short or corrupt is an error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aidnet.errors import AidnetError

# Image storage SOP classes whose files must carry pixel data (CT, enhanced CT, MR, PET, SC).
_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.128",
)
_PIXEL_GROUP = b"\xe0\x7f"  # (7FE0,xxxx) little endian
_UNDEFINED_LENGTH = 0xFFFFFFFF


def read_headers(folder: Path) -> list[Any]:
    """Headers (no pixel data) of every DICOM image under ``folder`` (or of the one file it
    names), ``filename`` set; one per frame for multi-frame images (see
    :mod:`aidnet.io.dicom_frames`)."""
    from aidnet.io.dicom_frames import frame_headers, number_of_frames

    headers = []
    paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for path in paths:
        ds = read_header(path)
        if ds is None:
            continue
        # an enhanced (multi-frame) image: its frames are the slices
        headers.extend(frame_headers(ds) if number_of_frames(ds) > 1 else [ds])
    return headers


def read_header(path: Path) -> Any | None:
    """The header of one image file; None for files that are not DICOM images."""
    import pydicom

    with open(path, "rb") as fp:
        head = fp.read(132)
        part10 = len(head) == 132 and head[128:132] == b"DICM"
        # DICOM without the 128-byte preamble (old exports) starts with group 0002 or 0008
        if not part10 and head[:2] not in (b"\x02\x00", b"\x08\x00"):
            return None
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not part10)
            has_pixels, problem = _inspect_pixels(fp, ds, path.stat().st_size)
        except Exception as exc:  # pydicom raises many types for broken headers
            raise AidnetError(f"{path}: corrupt DICOM file ({reason(exc)})") from None
    meta = getattr(ds, "file_meta", None)
    if part10 and (meta is None or "TransferSyntaxUID" not in meta):
        problem = "its file meta information has no transfer syntax"
    if problem is not None:
        raise AidnetError(f"{path}: truncated or corrupt DICOM file ({problem})")
    if not has_pixels:
        return None  # DICOMDIR, report, presentation state …
    ds.filename = str(path)
    return ds


def _inspect_pixels(fp: Any, ds: Any, size: int) -> tuple[bool, str | None]:
    """Whether pixel data follows the header, and why it is missing or cut short (or None)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    sop = str(
        ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")
    )
    image_like = "Rows" in ds or "ImagePositionPatient" in ds or sop.startswith(_IMAGE_SOP_PREFIXES)
    position = fp.tell()
    tag = fp.read(4)
    if tag[:2] != _PIXEL_GROUP or tag[2:4] not in (b"\x10\x00", b"\x08\x00", b"\x09\x00"):
        if image_like:
            ends = "the file ends before its pixel data" if position >= size else "no pixel data"
            return False, ends
        return False, None
    if syntax is None or not syntax.is_transfer_syntax:
        return True, None
    if not syntax.is_little_endian or syntax.is_deflated:
        return True, None
    fp.seek(position)
    header = fp.read(12 if not syntax.is_implicit_VR else 8)
    length = int.from_bytes(header[-4:], "little")
    if length == _UNDEFINED_LENGTH:  # compressed: checked when decoding
        return True, None
    available = size - position - len(header)
    if available < length:
        return True, f"pixel data cut short: {available} of {length} bytes"
    expected = _expected_bytes(ds)
    if expected is not None and length < expected:
        return True, f"pixel data is {length} bytes, the image needs {expected}"
    return True, None


def _expected_bytes(ds: Any) -> int | None:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        return int(ds.Rows) * int(ds.Columns) * samples * frames * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return None


def reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__
