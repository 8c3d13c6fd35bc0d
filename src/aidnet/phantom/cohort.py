"""Scan–rescan pairs of synthetic subjects and whole cohorts on disk (manifest + NIfTI/DICOM)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aidnet.atomic import atomic_path
from aidnet.errors import AidnetError
from aidnet.io.volume import Volume, canonical_affine
from aidnet.phantom.anatomy import draw_subject
from aidnet.phantom.render import KERNELS, LABEL_CORONARY, render_visit
from aidnet.phantom.shapes import Grid

VISITS = ("scan", "rescan")
KERNEL_NAMES = tuple(KERNELS)
COLUMNS = (
    "subject",
    "visit",
    "path",
    "agatston",
    "category",
    "thickness_mm",
    "pixel_mm",
    "label_path",
)
_SIZES = {
    # in-plane matrix, pixel range (mm), pixel rounding (1/n mm), slice thicknesses (mm)
    "full": (512, (0.6, 0.9), 64, (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)),
    "medium": (256, (1.5, 1.9), 32, (2.0, 2.5, 3.0, 5.0)),
    "small": (128, (2.8, 3.2), 32, (4.0, 4.5, 5.0)),
}
SIZES = tuple(_SIZES)


def _grid(p: dict, size: str, rng: np.random.Generator) -> Grid:
    n, (lo, hi), q, thicknesses = _SIZES[size]
    # pixel size: drawn, but large enough for the body to fit the field of view
    want = max(rng.uniform(lo, hi), (2 * p["A"] + 60) / n)
    pixel = float(np.clip(np.ceil(want * q) / q, np.ceil(lo * q) / q, np.floor(hi * q) / q))
    thickness = float(thicknesses[rng.integers(len(thicknesses))])
    tx, ty, tz = (float(v) for v in rng.uniform(-15, 15, size=3))
    shift = (tx, ty, tz)
    angle = float(np.deg2rad(rng.uniform(-4, 4)))
    top = -rng.uniform(10, 30)
    bottom = p["lung_h"] + rng.uniform(10, 35)
    nz = int(np.ceil((bottom - top) / thickness)) + 1
    return Grid((nz, n, n), (thickness, pixel, pixel), top + shift[2], angle, shift)


# Noise sigma (8-35 HU) is drawn for a diagnostic chest-CT voxel of about 0.75 x 0.75 x 2 mm.
# A coarser voxel averages more photons, so white noise would fall with sqrt(volume); real
# reconstructions have correlated noise, so we let it fall half as fast (factor 2 below).
_REFERENCE_VOXEL_MM3 = 0.75 * 0.75 * 2.0


def _noise_scale(spacing: tuple[float, float, float]) -> float:
    volume = float(np.prod(spacing))
    return float(min(1.0, 2.0 * np.sqrt(_REFERENCE_VOXEL_MM3 / volume)))


def render_pair(
    subject_seed: int, size: str, target_class: int, blood_hu: float | None = None
) -> list[tuple[Volume, np.ndarray, dict]]:
    """The scan and the rescan of one subject (same anatomy, new acquisition each).

    Returns ``[(volume, labels, info), ...]`` for ``scan`` then ``rescan``: the volume is int16 HU
    on the canonical (z, y, x) grid, ``labels`` uint8 (0 background, 1 coronary calcium, 2 other
    calcium, 3 lung) and ``info`` the acquisition and its Agatston score (from
    :func:`aidnet.agatston.agatston` on exactly this int16 array with ``labels == 1``).
    ``blood_hu`` replaces the subject's blood value (about 30–45 HU): an iodine-enhanced blood
    pool, i.e. a contrast CT, which aidnet must refuse.
    """
    from aidnet.agatston import agatston

    if size not in _SIZES:
        raise AidnetError(f"phantom size must be one of {', '.join(_SIZES)}, not '{size}'")
    if target_class not in (0, 1, 2):
        raise AidnetError(f"target class must be 0, 1 or 2, not {target_class}")
    subject = draw_subject(np.random.default_rng(subject_seed), target_class)
    if blood_hu is not None:
        subject.p["hu_blood"] = float(blood_hu)
    pairs = []
    for v, visit in enumerate(VISITS):
        rng = np.random.default_rng([subject_seed, v + 1])
        grid = _grid(subject.p, size, rng)
        noise = float(rng.uniform(8, 35)) * _noise_scale(grid.spacing)
        table = bool(rng.random() < 0.7)
        kernel = KERNEL_NAMES[int(rng.integers(len(KERNEL_NAMES)))]
        hu, labels = render_visit(
            subject, grid, noise_hu=noise, table=table, rng=rng, kernel=kernel
        )
        sz, sy, sx = grid.spacing
        nz, ny, nx = grid.shape
        affine = canonical_affine(grid.spacing, ((nx - 1) / 2 * sx, (ny - 1) / 2 * sy, -grid.z0))
        # components are per slice: scoring only the slices holding label 1 is exact and fast
        rows = np.flatnonzero((labels == LABEL_CORONARY).any(axis=(1, 2)))
        result = agatston(hu[rows], grid.spacing, mask=labels[rows], label=LABEL_CORONARY)
        info = {
            "visit": visit,
            "thickness_mm": sz,
            "pixel_mm": sx,
            "noise_hu": noise,
            "shift_mm": grid.shift,
            "rotation_deg": float(np.rad2deg(grid.angle)),
            "table": table,
            "kernel": kernel,
            "target_class": int(target_class),
            "plaques": len(subject.plaques),
            "distractors": len(subject.distractors),
            "agatston": result.score,
            "category": result.category,
        }
        pairs.append((Volume(array=hu, spacing=grid.spacing, affine=affine), labels, info))
    return pairs


def subject_seed(seed: int, index: int) -> int:
    """The seed of subject ``index`` of a cohort (independent of the cohort size)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _target_class(seed: int, index: int, mix: np.ndarray) -> int:
    """Class aimed at for subject ``index``: a golden-ratio sequence from a seeded start, so
    every prefix of a cohort is close to ``mix`` and a subject's class ignores the cohort size."""
    u = (np.random.default_rng([seed, 7]).random() + index * 0.6180339887498949) % 1.0
    return min(int(np.searchsorted(np.cumsum(mix), u, side="right")), 2)


