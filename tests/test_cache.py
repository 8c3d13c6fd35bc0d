"""The preprocessed-scan cache: keys, reuse, atomic files, failure lines, the pool, QC images."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from aidnet.data.cache import (
    cache_path,
    load_cached,
    preprocess_cohort,
    remove_stale_temps,
    save_cached,
    temp_suffix,
)
from aidnet.data.cache_file import cache_file_problem
from aidnet.data.job import failure_message
from aidnet.data.manifest import read_manifest
from aidnet.data.pool import run_unordered
from aidnet.errors import AidnetError
from aidnet.preprocess import PreprocessConfig

SIZE = (16, 24, 32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """One phantom subject: two small scans (128 × 128 × ~70) and their manifest."""
    from aidnet.phantom import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), subjects=1, seed=3, progress=False)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cache_files_hold_input_geometry_and_config(cohort, tmp_path):
    records = read_manifest(cohort)
    config = PreprocessConfig(size=SIZE)
    result = preprocess_cohort(records, tmp_path, config, progress=False)
    assert result.failures == {} and result.reused == 0
    assert set(result.done) == {r.key for r in records}
    for record in records:
        path = result.done[record.key]
        assert path == cache_path(tmp_path, record, config)
        assert path.name.startswith(f"{record.key}-") and path.suffix == ".npz"
        cached = load_cached(path)
        assert cached.image.shape == (2, *SIZE) and cached.image.dtype == np.float32
        assert cached.image.min() >= 0.0 and cached.image.max() <= 1.0
        assert cached.image[1].max() == 1.0  # the phantom has calcium (ribs, spine or plaques)
        assert cached.config == config.to_dict()
        assert cached.geometry["network_shape"] == list(SIZE)
    assert listing(tmp_path) == sorted(p.name for p in result.done.values())


@pytest.mark.parametrize("options", [{}, {"dim_wall_bone": True, "calcium_density": True}])
def test_cache_files_keep_the_calcium_candidates_heat_maps_use(cohort, tmp_path, options):
    """The candidates a cache file keeps are those ``calcium_candidates`` recomputes from the
    scan, so heat maps of a cached scan need not segment it again."""
    from aidnet.explain.maps import scan_calcium
    from aidnet.io.read import read_volume
    from aidnet.preprocess import calcium_candidates
    from aidnet.preprocess.geometry import CropGeometry

    records = read_manifest(cohort)
    config = PreprocessConfig(size=SIZE, **options)
    result = preprocess_cohort(records, tmp_path, config, progress=False)
    for record in records:
        cached = load_cached(result.done[record.key])
        volume = read_volume(record.path)
        expected = calcium_candidates(volume, config)
        assert expected.any() and cached.calcium is not None
        kept = cached.calcium_mask()
        assert kept is not None and np.array_equal(kept, expected)
        geometry = CropGeometry.from_dict(cached.geometry)
        assert np.array_equal(scan_calcium(cached, geometry, None), expected)


def test_cache_file_from_before_the_candidates_recomputes_them(cohort, tmp_path):
    from aidnet.explain.maps import scan_calcium
    from aidnet.io.read import read_volume
    from aidnet.preprocess import calcium_candidates
    from aidnet.preprocess.geometry import CropGeometry

    record = read_manifest(cohort)[0]
    config = PreprocessConfig(size=SIZE)
    path = preprocess_cohort([record], tmp_path, config, progress=False).done[record.key]
    cached = load_cached(path)
    save_cached(path, cached.image, cached.geometry, cached.config)  # as older files were
    older = load_cached(path)
    assert older.calcium is None and older.calcium_mask() is None
    geometry = CropGeometry.from_dict(older.geometry)
    volume = read_volume(record.path)
    assert np.array_equal(scan_calcium(older, geometry, volume), calcium_candidates(volume, config))
    with pytest.raises(ValueError, match="the scan is needed"):
        scan_calcium(older, geometry, None)


def test_cache_file_whose_candidates_do_not_fit_its_crop_is_unreadable(tmp_path):
    path = tmp_path / "P1_scan-0123.npz"
    geometry = {"crop_box": [0, 2, 0, 3, 0, 4], "original_shape": [2, 3, 4]}
    calcium = np.zeros((2, 3, 4), dtype=bool)
    calcium[1, 2, 3] = True
    save_cached(path, np.zeros((2, *SIZE), np.float32), geometry, calcium=calcium)
    assert load_cached(path).calcium.tolist() == [23]
    np.savez(path, image=np.zeros((2, *SIZE)), geometry=json.dumps(geometry), calcium=[24])
    with pytest.raises(AidnetError, match=f"{path}: unreadable cache file .*crop box"):
        load_cached(path)


def test_rerun_reuses_and_changed_config_does_not(cohort, tmp_path):
    records = read_manifest(cohort)
    first = preprocess_cohort(records, tmp_path, PreprocessConfig(size=SIZE), progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in first.done.values()}
    again = preprocess_cohort(records, tmp_path, SIZE, progress=False)  # same defaults
    assert again.reused == len(records) and again.done == first.done
    assert {p: p.stat().st_mtime_ns for p in again.done.values()} == stamps

    changed = PreprocessConfig(size=SIZE, hull_margin_mm=4.0)
    other = preprocess_cohort(records, tmp_path, changed, progress=False)
    assert other.reused == 0 and other.failures == {}
    assert set(other.done.values()).isdisjoint(first.done.values())
    for record in records:
        assert load_cached(other.done[record.key]).config["hull_margin_mm"] == 4.0
    assert {p: p.stat().st_mtime_ns for p in first.done.values()} == stamps  # old ones kept
    assert len(listing(tmp_path)) == 2 * len(records)


def test_changed_input_file_gets_a_new_cache_file(cohort, tmp_path):
    record = read_manifest(cohort)[0]
    before = cache_path(tmp_path, record, SIZE)
    stat = record.path.stat()
    os.utime(record.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert cache_path(tmp_path, record, SIZE) != before
    finally:
        os.utime(record.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_path(tmp_path, record, SIZE) == before


def test_unreadable_cache_file_says_what_to_do(tmp_path):
    bad = tmp_path / "P1_scan-0123.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(AidnetError, match="P1_scan-0123.npz: unreadable cache file.*delete it"):
        load_cached(bad)


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "end cut":  # only the zip directory's last bytes are lost
        path.write_bytes(data[:-10])
    else:
        path.write_bytes(b"PK\x03\x04 not really a zip")


@pytest.mark.parametrize("how", ["empty", "truncated", "end cut", "garbage"])
def test_cache_file_problem_names_an_unusable_file(tmp_path, how):
    path = tmp_path / "P1_scan-0123.npz"
    save_cached(path, np.zeros((2, *SIZE), np.float32), {"crop_box": [0, 1]}, {"a": 1})
    assert cache_file_problem(path) is None
    damage(path, how)
    problem = cache_file_problem(path)
    assert problem is not None and "\n" not in problem
    assert problem.startswith("empty file" if how == "empty" else "cut short")
    with pytest.raises(AidnetError, match="unreadable cache file"):
        load_cached(path)


def test_cache_file_keeps_the_noise_reading_and_older_files_have_none(tmp_path):
    from aidnet.data.cache_file import cached_noise

    image = np.zeros((2, *SIZE), np.float32)
    path = tmp_path / "P1_scan-0123.npz"
    save_cached(path, image, {"crop_box": [0, 1]}, {}, {"noise_hu": 78.5, "smoothed_mm": 1.0})
    assert load_cached(path).noise == {"noise_hu": 78.5, "smoothed_mm": 1.0}
    assert cached_noise(path) == {"noise_hu": 78.5, "smoothed_mm": 1.0}
    save_cached(path, image, {"crop_box": [0, 1]})  # a model without the noise ceiling
    assert load_cached(path).noise is None and cached_noise(path) is None
    np.savez(path, image=image, geometry="{}", config="{}")  # written before readings were kept
    assert cache_file_problem(path) is None
    assert load_cached(path).noise is None and cached_noise(path) is None


def test_cache_file_without_its_image_is_a_problem(tmp_path):
    path = tmp_path / "P1_scan-0123.npz"
    np.savez(path, geometry="{}")
    assert cache_file_problem(path) == "no image array"


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_unreadable_cache_file_is_computed_again(cohort, tmp_path, how):
    """A cache file cut short or empty is derived data: the job rebuilds it with a one-line note
    and the rebuilt file is the file a fresh run writes."""
    from cli_runner import invoke

    def preprocess(folder: Path):
        args = ["preprocess", str(cohort), "--out", str(folder), "--preset", "tiny"]
        return invoke(args)

    assert preprocess(tmp_path / "fresh").exit_code == 0
    cache = tmp_path / "cache"
    assert preprocess(cache).exit_code == 0
    damaged = sorted(cache.glob("*.npz"))[0]
    damage(damaged, how)
    result = preprocess(cache)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("aidnet: note:")]
    problem = "empty file" if how == "empty" else "cut short or not an npz file"
    assert len(notes) == 1 and notes[0].startswith(
        f"aidnet: note: {damaged}: unreadable cache file ({problem}"
    )
    assert notes[0].endswith("; computing it again")
    assert "2 of 2 scans preprocessed" in result.stdout and "(1 reused, 0 failed)" in result.stdout
    assert damaged.read_bytes() == (tmp_path / "fresh" / damaged.name).read_bytes()
    assert cache_file_problem(damaged) is None


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".tmp-abc.pid999999999.npz"  # above any pid_max: never alive
    mine = tmp_path / f".tmp-def{temp_suffix('.npz')}"
    other = tmp_path / "P1_scan-0123.npz"
    for path in (dead, mine, other):
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 1
    assert listing(tmp_path) == sorted([mine.name, other.name])


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (AidnetError("/d/a.nii: file is empty"), "/d/a.nii: file is empty"),
        (AidnetError("no lungs found: x"), "/d/a.nii: no lungs found: x"),
        (ValueError("bad\nsecond line"), "/d/a.nii: ValueError: bad"),
        (MemoryError(), "/d/a.nii: MemoryError"),
    ],
)
def test_failure_message_is_one_line_naming_the_file(exc, expected):
    assert failure_message(Path("/d/a.nii"), exc) == expected


def exit_at_once(item: int) -> int:
    os._exit(3)  # a worker killed (out of memory, say) mid-scan


def test_pool_reports_items_of_a_dead_worker_as_lost():
    results = run_unordered(exit_at_once, [1, 2], 2, lost=lambda item, exc: -item)
    assert sorted(results) == [-2, -1]


def test_qc_image_shows_lungs_and_crop_box(tmp_path):
    import matplotlib.image

    from aidnet.lung import segment_lungs
    from aidnet.preprocess import preprocess_volume
    from aidnet.preprocess.qc import lung_centre, write_qc
    from test_lung import synthetic_chest

    volume, truth = synthetic_chest((40, 64, 64), (6.0, 6.0, 6.0))
    z, y, x = lung_centre(truth)
    zz, yy, xx = np.nonzero(truth)
    assert (z, y, x) == tuple(int(round(v.mean())) for v in (zz, yy, xx))
    lungs = segment_lungs(volume)
    sample = preprocess_volume(volume, SIZE, lungs=lungs)
    path = write_qc(tmp_path / "qc" / "P1_scan.png", volume, lungs, sample.geometry.crop_box, "P1")
    assert listing(tmp_path / "qc") == ["P1_scan.png"]
    rgb = matplotlib.image.imread(path)[..., :3]
    assert rgb.shape == (480, 1000, 3)
    orange = (rgb[..., 0] > 0.9) & (np.abs(rgb[..., 1] - 0.69) < 0.1) & (rgb[..., 2] < 0.2)
    cyan = (rgb[..., 0] < 0.2) & (rgb[..., 1] > 0.8) & (rgb[..., 2] > 0.9)
    assert orange.sum() > 500 and cyan.sum() > 500  # crop box and lung contour drawn
    left, right = orange[:, :500], orange[:, 500:]
    assert left.sum() > 200 and right.sum() > 200  # on both the axial and the coronal view
