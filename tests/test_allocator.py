"""Freed memory stays in the process (aidnet.allocator): no page faults for a re-allocation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aidnet import allocator

# allocate and fill 64 MiB (above glibc's largest mmap threshold, 32 MiB) twenty times and print
# the fewest minor page faults of any three rounds in a row: with the heap kept, aligned
# allocations settle within a few rounds (how many varies from run to run); with glibc's default
# every round page-faults all 16 Ki pages again
SCRIPT = """
import resource, torch
from aidnet.allocator import keep_freed_memory
print(keep_freed_memory())
def touch():
    return float(torch.ones(16 * 2**20)[::1024].sum())
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(sum(faults[i:i + 3]) for i in range(len(faults) - 2)))
"""


def _faults(malloc: str) -> tuple[bool, int]:
    env = {**os.environ, "AIDNET_MALLOC": malloc}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    kept, kept_faults = _faults("")
    system, system_faults = _faults("system")
    assert kept and not system
    if system_faults < 3000:  # 3 × 16 Ki pages of 4 KiB; fewer with transparent huge pages
        pytest.skip(f"only {system_faults} page faults without it: nothing to save here")
    assert kept_faults * 10 < system_faults


def test_aidnet_malloc_system_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("AIDNET_MALLOC", "System ")
    assert allocator.keep_freed_memory() is False


def _fewest_faults(_: int) -> int:
    """The SCRIPT's measurement, in whatever process runs it."""
    import resource

    import torch

    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        float(torch.ones(16 * 2**20)[::1024].sum())
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(sum(faults[i : i + 3]) for i in range(len(faults) - 2))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_pool_workers_keep_freed_memory_like_their_parent(monkeypatch):
    """A spawned worker starts with glibc's own malloc; the pool's initializer applies ours."""
    from aidnet.data.pool import run_unordered

    def faults(malloc: str) -> list[int]:
        monkeypatch.setenv("AIDNET_MALLOC", malloc)  # the workers inherit the environment
        return list(run_unordered(_fewest_faults, [0, 1], 2, lost=lambda *_: -1))

    kept, system = faults(""), faults("system")
    assert min(kept + system) >= 0, (kept, system)
    if min(system) < 3000:
        pytest.skip(f"only {system} page faults without it: nothing to save here")
    assert max(kept) * 10 < min(system), (kept, system)
