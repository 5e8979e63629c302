"""Direct chunk reads of a finished store: no HDF5 call after the chunk index, any thread.

A store is immutable once ``prepare`` has committed it, so where each chunk lies in the file
never changes.  :class:`ChunkReader` asks HDF5 once for the whole index of one dataset
(offset, size and filter mask of every stored chunk: one ``H5Dchunk_iter`` pass, a few µs a
chunk), then reads any box of the dataset without the HDF5 library: ``os.pread`` of each chunk's
bytes, Blosc decompression (a context per call, the GIL released) straight into a buffer, and
one transposing copy into the box's layout.  Nothing is shared but read-only arrays and a file
descriptor used only with ``pread``, so several threads read at once — HDF5 itself stays
single-threaded (every HDF5 call of the package is under
:data:`braintseg.store.arrays.HDF5_LOCK`), which is the design's "one reader" rule: parallel HDF5
access is what crashed the pipeline we replace.

Checksums: a chunk's Fletcher-32 is verified once per process, the first time the chunk is
read.  :meth:`ChunkReader.read` verifies any unverified chunk itself (:func:`fletcher32_matches`,
exactly HDF5's sum); for small or uncompressed chunks (``self_verifies`` False) HDF5's C
checksum is cheaper, so :class:`~braintseg.store.read.SliceStore` reads a box with unverified
chunks through HDF5 and marks them (:meth:`ChunkReader.mark_verified`).  Either way a damaged
chunk is refused on its first read, as with HDF5 alone, and later epochs pay no checksum.
Readers of one file in several processes may share that table (:meth:`ChunkReader.share_verified`).

Supported filter pipelines (what ``prepare`` writes): none, ``fletcher32``, ``blosc``
(any Blosc-1 codec; Blosc does its own shuffle) and ``blosc`` + ``fletcher32``.  Anything else
(zlib, the ``blosc2`` filter, HDF5's shuffle filter, ...) makes :meth:`ChunkReader.open` return
None, and the store reads through PyTables as before.  Chunks a filter skipped (Blosc stores an
incompressible chunk raw: filter-mask bit set) and chunks never written (the fill value) are
handled.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.store.codec import WIDE  # a trailing axis moved as one wide element

try:
    import blosc2

    blosc2.set_releasegil(True)  # decompress2 then runs without the GIL
    # the global context decodes small chunks: Blosc's own threads cost more than they bring
    # there (a 32 KB chunk of 8 KB blocks: ~60 µs of thread hand-offs instead of ~5 µs)
    blosc2.set_nthreads(1)
    _decompress, _decompress_small = blosc2.decompress2, blosc2.decompress
except ImportError:  # pragma: no cover - blosc2 comes with tables >= 3.8
    _decompress = _decompress_small = None

#: HDF5 filter ids (H5Zpublic.h) and PyTables' registered Blosc filter
FLETCHER32, BLOSC = 3, 32001
#: compressed chunks of at least this many bytes (LGG's 384 KB slices) have their checksum
#: verified by numpy here on first read (first LZ4 pass 620 -> 1,043 slices per CPU s);
#: smaller ones (BraTS' 32 KB cubes) and uncompressed ones are first read through HDF5, whose
#: C checksum wins there (scripts/bench_slices.py, scripts/bench_train.py)
SELF_VERIFY_BYTES = 256 * 1024
#: compressed chunks below this many bytes decode in Blosc's global context (GIL held)
SMALL_CHUNK = 4096
#: words per piece of the vectorised Fletcher-32: every float64 partial sum stays exact
#: (65535 * n * n / 2 < 2**53 for n <= 2**18)
_PIECE = 2**18
_DESCENDING = np.arange(_PIECE, 0, -1, dtype=np.float64)  # n, n-1, ..., 1 (a view's tail)


class ChunkError(ValueError):
    """A chunk cannot be read: short read, bad checksum, or a Blosc buffer that does not decode."""


def fletcher32_matches(body: bytes | memoryview, stored: bytes) -> bool:
    """True if ``stored`` (4 bytes, as HDF5's fletcher32 filter appends them) is the checksum
    of ``body``.

    HDF5's ``H5_checksum_fletcher32``: 16-bit big-endian words (an odd last byte is the high
    byte of a word), ``sum1 = Σ w`` and ``sum2 = Σ (m - i) w_i`` modulo 65535, stored
    little-endian as ``sum2 << 16 | sum1``.  HDF5 may write 0xFFFF for a sum ≡ 0, so both are
    compared modulo 65535.
    """
    n = len(body)
    words = np.frombuffer(body, ">u2", count=n // 2).astype(np.float64)
    if n % 2:
        words = np.append(words, float(bytes(body[-1:])[0] << 8))
    m = len(words)
    s1 = s2 = 0
    for j0 in range(0, m, _PIECE):  # piece [j0, j0 + L): Σ (m - i) w_i
        piece = words[j0:j0 + _PIECE]
        total = int(piece.sum())
        s1 += total
        weighted = np.multiply(piece, _DESCENDING[_PIECE - len(piece):])  # no BLAS (threads)
        s2 += (m - j0 - len(piece)) * total + int(weighted.sum())
    value = int.from_bytes(stored, "little")
    return (value & 0xFFFF) % 65535 == s1 % 65535 and (value >> 16) % 65535 == s2 % 65535


class ChunkReader:
    """Boxes of one chunked dataset of a finished HDF5 file, read without HDF5 (thread-safe).

    Attributes:
        shape, chunks: the dataset's shape and chunk shape (tuples of int).
        dtype: its numpy dtype (little-endian as stored).
    """

    def __init__(self, path: Path, shape: tuple[int, ...], chunks: tuple[int, ...],
                 dtype: np.dtype[Any], fill: Any, blosc: int | None, fletcher: int | None,
                 index: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.uint32]]) -> None:
        self.path, self.shape, self.chunks, self.dtype = path, shape, chunks, dtype
        self._fill, self._blosc, self._fletcher = fill, blosc, fletcher
        self._offset, self._size, self._mask = index
        self._grid = tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))
        self._chunk_bytes = int(np.prod(chunks)) * dtype.itemsize
        #: checksums verified here rather than by a first read through HDF5: for large chunks
        #: numpy's per-call cost is amortised (see :data:`SELF_VERIFY_BYTES`)
        self.self_verifies = blosc is not None and self._chunk_bytes >= SELF_VERIFY_BYTES
        self._verified = np.zeros(len(self._offset), np.uint8)
        self._fd = os.open(path, os.O_RDONLY)

    @classmethod
    def open(cls, path: Path, name: str, shape: Sequence[int] | None = None
             ) -> ChunkReader | None:
        """The reader of dataset ``/name`` in ``path``, or None if its filter pipeline (or this
        h5py/HDF5) is not supported.  Reads the chunk index (call under the HDF5 lock).

        Raises:
            ChunkError: the dataset's shape is not ``shape`` (what PyTables read: damaged
                metadata).  HDF5's RuntimeError for a damaged index, OSError, ...: the caller
                turns them into the store's "damaged" error.
        """
        import h5py

        with h5py.File(path, "r") as f:
            d = f[name]
            if shape is not None and tuple(d.shape) != tuple(shape):
                raise ChunkError(f"/{name} has shape {d.shape} in its index, {tuple(shape)} "
                                 "in its metadata")
            if d.chunks is None or not hasattr(d.id, "chunk_iter"):
                return None
            plist = d.id.get_create_plist()
            codes = [plist.get_filter(k)[0] for k in range(plist.get_nfilters())]
            supported = [[], [FLETCHER32]] + [[BLOSC], [BLOSC, FLETCHER32]] * bool(_decompress)
            if codes not in supported:
                return None
            shape, chunks = tuple(int(s) for s in d.shape), tuple(int(c) for c in d.chunks)
            grid = tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))
            n = int(np.prod(grid))
            offset = np.full(n, -1, np.int64)
            size = np.zeros(n, np.int64)
            mask = np.zeros(n, np.uint32)
            strides = np.array([int(np.prod(grid[k + 1:])) for k in range(len(grid))])
            chunk_arr = np.array(chunks)

            def record(info: Any) -> None:
                k = int((np.array(info.chunk_offset) // chunk_arr) @ strides)
                offset[k], size[k], mask[k] = info.byte_offset, info.size, info.filter_mask

            d.id.chunk_iter(record)
            blosc = codes.index(BLOSC) if BLOSC in codes else None
            fletcher = codes.index(FLETCHER32) if FLETCHER32 in codes else None
            return cls(path, shape, chunks, np.dtype(d.dtype), d.fillvalue, blosc, fletcher,
                       (offset, size, mask))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def _decode(self, k: int, offset: int, size: int, mask: int, slot: NDArray[Any]) -> None:
        """Chunk ``k`` (linear index in the chunk grid; stored at ``offset``, ``size`` bytes,
        filter mask ``mask``) into ``slot`` (C-contiguous, the chunk's shape and dtype)."""
        if offset < 0:
            slot.fill(self._fill)
            return
        checked = self._fletcher is not None and not mask >> self._fletcher & 1
        if self._blosc is None or mask >> self._blosc & 1:  # stored as is: read into the slot
            tail = bytearray(4 * checked)
            got = os.preadv(self._fd, [slot.reshape(-1).view(np.uint8), tail], offset)
            if size != self._chunk_bytes + len(tail) or got != size:
                raise ChunkError(f"chunk at byte {offset}: {got} of {size} bytes, expected "
                                 f"{self._chunk_bytes + len(tail)}")
            if checked and not self._verified[k]:
                if not fletcher32_matches(slot.reshape(-1).view(np.uint8), bytes(tail)):
                    raise ChunkError(f"chunk at byte {offset}: Fletcher-32 checksum mismatch")
                self._verified[k] = 1
            return
        raw = os.pread(self._fd, size, offset)
        if len(raw) != size:
            raise ChunkError(f"chunk at byte {offset}: read {len(raw)} of {size} bytes "
                             "(truncated file)")
        body: bytes | memoryview = raw
        if checked:
            body = memoryview(raw)[:-4]
            if not self._verified[k]:  # each chunk once a process (see the module docstring)
                if not fletcher32_matches(body, raw[-4:]):
                    raise ChunkError(f"chunk at byte {offset}: Fletcher-32 checksum mismatch")
                self._verified[k] = 1
        # the Blosc header's decoded size (bytes 4-8) sets how much Blosc writes: check it
        # against the slot first (a chunk of a store without checksums may be damaged)
        nbytes = int.from_bytes(raw[4:8], "little") if size >= 16 else -1
        if nbytes != self._chunk_bytes:
            raise ChunkError(f"chunk at byte {offset}: a Blosc header for {nbytes} bytes, "
                             f"expected {self._chunk_bytes}")
        try:
            if size < SMALL_CHUNK:  # a context costs more than the GIL held this briefly
                _decompress_small(body, slot)
            else:  # own context, GIL released: other threads decode meanwhile
                _decompress(body, slot, nthreads=1)
        except (ValueError, RuntimeError) as exc:
            raise ChunkError(f"chunk at byte {offset}: Blosc cannot decode it ({exc})") from None

    def _keys(self, box: tuple[slice, ...]) -> tuple[list[int], list[int], NDArray[np.intp]]:
        """First chunk and chunk count per dimension of ``box``; the chunks' linear indices
        (C order)."""
        first = [s.start // c for s, c in zip(box, self.chunks, strict=True)]
        counts = [-(-s.stop // c) - q for s, c, q in zip(box, self.chunks, first, strict=True)]
        grid_index = np.indices(counts).reshape(len(box), -1) + np.array(first)[:, None]
        return first, counts, np.ravel_multi_index(tuple(grid_index), self._grid)

    @property
    def n_chunks(self) -> int:
        """Chunks in the dataset's grid (the length of the verified-chunk table)."""
        return len(self._offset)

    @property
    def all_verified(self) -> bool:
        """Every chunk's checksum was verified in this process (later reads are direct)."""
        return bool(self._verified.all())

    def share_verified(self, table: NDArray[np.uint8]) -> None:
        """Keep the verified-chunk table in ``table`` (uint8, one byte per chunk, e.g. shared
        memory that sibling readers of the same file use too, so a chunk verified by one is
        verified for all); what this reader verified so far is copied in."""
        if table.shape != (self.n_chunks,) or table.dtype != np.uint8:
            raise ValueError(f"a verified-chunk table needs {self.n_chunks} uint8 entries")
        np.maximum(table, self._verified, out=table)
        self._verified = table

    def mark_verified(self, box: tuple[slice, ...]) -> None:
        """Record that HDF5 has just read (and so verified) every chunk of ``box``."""
        self._verified[self._keys(box)[2]] = 1

    def read(self, box: tuple[slice, ...], order: Sequence[int] | None = None,
             only_verified: bool = False, out: NDArray[Any] | None = None
             ) -> NDArray[Any] | None:
        """``dataset[box].transpose(order)`` (C-contiguous) for a box of plain slices (step 1,
        within the shape), one per dimension; None with ``only_verified`` when a chunk of the box
        has not had its checksum verified yet.  Raises :class:`ChunkError` for a damaged chunk.
        ``out``: a C-contiguous array of the result's shape and dtype to fill (e.g. shared
        memory), returned.

        The chunks are decoded one *row* at a time — the chunks that share their index along
        the first dimension spanning several chunks (e.g. one 16-voxel x-row of a block: 24
        chunks, 768 KB) — into a buffer of shape ``(*chunks per dimension, *chunk shape)`` with
        that dimension 1, which is then copied (transposed) into the result while it is still
        in the CPU cache: one transposing copy per run of whole chunks along the other
        dimensions (and per partly used edge chunk); the trailing axis, e.g. the channels, moves
        as one wide element when it stays last.  (A 32-slice axial block, one core: the copy
        4.2 -> 3.0 ms with rows instead of one copy, and no decoded block in main memory.)
        """
        n = len(box)
        order = list(range(n)) if order is None else list(order)
        chunks = self.chunks
        first, counts, keys = self._keys(box)
        if only_verified and self._fletcher is not None and not self._verified[keys].all():
            return None  # the caller reads it through HDF5 first (see the module docstring)
        shape = [box[d].stop - box[d].start for d in order]
        if out is None:
            out = np.empty(shape, self.dtype)
        elif list(out.shape) != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {self.dtype} {shape}; received "
                             f"{out.dtype} {list(out.shape)}")
        wide = WIDE.get(chunks[-1] * self.dtype.itemsize)
        if not (order[-1] == n - 1 and counts[-1] == 1 and box[-1].start == 0
                and box[-1].stop == chunks[-1]):
            wide = None
        # per dimension of the box: runs (first chunk, chunks, first cell, cells, offset in out)
        split = next((d for d in range(n) if counts[d] > 1), 0)
        runs = [_runs(box[d].start, box[d].stop, chunks[d], whole=d != split) for d in range(n)]
        row_counts = [1 if d == split else c for d, c in enumerate(counts)]
        row = np.empty((*row_counts, *chunks), self.dtype)
        slots = row.reshape(-1, *chunks)
        grid = keys.reshape(counts)
        for row_run in runs[split]:  # one chunk each along ``split``
            row_keys = np.take(grid, row_run[0] - first[split], axis=split).ravel()
            for slot, k, offset, size, mask in zip(
                    slots, row_keys.tolist(), self._offset[row_keys].tolist(),
                    self._size[row_keys].tolist(), self._mask[row_keys].tolist(), strict=True):
                self._decode(k, offset, size, mask, slot)
            row_first = [row_run[0] if d == split else q for d, q in enumerate(first)]
            for combo in itertools.product(*(runs[d] if d != split else [row_run]
                                             for d in range(n))):
                src = row[tuple(slice(q0 - row_first[d], q0 - row_first[d] + nq)
                                for d, (q0, nq, _, _, _) in enumerate(combo))]
                src = src[(Ellipsis, *(slice(c0, c0 + nc) for _, _, c0, nc, _ in combo))]
                src = src.transpose([a for d in order for a in (d, n + d)])
                base = out[tuple(slice(combo[d][4], None) for d in order)]
                dims = [x for d in order for x in (combo[d][1], combo[d][3])]
                strides = [x for k, d in enumerate(order)
                           for x in (chunks[d] * base.strides[k], base.strides[k])]
                dst = np.lib.stride_tricks.as_strided(base, dims, strides, writeable=True)
                if wide is not None:
                    src, dst = src.view(wide), dst.view(wide)
                np.copyto(dst, src)
        return out


def _runs(start: int, stop: int, chunk: int, whole: bool = True
          ) -> list[tuple[int, int, int, int, int]]:
    """Split ``[start, stop)`` into runs: ``(first chunk, chunks, first cell, cells a chunk,
    offset from start)`` — a partly used chunk is a run of its own, whole chunks run together
    (one run of one chunk each with ``whole`` False).
    """
    runs = []
    pos = start
    while pos < stop:
        q, a = divmod(pos, chunk)
        if a or stop - pos < chunk:
            b = min(stop - q * chunk, chunk)
            runs.append((q, 1, a, b - a, pos - start))
            pos = q * chunk + b
        else:
            count = (stop - pos) // chunk if whole else 1
            runs.append((q, count, 0, chunk, pos - start))
            pos += count * chunk
    return runs
