"""The two big arrays of one store file, read by box: ``/images`` (``which`` 0) and ``/labels``
(``which`` 1).

Volume stores: ``/images`` ``(N, X, Y, Z, C)``, ``/labels`` ``(N, X, Y, Z)`` uint8; slice stores:
``/images`` ``(R, H, W, C)``, ``/labels`` ``(R, H, W)`` uint8, one row a slice.  Image values are
what is stored (float16|float32, or int16 that the reader decodes: :mod:`braintseg.store.codec`).

A box is read directly (:mod:`braintseg.store.chunks`: ``pread`` + Blosc, any thread, no HDF5
call) once its chunks were verified in this process, else through HDF5 (which verifies the
checksums, and the chunks are marked verified).  The HDF5 handle opens lazily in each process
(after a fork the child opens its own); every HDF5 call is under :data:`HDF5_LOCK`.  Every read
error becomes one :func:`~braintseg.store.header.damaged` DataError naming the store and what
was read (``what``, e.g. ``case BraTS_001``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tables
from numpy.typing import NDArray

from braintseg.store.chunks import ChunkReader
from braintseg.store.codec import move_to_front
from braintseg.store.header import READ_ERRORS, damaged, open_read, quiet_hdf5

logger = logging.getLogger(__name__)

#: HDF5 chunk cache per open store (decompressed chunks); one slab of chunks in any view fits
CHUNK_CACHE_BYTES = 64 * 2**20
#: HDF5/PyTables is not thread-safe: every read of an open store happens under this lock
HDF5_LOCK = threading.RLock()
#: ``0`` turns direct chunk reads off (every read through HDF5, as before): for benchmarks
DIRECT_ENV = "BRAINTSEG_DIRECT_READS"


class StoreArrays:
    """``/images`` and ``/labels`` of the store at ``path``, read by box (see the module).

    Holds no open file until the first read, and nothing of another process: pickling a
    :class:`~braintseg.store.read.SliceStore` sends its path only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._h: tables.File | None = None
        self._pid = -1
        self._chunked: tuple[ChunkReader, ChunkReader] | None = None
        self._chunked_pid = -1

    def _handle(self) -> tables.File:
        quiet_hdf5()
        if self._h is None or self._pid != os.getpid():
            self._h = open_read(self.path, chunk_cache_size=CHUNK_CACHE_BYTES,
                                chunk_cache_nelmts=100_003)
            self._pid = os.getpid()
        return self._h

    @property
    def is_open(self) -> bool:
        """This process holds an open HDF5 handle of the store."""
        return self._h is not None and self._pid == os.getpid()

    def close(self) -> None:
        """Close this process's handle and direct readers (reopened on next use)."""
        if self._h is not None and self._pid == os.getpid():
            with HDF5_LOCK:
                self._h.close()
        self._h = None
        if self._chunked is not None and self._chunked_pid == os.getpid():
            for reader in self._chunked:
                reader.close()
        self._chunked, self._chunked_pid = None, -1

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[tables.File]:
        """The open handle, under :data:`HDF5_LOCK`; a read error names the store and ``what``."""
        try:
            with HDF5_LOCK:
                yield self._handle()  # quiets HDF5 in this thread
        except READ_ERRORS as exc:
            self.close()  # reopened on next use; none left for PyTables to warn about at exit
            raise damaged(self.path, what, exc) from None

    def _readers(self) -> tuple[ChunkReader, ChunkReader] | None:
        """Direct chunk readers of ``/images`` and ``/labels`` (:mod:`braintseg.store.chunks`),
        built once a process; None where the store's filters are not supported or
        ``BRAINTSEG_DIRECT_READS=0``.  Reads then need no HDF5 call, so threads read at once."""
        if self._chunked_pid == os.getpid():
            return self._chunked
        with HDF5_LOCK:  # (_open_readers opens the handle: HDF5 quieted for this thread)
            if self._chunked_pid != os.getpid():
                self._chunked = self._open_readers()
                self._chunked_pid = os.getpid()
        return self._chunked

    def _open_readers(self) -> tuple[ChunkReader, ChunkReader] | None:
        if os.environ.get(DIRECT_ENV, "1") == "0":
            return None
        try:
            h = self._handle()
            images = ChunkReader.open(self.path, "images", h.root.images.shape)
            labels = ChunkReader.open(self.path, "labels", h.root.labels.shape)
        except ImportError as exc:
            logger.debug("%s: direct chunk reads off (%s)", self.path, exc)
            return None
        except READ_ERRORS as exc:  # e.g. "wrong B-tree signature": the index is damaged
            self.close()  # no open handle left for PyTables to warn about at exit
            raise damaged(self.path, "the chunk index", exc) from None
        if images is None or labels is None:
            return None
        # a check that costs one chunk: the first one read both ways must agree
        for reader, node in ((images, h.root.images), (labels, h.root.labels)):
            box = tuple(slice(0, min(c, s)) for c, s in zip(reader.chunks, reader.shape,
                                                              strict=True))
            try:
                expected = node[box]
            except READ_ERRORS:  # damaged right there: the direct reader will say so
                continue
            try:
                same = np.array_equal(reader.read(box), expected)
            except READ_ERRORS:
                same = False
            if not same:
                logger.warning("%s: direct chunk reads disagree with HDF5 on /%s; reading "
                               "through HDF5", self.path, node.name)
                return None
        return images, labels

    def direct_readers(self) -> tuple[ChunkReader, ChunkReader] | None:
        """This process's direct readers of ``/images`` and ``/labels`` (built on first use; a
        damaged chunk index raises the "damaged" DataError), or None: reads go through HDF5."""
        return self._readers()

    def chunk_counts(self) -> tuple[int, int]:
        """Chunks in the grids of ``/images`` and ``/labels``."""
        with self._reading("the chunk grid") as h:
            return tuple(  # type: ignore[return-value]
                int(np.prod([-(-s // c) for s, c in zip(node.shape, node.chunkshape,
                                                           strict=True)]))
                for node in (h.root.images, h.root.labels))

    def share_verified(self, images: NDArray[np.uint8], labels: NDArray[np.uint8]) -> bool:
        """Keep the direct readers' verified-chunk tables in ``images`` / ``labels`` (one byte
        a chunk, see :meth:`chunk_counts`); False where reads go through HDF5."""
        readers = self._readers()
        if readers is None:
            return False
        readers[0].share_verified(images)
        readers[1].share_verified(labels)
        return True

    def _direct(self, what: str, which: int, box: tuple[slice, ...],
                order: list[int] | None = None, out: NDArray[Any] | None = None
                ) -> NDArray[Any] | None:
        """``/images`` (``which`` 0) or ``/labels`` (1) ``[box]``, transposed to ``order``, read
        directly — or None when a chunk of the box was not read yet in this process: the
        caller then reads through HDF5 (:meth:`_hdf5`, which verifies the checksums; see
        :mod:`braintseg.store.chunks`).  Only after :meth:`_readers` returned readers."""
        reader = self._chunked[which]  # type: ignore[index]
        try:
            return reader.read(box, order, only_verified=not reader.self_verifies, out=out)
        except READ_ERRORS as exc:
            raise damaged(self.path, what, exc) from None

    def _hdf5(self, what: str, which: int, box: tuple[slice, ...]) -> NDArray[Any]:
        """``[box]`` of ``/images`` or ``/labels`` through HDF5; marks its chunks verified."""
        with self._reading(what) as h:
            data = (h.root.images, h.root.labels)[which][box]
        if self._chunked is not None and self._chunked_pid == os.getpid():
            self._chunked[which].mark_verified(box)
        return data

    def volume(self, what: str, i: int, which: int, axis: int | None, start: int = 0,
               stop: int = 0, first: bool = True, out: NDArray[Any] | None = None
               ) -> NDArray[Any]:
        """Case ``i`` of a volume store's ``/images`` (``which`` 0: ``(X, Y, Z, C)``) or
        ``/labels`` (1: ``(X, Y, Z)``): all of it (``axis`` None), or slices ``start:stop``
        along ``axis`` — with that axis first (``first``; the channels stay last), else in the
        stored order.  ``out``: where a direct read may write the result (the caller checks
        whether it did)."""
        readers = self._readers()
        box = [slice(i, i + 1), slice(None), slice(None), slice(None)]
        if readers is not None:
            box = [slice(i, i + 1)] + [slice(0, s) for s in readers[which].shape[1:]]
        if axis is not None:
            box[1 + axis] = slice(start, stop)
        order = None
        if axis is not None and first:
            order = [0, 1 + axis, *(1 + a for a in range(3) if a != axis), 4][:4 + (which == 0)]
        direct_out = None if out is None or order is None else out[None]
        data = (self._direct(what, which, tuple(box), order, direct_out) if readers is not None
                else None)
        if data is not None:
            return data[0]
        data = self._hdf5(what, which, tuple(box))[0]
        if order is None:
            return data
        if which == 0:  # the channels move as one wide element
            return move_to_front(data, axis)
        return np.ascontiguousarray(np.moveaxis(data, axis, 0))

    def rows(self, what: str, start: int, stop: int) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        """Rows ``start:stop`` of a slice store: ``(images (n, H, W, C), labels (n, H, W))``."""
        readers = self._readers()
        if readers is not None:
            out = []
            for which, reader in enumerate(readers):
                box = (slice(start, stop), *(slice(0, s) for s in reader.shape[1:]))
                data = self._direct(what, which, box)
                out.append(self._hdf5(what, which, box) if data is None else data)
            return out[0], out[1]
        with self._reading(what) as h:
            return h.root.images[start:stop], h.root.labels[start:stop]