@dataclass(frozen=True)
class _SubjectJob:
    """One subject of a cohort to render and write (picklable: it crosses to a worker)."""

    out: Path
    index: int
    seed: int
    size: str
    target_class: int
    dicom_visits: tuple[int, ...]  # which of VISITS are also written as a DICOM series


def _write_subject(job: _SubjectJob) -> tuple[int, list[dict]]:
    """Render and write one subject's scans; its manifest rows, with its index for ordering."""
    from aidnet.io.dicom import write_dicom_series
    from aidnet.io.nifti import write_nifti

    out, index = job.out, job.index
    sid = f"P{index + 1:04d}"
    sseed = subject_seed(job.seed, index)
    rows = []
    for v, (volume, labels, info) in enumerate(render_pair(sseed, job.size, job.target_class)):
        key = f"{sid}_{info['visit']}"
        image = write_nifti(volume.array, volume.affine, out / "images" / f"{key}.nii.gz")
        label = write_nifti(labels, volume.affine, out / "labels" / f"{key}_label.nii.gz")
        path = image
        if v in job.dicom_visits:
            path = write_dicom_series(
                volume,
                out / "dicom" / key,
                patient_name=f"PHANTOM^{index + 1:04d}",
                patient_id=f"PH{index + 1:04d}",
                seed=sseed + v,
            )
        rows.append(
            {
                "subject": sid,
                "visit": info["visit"],
                "path": path.relative_to(out).as_posix(),
                "agatston": f"{info['agatston']:.2f}",
                "category": info["category"],
                "thickness_mm": f"{info['thickness_mm']:g}",
                "pixel_mm": f"{info['pixel_mm']:g}",
                "label_path": label.relative_to(out).as_posix(),
            }
        )
    return index, rows


def _lost(job: _SubjectJob, exc: BaseException) -> tuple[int, list[dict]]:
    raise AidnetError(f"phantom subject P{job.index + 1:04d} failed in a worker: {exc}") from exc


def make_cohort(
    out: Path,
    subjects: int,
    seed: int,
    size: str = "small",
    dicom_fraction: float = 0.0,
    class_mix: tuple[float, float, float] = (0.47, 0.37, 0.16),
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Write a synthetic cohort to ``out`` and return the path of its ``manifest.csv``.

    ``out/images/<subject>_<visit>.nii.gz`` (int16 HU), ``out/labels/<key>_label.nii.gz``
    (uint8), and for a share ``dicom_fraction`` of the scans also ``out/dicom/<subject>_<visit>/``
    (the manifest then points there). Deterministic for a seed.

    ``workers`` > 1 renders subjects in that many single-threaded processes; every subject has
    its own seed, so the files and the manifest are the same as with ``workers`` = 1.
    """
    from aidnet.data.pool import run_unordered

    if subjects < 1:
        raise AidnetError(f"a cohort needs at least 1 subject, not {subjects}")
    if workers < 1:
        raise AidnetError(f"workers must be at least 1, not {workers}")
    if not 0.0 <= dicom_fraction <= 1.0:
        raise AidnetError(f"dicom_fraction must lie in [0, 1], not {dicom_fraction}")
    mix = np.asarray(class_mix, dtype=np.float64)
    if mix.shape != (3,) or np.any(mix < 0) or mix.sum() <= 0:
        raise AidnetError(f"class_mix must be three non-negative shares, not {class_mix}")
    mix = mix / mix.sum()
    if size not in _SIZES:
        raise AidnetError(f"phantom size must be one of {', '.join(_SIZES)}, not '{size}'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_scans = subjects * len(VISITS)
    n_dicom = int(round(dicom_fraction * n_scans))
    as_dicom = set(np.random.default_rng([seed, 2**31]).permutation(n_scans)[:n_dicom].tolist())
    jobs = [
        _SubjectJob(
            out=out,
            index=index,
            seed=seed,
            size=size,
            target_class=_target_class(seed, index, mix),
            dicom_visits=tuple(v for v in range(len(VISITS)) if 2 * index + v in as_dicom),
        )
        for index in range(subjects)
    ]
    results: Iterable[tuple[int, list[dict]]] = run_unordered(
        _write_subject, jobs, workers, lost=_lost
    )
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=subjects, desc="phantom", unit="subject")
    by_index = dict(results)
    rows = [row for index in range(subjects) for row in by_index[index]]
    manifest = out / "manifest.csv"
    with (
        atomic_path(manifest, suffix=".csv") as tmp,
        tmp.open("w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest
