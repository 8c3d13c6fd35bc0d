"""Run a function over items in single-threaded "spawn" processes, yielding results as they come.

Only the standard library is imported here: a spawned worker imports this module before its
initializer runs, and the thread limits must be set before numpy or torch are loaded.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


#: How often (seconds) a worker checks that the process that started it is still there.
PARENT_CHECK_S = 0.5


def init_worker(parent: int | None = None) -> None:
    """One thread per worker (the pool is the parallelism); Ctrl-C is the parent's to handle;
    the parent's malloc policy (a spawned process starts with glibc's own, so without this a
    worker page-faults every large buffer of every scan that the parent would not); and when
    ``parent`` (its process id) is gone — killed, or stopped by the out-of-memory killer — the
    worker exits instead of idling on as an orphan that holds its memory."""
    from aidnet.allocator import keep_freed_memory

    if parent is not None:
        _exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - shipped with scikit-learn
        return
    threadpool_limits(limits=1)


def _exit_with_parent(parent: int) -> None:
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)  # what it was writing is a temporary file; the rerun redoes that item

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="aidnet-parent-watch", daemon=True).start()


def run_unordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    lost: Callable[[T, BaseException], R],
) -> Generator[R, None, None]:
    """``fn(item)`` for every item, in completion order.

    ``workers`` = 1 runs in this process. Otherwise a pool of ``workers`` spawned processes runs
    them; ``lost(item, exc)`` stands in for the result of an item whose call raised in the pool
    machinery (a worker killed by the out-of-memory killer, say). When the caller stops early or
    Ctrl-C arrives, pending items are cancelled and the workers are terminated at once.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    from concurrent.futures import as_completed

    with process_pool(min(workers, len(items))) as pool:
        futures = {pool.submit(fn, item): item for item in items}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:
                result = lost(futures[future], exc)
            yield result


class _Pool:
    """A ``ProcessPoolExecutor`` whose workers start (in ``submit``) with Ctrl-C blocked."""

    def __init__(self, executor) -> None:
        self._executor = executor

    def submit(self, fn, *args):
        with _sigint_blocked():
            return self._executor.submit(fn, *args)


@contextmanager
def process_pool(workers: int) -> Iterator[_Pool]:
    """A pool of ``workers`` spawned single-threaded processes (:func:`init_worker`) for
    ``submit``. Left normally, it waits for what was submitted; left early (an exception,
    Ctrl-C, the caller of a generator stopping), pending work is cancelled and the workers are
    terminated at once."""
    from concurrent.futures import ProcessPoolExecutor

    before = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(
        max_workers=max(1, workers),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(os.getpid(),),
    )
    finished = False
    try:
        yield _Pool(executor)
        finished = True
    finally:
        executor.shutdown(wait=finished, cancel_futures=True)
        if not finished:
            _stop([p for p in multiprocessing.active_children() if p not in before])


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while it runs; a Ctrl-C meanwhile arrives right after.

    Children inherit the blocked mask (through fork and exec), so a Ctrl-C while a worker
    still imports cannot print a traceback before :func:`init_worker` ignores it.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop(processes: list) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
