"""One scan's cache work (read, segment, preprocess, save, QC image), run in any process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aidnet.data.cache_file import load_cached, save_cached, temp_suffix
from aidnet.data.manifest import ScanRecord
from aidnet.errors import AidnetError
from aidnet.preprocess.config import PreprocessConfig


@dataclass(frozen=True)
class Job:
    """Make ``target`` (when ``build``) and the QC image ``qc`` (when given) for ``record``."""

    record: ScanRecord
    config: PreprocessConfig
    target: Path
    qc: Path | None = None
    build: bool = True


def do_job(job: Job) -> None:
    """Raises AidnetError (or anything else) for a broken scan; writes atomically."""
    from aidnet.io.read import read_volume
    from aidnet.preprocess import preprocess_volume

    volume = read_volume(job.record.path)
    lungs = None
    if job.qc is not None:
        from aidnet.lung import segment_lungs

        lungs = segment_lungs(volume)
    if job.build:
        sample = preprocess_volume(volume, job.config, lungs=lungs)
        box = sample.geometry.crop_box
        noise = None if sample.noise is None else sample.noise.to_dict()
        save_cached(
            job.target,
            sample.image,
            sample.geometry.to_dict(),
            job.config.to_dict(),
            noise,
            calcium=sample.calcium,
        )
    else:
        box = tuple(load_cached(job.target).geometry["crop_box"])
    if job.qc is not None and lungs is not None:
        from aidnet.preprocess.qc import write_qc

        write_qc(job.qc, volume, lungs, box, title=job.record.key, temp_suffix=temp_suffix(".png"))


def failure_message(path: Path, exc: BaseException) -> str:
    """One line naming the file: AidnetError text as it is (with the path put in front when it
    lacks one), anything else as ``<path>: <ExceptionType>: <first line of the message>``."""
    text = str(exc).strip()
    if isinstance(exc, AidnetError):
        text = " ".join(text.split("\n"))
        return text if str(path) in text else f"{path}: {text}"
    first = text.splitlines()[0] if text else ""
    return f"{path}: {type(exc).__name__}" + (f": {first}" if first else "")


def run_job(job: Job) -> tuple[str, str | None]:
    """``(scan key, None)`` on success, ``(scan key, one-line problem)`` on failure."""
    try:
        do_job(job)
    except Exception as exc:  # one broken scan must not stop the cohort
        return job.record.key, failure_message(job.record.path, exc)
    return job.record.key, None
