"""Keep freed memory in the process: CPU training and inference without page faults.

glibc's malloc gives each allocation above 32 MiB its own fresh pages from the system and
returns them when it is freed. A 3-D network's activations are such allocations at the paper's
input size, so every training step and every scan would page-fault its whole working set
again. ``aidnet`` therefore asks glibc, at start, to serve every allocation from its heap and
never to trim it. The cost: the process keeps its peak memory until it exits. Figures:
docs/results.md.

``AIDNET_MALLOC=system`` leaves glibc as it is (a preloaded jemalloc or tcmalloc is not
affected either way).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve every allocation from its heap (no ``mmap``) and never to
    give freed memory back (no trimming). Returns whether it took effect: False off Linux,
    without glibc, or with ``AIDNET_MALLOC=system``."""
    if os.environ.get("AIDNET_MALLOC", "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version.restype = ctypes.c_char_p  # glibc only (not musl)
        if not libc.gnu_get_libc_version():
            return False
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # -1: "disables trimming completely" (mallopt(3)); 0: no allocation through mmap
    return bool(mallopt(M_TRIM_THRESHOLD, -1)) and bool(mallopt(M_MMAP_MAX, 0))
