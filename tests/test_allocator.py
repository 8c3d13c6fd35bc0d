"""Freed memory stays in the process (aidnet.allocator): no page faults for a re-allocation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aidnet import allocator

# allocate and fill 64 MiB (above glibc's largest mmap threshold, 32 MiB) eleven times; print
# the minor page faults of the last three (with the heap, aligned allocations settle in the
# first five)
SCRIPT = """
import resource, sys, torch
from aidnet.allocator import keep_freed_memory
print(keep_freed_memory())
def touch():
    return float(torch.ones(16 * 2**20)[::1024].sum())
for _ in range(8):
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
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
