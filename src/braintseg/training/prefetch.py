"""Batches made ahead of the consumer: :class:`BatchReader`, a thread that makes batches
``start, start+1, …`` of one epoch into a bounded queue, and :class:`SyncBlocks`, the blocks of a
batch read on the asking thread.

A *block* is whatever the dataset's block reader returns for a block index (a tuple of image
and label arrays, or a shared-memory block of a worker process); a *block source* is an object
with ``get(b)``, ``drop(blocks)``, ``held()`` and ``close()``: :class:`SyncBlocks` or
:class:`~braintseg.store.readahead.BlockReadAhead`.  An error while making a batch reaches the
consumer when it asks for that batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from braintseg.store.readahead import BlockReadAhead


class SyncBlocks:
    """Blocks read when first asked for, on the asking thread (RAM mode, direct reads)."""

    def __init__(self, read: Callable[[int], Any]) -> None:
        self._read, self._blocks = read, {}  # type: ignore[var-annotated]

    def get(self, b: int) -> Any:
        if b not in self._blocks:
            self._blocks[b] = self._read(b)
        return self._blocks[b]

    def drop(self, blocks: list[int]) -> None:
        for b in blocks:
            self._blocks.pop(b, None)

    def held(self) -> list[int]:
        return list(self._blocks)

    def close(self) -> None:
        self._blocks.clear()


Blocks = SyncBlocks | BlockReadAhead[Any]


class BatchReader:
    """A thread that makes batches ``start, start+1, …, n_batches - 1`` of ``epoch`` into a
    queue of ``depth`` batches.

    Args:
        blocks: ``(epoch, start) -> block source`` for the batches from ``start`` on (closed
            when the thread ends).
        make: ``(epoch, i, blocks) -> batch``.
    """

    def __init__(self, blocks: Callable[[int, int], Blocks],
                 make: Callable[[int, int, Blocks], Any], n_batches: int, epoch: int,
                 start: int, depth: int) -> None:
        self.epoch, self.next = epoch, start
        self.queue: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(blocks, make, n_batches),
                                       daemon=True, name="braintseg-reader")
        self.thread.start()

    def _run(self, make_blocks: Callable[[int, int], Blocks],
             make: Callable[[int, int, Blocks], Any], n_batches: int) -> None:
        blocks = make_blocks(self.epoch, self.next)
        try:
            for i in range(self.next, n_batches):
                try:
                    item: Any = make(self.epoch, i, blocks)
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                    item = exc
                while not self.stop_event.is_set():
                    try:
                        self.queue.put((i, item), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if self.stop_event.is_set() or isinstance(item, BaseException):
                    return
        finally:
            blocks.close()

    def get(self) -> Any:
        """The next batch (waits for it); re-raises the error that making it raised."""
        while True:
            try:
                i, item = self.queue.get(timeout=1.0)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the slice reader thread stopped unexpectedly") from None
                continue
            self.next = i + 1
            if isinstance(item, BaseException):
                raise item
            return item

    def stop(self) -> None:
        """Stop the thread and wait for it (its block source is closed)."""
        self.stop_event.set()
        self.thread.join()
