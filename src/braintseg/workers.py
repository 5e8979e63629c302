"""Worker processes for ``prepare``: a start method that never re-imports ``__main__``, workers
that end with their parent, and an ordered, bounded ``map``.

Start method (:func:`loader_pool`):

* ``fork`` when this process runs no other Python thread and has not imported TensorFlow, JAX
  or PyTorch (:func:`fork_is_safe`; the CLI, or a script before its ``train``): workers do not
  re-import ``__main__``, so a plain script without an ``if __name__ == "__main__":`` guard may
  call ``prepare``; the pool is created before any HDF5 file is opened, and the
  children only read NIfTI files.
* otherwise ``forkserver`` (fork is unsafe beside running threads), unless ``__main__`` is a
  script file that the workers would re-import: then one loader thread in this process instead.

Parent death: each worker asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, Linux), exits at once if the parent is already gone, and a daemon
thread polls the parent's pid every :data:`PARENT_POLL_SECONDS` (other systems, forkserver).  A
``kill -9`` of ``prepare`` thus leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from braintseg.atomic import pid_alive
from braintseg.errors import DataError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: how often a worker checks that the process that started it still runs
PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when process ``parent`` ends (see module doc).

    Ctrl-C is left to the parent (it cancels the pool; a worker finishes its case and exits),
    so the terminal's SIGINT to the whole group prints no worker traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    started_by = os.getppid()  # the parent itself (fork), or the forkserver
    if not pid_alive(parent):  # died before the request above took effect
        os._exit(1)

    def watch() -> None:
        while pid_alive(parent) and os.getppid() == started_by:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="braintseg-parent-watch", daemon=True).start()


#: runtimes whose own (C++) threads and device handles make a fork unsafe once imported
FORK_UNSAFE_MODULES = ("tensorflow", "jax", "torch")


def fork_is_safe() -> bool:
    """No other Python thread runs and no deep-learning runtime is loaded (numpy's and Blosc's
    native pools are fork-safe, and the children only read NIfTI files)."""
    return (threading.active_count() == 1
            and not any(m in sys.modules for m in FORK_UNSAFE_MODULES))


def _main_is_reimported() -> bool:
    """True when spawn/forkserver children would run ``__main__`` again (a plain script)."""
    main = sys.modules.get("__main__")
    return (main is not None and getattr(main, "__spec__", None) is None
            and getattr(main, "__file__", None) is not None)


@contextlib.contextmanager
def loader_pool(workers: int) -> Iterator[tuple[Executor, int]]:
    """``(executor, results in flight)`` for :func:`imap_bounded`; shut down on exit.

    One worker is a thread: it loads the next case while the caller writes this one (NIfTI
    decompression and numpy release the GIL).  Create the pool before opening any HDF5 file.
    """
    methods = multiprocessing.get_all_start_methods()
    method = ("fork" if "fork" in methods and fork_is_safe()
              else None if _main_is_reimported()
              else "forkserver" if "forkserver" in methods else "spawn")
    if workers > 1 and method is None:
        logger.debug("loading cases in this process (worker processes are not used once "
                     "TensorFlow/JAX is loaded or other threads run, when they would re-run the "
                     "script %s)", getattr(sys.modules["__main__"], "__file__", "__main__"))
    if workers <= 1 or method is None:
        with ThreadPoolExecutor(1, thread_name_prefix="braintseg-load") as ex:
            yield ex, 1
        return
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([__name__])  # not __main__
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent,
                               initargs=(os.getpid(),))
    try:
        pool.submit(int).result()  # fork every worker now, while no HDF5 file is open
        yield pool, workers
    finally:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except RuntimeError:  # interrupted before its manager thread started: nothing to join
            pool.shutdown(wait=False, cancel_futures=True)


def imap_bounded(fn: Callable[[T], R], items: Sequence[T], pool: Executor, ahead: int,
                 describe: Callable[[T], str] = str) -> Iterator[R]:
    """``map(fn, items)`` on ``pool``, in order, with at most ``ahead`` results in flight.

    Raises:
        DataError: a worker process died (killed, out of memory); names ``describe(item)`` of
            every item in flight (one of them was being read by the dead worker).
    """
    pending: deque[tuple[T, Future[R]]] = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= ahead:
                break
        while pending:
            item, fut = pending.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:  # every pending future fails: name all in flight
                names = ", ".join(describe(x) for x in (item, *(x for x, _ in pending)))
                raise DataError(f"a worker process died (killed, or out of memory: try fewer "
                                f"--workers) while these were read: {names}") from None
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield result
    finally:
        for _, fut in pending:
            fut.cancel()
