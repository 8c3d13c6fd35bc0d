"""Shared test fixtures, and the suite's time at the end of every run."""

import time

import numpy as np
import pytest

from aidnet.io.volume import Volume, canonical_affine

_STARTED = pytest.StashKey[float]()
_SLOW = pytest.StashKey[set[str]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STARTED] = time.perf_counter()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_SLOW] = {item.nodeid for item in items if item.get_closest_marker("slow")}


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """One line: the session's wall time, and how much of it the tests marked slow took (the
    durations pytest reports: setup + call + teardown of each test)."""
    if _STARTED not in config.stash:
        return
    wall = time.perf_counter() - config.stash[_STARTED]
    reports = [
        report
        for group in terminalreporter.stats.values()
        for report in group
        if isinstance(report, pytest.TestReport)
    ]
    if not reports:
        return
    slow = [report for report in reports if report.nodeid in config.stash.get(_SLOW, set())]
    count = len({report.nodeid for report in slow})
    terminalreporter.write_line(
        f"suite time: {wall:.1f} s (tests {sum(report.duration for report in reports):.1f} s;"
        f" slow tests: {sum(report.duration for report in slow):.1f} s in {count} test"
        + ("" if count == 1 else "s")
        + ")"
    )


@pytest.fixture
def head_ct() -> Volume:
    """A skull of bone around brain tissue with an air-filled sinus: a CT with no lungs."""
    shape, spacing = (30, 64, 64), (4.0, 3.0, 3.0)
    z, y, x = np.meshgrid(*(np.arange(n) - n / 2 for n in shape), indexing="ij")
    r = np.sqrt((z * 4.0 / 90) ** 2 + (y * 3.0 / 95) ** 2 + (x * 3.0 / 75) ** 2)
    hu = np.where(r <= 1.0, 700.0, -1000.0)
    hu[r <= 0.93] = 35.0
    sinus = np.sqrt((z * 4.0) ** 2 + ((y + 7) * 3.0) ** 2 + (x * 3.0) ** 2) <= 12
    hu[sinus] = -1000.0
    return Volume(hu.astype(np.float32), spacing, canonical_affine(spacing))
