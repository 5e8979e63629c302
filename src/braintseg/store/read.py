"""The PyTables slice store (schema version 2; 1 still opens): written by ``prepare``, read by
everything else.  Two layouts behind one reading API (``read_slices`` / ``read_view`` /
``tumour_slices`` / ``n_slices`` / ``slice_shape``):

* ``volumes`` (BraTS, below; the only layout of version 1);
* ``slices`` (2D data sets, variable number of slices per patient; see
  :mod:`braintseg.store.slice_writer`): the only view is ``slice`` (``axial`` accepted as
  its alias), slice ``k`` of case ``i`` is row ``case_index[i, 0] + k`` of one slice table.

Volume layout (one copy of every voxel; all cases share one crop box, so one shape):

* ``/images``  EArray ``(N, X, Y, Z, C)``, chunks ``(1, e, e, e, C)`` (small cubes, so a block of
  slices in *any* view reads whole chunks and nothing else): float16|float32 normalised
  intensities, or int16 clipped source intensities normalised on read (``image_dtype`` in the
  header; see :mod:`braintseg.store.codec`) — readers always get normalised float16|float32;
* ``/labels``  EArray ``(N, X, Y, Z)`` uint8 internal labels {0,1,2,3}, cubes of twice the edge;
* ``/tumour/{axial,coronal,sagittal}`` EArray ``(N, S)`` int32: labelled voxels per slice;
* ``/case_meta`` VLArray of UTF-8 JSON, one row per case (geometry, header, sources, stats);
* root attrs: ``schema_version`` (int), ``complete`` (bool), ``braintseg_json`` (JSON text with
  case ids, grades, conventions, folds, crop box, config).  Nothing is pickled.

Every chunk carries HDF5's Fletcher-32 checksum (stores written before it existed still open):
a damaged chunk fails its read, and every read error becomes one :class:`DataError` naming the
store, the case and "damaged: re-run prepare".

Views: ``axial`` index z → ``(X, Y)``; ``coronal`` index y → ``(X, Z)``; ``sagittal`` index x →
``(Y, Z)``.  Slices are returned channel-last: images ``(n, H, W, C)``, labels ``(n, H, W)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tables
from numpy.typing import NDArray

from braintseg.data.folds import Folds
from braintseg.data.preprocess import VIEW_AXIS, view_axis
from braintseg.errors import DataError
from braintseg.sources.base import SLICE_VIEW
from braintseg.store.chunks import ChunkError, ChunkReader
from braintseg.store.codec import Int16Decoder, move_to_front
from braintseg.store.write import (  # noqa: F401 - re-exported: the writer's public names
    CHUNK_EDGE,
    LABEL_CHUNK_SCALE,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    PreparedCase,
    StoreWriter,
    make_filters,
)

logger = logging.getLogger(__name__)

#: HDF5 chunk cache per open store (decompressed chunks); one slab of chunks in any view fits
CHUNK_CACHE_BYTES = 64 * 2**20
#: int16 stores: decoders kept per open store, one per recently read case (~0.1-2 MiB each)
DECODER_CACHE_CASES = 32
#: HDF5/PyTables is not thread-safe: every read of an open store happens under this lock
HDF5_LOCK = threading.RLock()
#: what a damaged or truncated store raises on read (each becomes one "damaged" DataError):
#: HDF5's errors (PyTables' HDF5ExtError and h5py's are RuntimeErrors, e.g. "wrong B-tree
#: signature" from the chunk index), short or failed reads, checksums and Blosc (ChunkError is
#: a ValueError), metadata that no longer parses or has the wrong type or size
READ_ERRORS = (RuntimeError, OSError, ValueError, LookupError, TypeError, MemoryError,
               tables.NoSuchNodeError, ChunkError)
#: ``0`` turns direct chunk reads off (every read through HDF5, as before): for benchmarks
DIRECT_ENV = "BRAINTSEG_DIRECT_READS"
#: the first 8 bytes of every HDF5 file (superblock at offset 0, as PyTables writes it)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


_QUIET = threading.local()


def quiet_hdf5() -> None:
    """Turn HDF5's error printing off in this thread (once a thread).  The library keeps one
    error stack a thread, and PyTables silences only the importing thread's: a failed read on a
    reader thread printed HDF5's whole ``HDF5-DIAG`` stack to stderr before the one-line
    error (h5py's own HDF5, used by the direct reader, likewise)."""
    if getattr(_QUIET, "done", False):
        return
    tables.silence_hdf5_messages()
    if "h5py" in sys.modules:
        with contextlib.suppress(ImportError, AttributeError):
            sys.modules["h5py"]._errors.silence_errors()
    _QUIET.done = True


def damaged(store: Path, what: str, exc: BaseException) -> DataError:
    """The one-line error for a store that fails a read: ``store X: <what> cannot be read
    (<why>); damaged: re-run prepare``; <why> is the direct reader's own words (which chunk,
    what failed) or the exception type (HDF5's own text names C functions only)."""
    why = str(exc) if isinstance(exc, ChunkError) else type(exc).__name__
    return DataError(f"store {store}: {what} cannot be read ({why}); damaged: re-run prepare")


class SliceStore:
    """Read-only access to a store; the HDF5 handle is opened lazily in each process.

    Pickles as its path only, so it can be sent to worker processes; after a fork the child
    opens its own handle.  Attributes are read once at construction (file closed afterwards).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._h: tables.File | None = None
        self._pid = -1
        with HDF5_LOCK:
            header, metas, tumour = _read_header(self.path)
        self._header, self._metas, self._tumour = header, metas, tumour
        #: the whole header (prepare's ``input_fingerprint`` and ``sidecars`` texts included)
        self.header: dict[str, Any] = header
        try:
            self._attributes(header, tumour)
        except READ_ERRORS as exc:  # parsed, but not the header prepare writes
            raise damaged(self.path, "the header", exc) from None
        self._decoders: OrderedDict[int, Int16Decoder] = OrderedDict()
        self._decoders_lock = threading.Lock()
        self._chunked: tuple[ChunkReader, ChunkReader] | None = None
        self._chunked_pid = -1

    def _attributes(self, header: dict[str, Any], tumour: dict[str, NDArray[Any]]) -> None:
        self.case_ids: list[str] = list(header["case_ids"])
        self.n_cases = len(self.case_ids)
        self.volume_shape: tuple[int, int, int] = tuple(header["volume_shape"])  # type: ignore
        self.n_channels: int = int(header["n_channels"])
        self.crop_box: tuple[int, ...] = tuple(header["crop_box"])
        self.folds: list[list[str]] = [list(f) for f in header["folds"]]
        self.holdout: list[str] = list(header["holdout"])
        self.has_labels: bool = bool(header["has_labels"])
        self.conventions: dict[str, str] = dict(header["conventions"])
        self.grades: dict[str, str | None] = dict(header["grades"])
        self.schema_version: int = int(header["schema_version"])
        self.config: dict[str, Any] = dict(header.get("config", {}))
        #: dtype of ``/images`` on disk (int16: source intensities, normalised on read)
        self.image_dtype: str = str(header.get("image_dtype", "float16"))
        #: ``volumes`` (BraTS) or ``slices`` (2D data sets)
        self.layout: str = str(header.get("layout", "volumes"))
        if self.layout == "slices":
            self._case_index = tumour["case_index"]

    # -- pickling / process safety
    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Path(state["path"]))  # type: ignore[misc]

    def _handle(self) -> tables.File:
        quiet_hdf5()
        if self._h is None or self._pid != os.getpid():
            self._h = _open_read(self.path, chunk_cache_size=CHUNK_CACHE_BYTES,
                                 chunk_cache_nelmts=100_003)
            self._pid = os.getpid()
        return self._h

    def close(self) -> None:
        """Close this process's handle (reopened on next use)."""
        if self._h is not None and self._pid == os.getpid():
            with HDF5_LOCK:
                self._h.close()
        self._h = None
        if self._chunked is not None and self._chunked_pid == os.getpid():
            for reader in self._chunked:
                reader.close()
        self._chunked, self._chunked_pid = None, -1

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

    @property
    def read_dtype(self) -> np.dtype[Any]:
        """dtype of the images readers get: float32 for float32 stores, else float16."""
        return np.dtype(np.float32 if self.image_dtype == "float32" else np.float16)

    def chunk_counts(self) -> tuple[int, int]:
        """Chunks in the grids of ``/images`` and ``/labels``."""
        with self._reading("the chunk grid") as h:
            return tuple(  # type: ignore[return-value]
                int(np.prod([-(-s // c) for s, c in zip(node.shape, node.chunkshape,
                                                           strict=True)]))
                for node in (h.root.images, h.root.labels))

    def share_verified(self, images: NDArray[np.uint8], labels: NDArray[np.uint8]) -> bool:
        """Keep the direct readers' verified-chunk tables in ``images`` / ``labels`` (one byte
        a chunk, see :meth:`chunk_counts`; shared memory of the reader processes of one
        training); False where reads go through HDF5 (nothing to share)."""
        readers = self._readers()
        if readers is None:
            return False
        readers[0].share_verified(images)
        readers[1].share_verified(labels)
        return True

    def _direct(self, i: int, which: int, box: tuple[slice, ...],
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
            raise damaged(self.path, f"case {self.case_ids[i]}", exc) from None

    def _hdf5(self, i: int, which: int, box: tuple[slice, ...]) -> NDArray[Any]:
        """``[box]`` of ``/images`` or ``/labels`` through HDF5; marks its chunks verified."""
        with self._reading(i) as h:
            data = (h.root.images, h.root.labels)[which][box]
        if self._chunked is not None and self._chunked_pid == os.getpid():
            self._chunked[which].mark_verified(box)
        return data

    def _volume(self, i: int, which: int, axis: int | None, start: int = 0, stop: int = 0,
                first: bool = True, out: NDArray[Any] | None = None) -> NDArray[Any]:
        """Case ``i`` of ``/images`` (``which`` 0) or ``/labels`` (1): all of it (``axis``
        None), or slices ``start:stop`` along ``axis`` — with that axis first (``first``; the
        channels stay last), else in the stored order.  ``out``: where a direct read may write
        the result (the caller checks whether it did)."""
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
        data = (self._direct(i, which, tuple(box), order, direct_out) if readers is not None
                else None)
        if data is not None:
            return data[0]
        data = self._hdf5(i, which, tuple(box))[0]
        if order is None:
            return data
        if which == 0:  # the channels move as one wide element
            return move_to_front(data, axis)
        return np.ascontiguousarray(np.moveaxis(data, axis, 0))

    def __enter__(self) -> SliceStore:
        return self

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown: nothing left to do
            pass

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SliceStore({str(self.path)!r}, n_cases={self.n_cases})"

    # -- reading
    def _index(self, i: int) -> int:
        if not -self.n_cases <= i < self.n_cases:
            raise DataError(f"case index {i} out of range for {self.path} "
                            f"({self.n_cases} cases: 0..{self.n_cases - 1})")
        return i % self.n_cases

    def index_of(self, case_id: str) -> int:
        """Row of ``case_id``; DataError if the store lacks it."""
        try:
            return self.case_ids.index(case_id)
        except ValueError:
            raise DataError(f"case {case_id!r} is not in {self.path}") from None

    @contextlib.contextmanager
    def _reading(self, i: int | str) -> Iterator[tables.File]:
        """The open handle, under :data:`HDF5_LOCK`; a read error names the store and case
        ``i`` (or what ``i`` says)."""
        try:
            with HDF5_LOCK:
                yield self._handle()  # quiets HDF5 in this thread
        except READ_ERRORS as exc:
            what = f"case {self.case_ids[i]}" if isinstance(i, int) else i
            self.close()  # reopened on next use; none left for PyTables to warn about at exit
            raise damaged(self.path, what, exc) from None

    def _labels_or_none(self, i: int, arr: NDArray[np.uint8]) -> NDArray[np.uint8] | None:
        return arr if self._metas[i]["has_labels"] else None

    def _decoder(self, i: int) -> Int16Decoder:
        """The (cached) decoder of case ``i`` of an int16 store."""
        with self._decoders_lock:  # a training and a validation reader thread may share us
            decoder = self._decoders.get(i)
            if decoder is None:
                decoder = self._decoders[i] = Int16Decoder(self._metas[i]["normalization"])
                while len(self._decoders) > DECODER_CACHE_CASES:
                    self._decoders.popitem(last=False)
            else:
                self._decoders.move_to_end(i)
            return decoder

    # -- views and sizes (both layouts)
    @property
    def views(self) -> tuple[str, ...]:
        """The views this store can be read in (``("slice",)`` for a slice store)."""
        return (SLICE_VIEW,) if self.layout == "slices" else tuple(VIEW_AXIS)

    def _slice_view(self, view: str) -> None:
        if view not in (SLICE_VIEW, "axial"):
            raise DataError(f"{self.path} holds 2D slices: the only view is '{SLICE_VIEW}' "
                            f"('axial' accepted); received {view!r}")

    def slice_shape(self, view: str) -> tuple[int, int]:
        """``(H, W)`` of the slices of ``view``; DataError for a view the store lacks."""
        if self.layout == "slices":
            self._slice_view(view)
            return tuple(self._header["slice_shape"])  # type: ignore[return-value]
        axis = view_axis(view)
        hw = [s for a, s in enumerate(self.volume_shape) if a != axis]
        return hw[0], hw[1]

    def n_slices(self, i: int, view: str) -> int:
        """Number of slices of case ``i`` in ``view``."""
        i = self._index(i)
        if self.layout == "slices":
            self._slice_view(view)
            start, stop = self._case_index[i]
            return int(stop - start)
        return self.volume_shape[view_axis(view)]

    def slice_classes(self, i: int) -> NDArray[np.uint8]:
        """Per-slice class of case ``i`` (slice stores; ``tumour_type``: 1–3, else 0)."""
        start, stop = self._rows(i)
        return self._tumour["slice_class"][start:stop]

    def slice_sizes(self, i: int) -> NDArray[np.int32]:
        """``(S, 2)`` source size of every slice of case ``i`` (slice stores)."""
        start, stop = self._rows(i)
        return self._tumour["slice_shape"][start:stop]

    def _rows(self, i: int) -> tuple[int, int]:
        if self.layout != "slices":
            raise DataError(f"{self.path} is a volume store; per-slice tables exist only in "
                            "slice stores")
        start, stop = self._case_index[self._index(i)]
        return int(start), int(stop)

    def _read_rows(self, i: int, start: int, stop: int
                   ) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        """Rows ``start:stop`` of the slice table (case ``i`` names a read error)."""
        readers = self._readers()
        if readers is not None:
            out = []
            for which, reader in enumerate(readers):
                box = (slice(start, stop), *(slice(0, s) for s in reader.shape[1:]))
                data = self._direct(i, which, box)
                out.append(self._hdf5(i, which, box) if data is None else data)
            return out[0], out[1]
        with self._reading(i) as h:
            return h.root.images[start:stop], h.root.labels[start:stop]

    def read_case(self, i: int) -> tuple[NDArray[Any], NDArray[np.uint8] | None]:
        """``(images (X, Y, Z, C) float16|float32, labels (X, Y, Z) uint8 or None)``; for a
        slice store ``(images (S, H, W, C), labels (S, H, W) or None)``.

        Images are float16 for float16 and int16 stores, float32 for float32 stores.
        """
        i = self._index(i)
        if self.layout == "slices":
            img, lab = self._read_rows(i, *self._rows(i))
            return img, self._labels_or_none(i, lab)
        raw, labels = self._volume(i, 0, None), self._volume(i, 1, None)
        images = self._decoder(i)(raw) if self.image_dtype == "int16" else raw
        return images, self._labels_or_none(i, labels)

    def read_slices(
        self, i: int, view: str, start: int, stop: int,
        out: tuple[NDArray[Any], NDArray[np.uint8]] | None = None,
    ) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        """Slices ``start:stop`` of case ``i`` in ``view`` (fast when chunk-aligned).

        Args:
            out: ``(images, labels)`` C-contiguous arrays of the result's shapes and dtypes to
                fill (e.g. shared memory): direct reads decode into them, other paths copy.

        Returns:
            ``(images (n, H, W, C), labels (n, H, W) uint8)``, C-contiguous; labels are zeros for
            a case without labels.  With ``out``: ``out``.
        """
        x, y = self._slices(i, view, start, stop, out)
        if out is None:
            return x, y
        for got, dst in zip((x, y), out, strict=True):
            if not np.may_share_memory(got, dst):  # not decoded in place
                if got.shape != dst.shape or got.dtype != dst.dtype:
                    raise ValueError(f"out: expected {got.dtype} {got.shape}, received "
                                     f"{dst.dtype} {dst.shape}")
                np.copyto(dst, got)
        return out

    def _slices(self, i: int, view: str, start: int, stop: int,
                out: tuple[NDArray[Any], NDArray[np.uint8]] | None
                ) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        i = self._index(i)
        size = self.n_slices(i, view)
        if not 0 <= start < stop <= size:
            raise DataError(f"slices {start}:{stop} out of range 0:{size} for view {view}")
        if self.layout == "slices":
            base = self._rows(i)[0]
            return self._read_rows(i, base + start, base + stop)
        axis = view_axis(view)
        x_out, y_out = (None, None) if out is None else out
        lab = self._volume(i, 1, axis, start, stop, out=y_out)
        if self.image_dtype == "int16":  # the decoder moves the slicing axis to the front
            return self._decoder(i)(self._volume(i, 0, axis, start, stop, first=False),
                                    axis), lab
        return self._volume(i, 0, axis, start, stop, out=x_out), lab

    def read_view(self, i: int, view: str) -> tuple[NDArray[Any], NDArray[np.uint8]]:
        """All slices of case ``i`` in ``view``: ``(images (S, H, W, C), labels (S, H, W))``."""
        return self.read_slices(i, view, 0, self.n_slices(i, view))

    def case_meta(self, i: int) -> dict[str, Any]:
        """Per-case metadata: original shape, affine, header (hex), crop box, source files,
        convention, grade, normalisation stats."""
        return dict(self._metas[self._index(i)])

    def tumour_slices(self, i: int, view: str) -> NDArray[np.int64]:
        """Indices of slices in ``view`` that contain any label > 0 (from the stored table)."""
        if self.layout == "slices":
            self._slice_view(view)
            start, stop = self._rows(i)
            return np.flatnonzero(self._tumour["slice_tumour"][start:stop] > 0)
        return np.flatnonzero(self._tumour[view][self._index(i)] > 0)

    def fold_cases(self, fold: int) -> tuple[list[str], list[str]]:
        """``(train ids, validation ids)`` for ``fold``; DataError listing the valid range."""
        folds = Folds(self.folds, self.holdout, len(self.folds), 0, 0.0)
        return folds.fold_cases(fold)


def _read_header(
    path: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, NDArray[np.int32]]]:
    if not path.is_file():
        raise DataError(f"store {path} does not exist; create it with `braintseg prepare`")
    try:
        with path.open("rb") as f:
            signature = f.read(len(HDF5_SIGNATURE))
    except OSError as exc:
        raise DataError(f"cannot read store {path}: {exc.strerror}") from None
    if signature != HDF5_SIGNATURE:
        raise DataError(f"{path} is not an HDF5 file; expected a store written by "
                        "`braintseg prepare`")
    quiet_hdf5()
    try:
        h = _open_read(path)
    except READ_ERRORS as exc:
        what = "truncated" if "truncated" in str(exc) else "damaged"
        raise DataError(f"store {path} is {what} ({type(exc).__name__} on open): "
                        "re-run prepare") from None
    try:
        return _read_attrs(path, h)
    except READ_ERRORS as exc:
        raise damaged(path, "the header", exc) from None
    finally:
        h.close()


def _open_read(path: Path, **kwargs: Any) -> tables.File:
    """``tables.open_file(path, "r")``; where it fails after HDF5 opened the file (a damaged
    root group: UnicodeDecodeError of its title), PyTables keeps the half-made handle open,
    and its exit hook printed an UnclosedFileWarning after the one-line error: closed here."""
    registry = getattr(getattr(tables.file, "_open_files", None), "handlers", None)
    before = set(registry) if registry is not None else set()
    try:
        return tables.open_file(str(path), "r", **kwargs)
    except BaseException:
        for h in (set(registry) - before if registry is not None else ()):
            with contextlib.suppress(Exception):
                h.close()
        raise


def _read_attrs(
    path: Path, h: tables.File
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, NDArray[np.int32]]]:
    attrs = h.root._v_attrs
    if "braintseg_json" not in attrs._v_attrnames or not bool(attrs["complete"]):
        raise DataError(f"{path} is not a finished braintseg store (prepare did not complete)")
    version = int(attrs["schema_version"])
    if version not in READABLE_VERSIONS:
        raise DataError(f"{path} has store schema version {version}; this braintseg reads "
                        f"versions {list(READABLE_VERSIONS)} (run `braintseg prepare` again)")
    header = dict(json.loads(str(attrs["braintseg_json"])), schema_version=version)
    n_cases = len(header["case_ids"])
    # sizes checked before any read: damaged metadata may claim billions of rows (reading them
    # would take hours or all memory)
    if header.get("layout") == "slices":  # per-slice tables, small: read once
        hw = tuple(header["slice_shape"])
        n = _checked(path, h.root.images, (None, *hw, header["n_channels"]))
        _checked(path, h.root.labels, (n, *hw))
        shapes = {"/case_index": (n_cases, 2), "/slice_tumour": (n,), "/slice_class": (n,),
                  "/slice_shape": (n, 2)}
    else:
        shape = tuple(header["volume_shape"])
        _checked(path, h.root.images, (n_cases, *shape, header["n_channels"]))
        _checked(path, h.root.labels, (n_cases, *shape))
        shapes = {f"/tumour/{v}": (n_cases, shape[a]) for v, a in VIEW_AXIS.items()}
    tumour = {}
    for name, want in shapes.items():
        node = h.get_node(name)
        _checked(path, node, want)
        tumour[name.rsplit("/", 1)[1]] = node.read()
    _checked(path, h.root.case_meta, (n_cases,))
    metas = [json.loads(bytes(row).decode()) for row in h.root.case_meta.read(0, n_cases)]
    return header, metas, tumour


def _checked(path: Path, node: tables.Leaf, shape: tuple[Any, ...]) -> int:
    """Rows of ``node`` once its shape is ``shape`` (None: any number); DataError if not."""
    got = tuple(int(v) for v in node.shape)
    want = tuple(None if w is None else int(w) for w in shape)
    if len(got) != len(want) or any(w not in (None, g) for g, w in zip(got, want, strict=False)):
        raise DataError(f"store {path}: {node._v_pathname} has shape {got}, the header says "
                        f"{tuple('N' if w is None else w for w in want)}; damaged: re-run "
                        "prepare")
    return got[0]


def open_store(path: Path) -> SliceStore:
    """Open a store read-only; DataError if missing, not a store, or another schema version."""
    return SliceStore(Path(path))
