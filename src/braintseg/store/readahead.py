"""Stream-mode block read-ahead: store reads in the epoch's order on a few threads.

The HDF5 file keeps one reader: every HDF5 call still happens under
:data:`braintseg.store.arrays.HDF5_LOCK`, so at most one thread is inside HDF5 at a time.  What
runs in parallel is the rest of a block read — the transpose of a block into slice-first order
(and the int16 decoding) after the locked read, numpy releasing the GIL — and the batch
thread's gather, so the locked decompression is the only serial part.

Blocks are requested in the order the epoch first uses them (known from the plan), at most
``ahead`` blocks read or in flight beyond the oldest one still held; the consumer drops the
blocks of a finished shuffle window.  Content never depends on timing: a block is the same
array whichever thread read it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class BlockReadAhead(Generic[T]):
    """Reads ``read(b)`` for ``b`` in ``order`` on ``threads`` threads, ``ahead`` blocks ahead.

    Use from one consumer thread: :meth:`get` blocks until a block is read (and raises its
    read error), :meth:`drop` forgets blocks, :meth:`close` stops the threads.  ``release`` (if
    given) is called once for every block read and then dropped or closed (a read still running
    is released when it ends), e.g. to reuse its shared memory.
    """

    def __init__(self, read: Callable[[int], T], order: Sequence[int], ahead: int,
                 threads: int, release: Callable[[T], None] | None = None) -> None:
        self._read, self._order, self._release = read, list(order), release
        self._position = {b: k for k, b in enumerate(self._order)}
        self._ahead = max(1, ahead)
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="braintseg-block")
        self._futures: dict[int, Future[T]] = {}
        self._submitted = 0  # order[:submitted] were submitted (some maybe dropped since)
        self._lock = threading.Lock()

    def _fill(self, upto: int) -> None:
        """Submit blocks of ``order`` up to index ``upto`` (inclusive) + ``ahead``."""
        stop = min(len(self._order), upto + 1 + self._ahead)
        while self._submitted < stop:
            b = self._order[self._submitted]
            self._futures[b] = self._pool.submit(self._read, b)
            self._submitted += 1

    def get(self, b: int) -> T:
        """Block ``b`` (read now if it is not in ``order`` or was dropped)."""
        with self._lock:
            k = self._position.get(b)
            if k is not None:
                self._fill(k)
            future = self._futures.get(b)
        if future is None:  # held like the others, so that it is released with them
            block = self._read(b)
            future = Future()
            future.set_result(block)
            with self._lock:
                old = self._futures.pop(b, None)
                if old is not None:
                    self._forget(old)
                self._futures[b] = future
            return block
        return future.result()

    def drop(self, blocks: Sequence[int]) -> None:
        """Forget ``blocks`` (a finished window); later reads are submitted in their place."""
        with self._lock:
            for b in blocks:
                future = self._futures.pop(b, None)
                if future is not None:
                    self._forget(future)

    def _forget(self, future: Future[T]) -> None:
        if not future.cancel() and self._release is not None:
            release = self._release

            def done(f: Future[T]) -> None:
                if not f.cancelled() and f.exception() is None:
                    release(f.result())

            future.add_done_callback(done)  # runs now if the read has ended

    def held(self) -> list[int]:
        """Blocks submitted and not dropped."""
        with self._lock:
            return list(self._futures)

    def close(self) -> None:
        """Cancel what has not started and wait for the threads."""
        with self._lock:
            for future in self._futures.values():
                self._forget(future)
            self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
