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
store, the case and "damaged: re-run prepare".  Modules: :mod:`.header` (opening, shape checks,
the errors), :mod:`.arrays` (box reads, direct or through HDF5), this one (the layouts' API).

Views: ``axial`` index z → ``(X, Y)``; ``coronal`` index y → ``(X, Z)``; ``sagittal`` index x →
``(Y, Z)``.  Slices are returned channel-last: images ``(n, H, W, C)``, labels ``(n, H, W)``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.data.folds import Folds
from braintseg.data.preprocess import VIEW_AXIS, view_axis
from braintseg.errors import DataError
from braintseg.sources.base import SLICE_VIEW
from braintseg.store.arrays import (  # noqa: F401 - re-exported: read.HDF5_LOCK as before
    CHUNK_CACHE_BYTES,
    DIRECT_ENV,
    HDF5_LOCK,
    StoreArrays,
)
from braintseg.store.chunks import ChunkReader
from braintseg.store.codec import Int16Decoder
from braintseg.store.header import (  # noqa: F401 - re-exported: the read errors
    HDF5_SIGNATURE,
    READ_ERRORS,
    damaged,
    quiet_hdf5,
    read_header,
)
from braintseg.store.write import (  # noqa: F401 - re-exported: the writer's public names
    CHUNK_EDGE,
    LABEL_CHUNK_SCALE,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    PreparedCase,
    StoreWriter,
    make_filters,
)

#: int16 stores: decoders kept per open store, one per recently read case (~0.1-2 MiB each)
DECODER_CACHE_CASES = 32


class SliceStore:
    """Read-only access to a store; the HDF5 handle is opened lazily in each process.

    Pickles as its path only, so it can be sent to worker processes; after a fork the child
    opens its own handle.  Attributes are read once at construction (file closed afterwards).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._arrays = StoreArrays(self.path)
        with HDF5_LOCK:
            header, metas, tumour = read_header(self.path)
        self._header, self._metas, self._tumour = header, metas, tumour
        #: the whole header (prepare's ``input_fingerprint`` and ``sidecars`` texts included)
        self.header: dict[str, Any] = header
        try:
            self._attributes(header, tumour)
        except READ_ERRORS as exc:  # parsed, but not the header prepare writes
            raise damaged(self.path, "the header", exc) from None
        self._decoders: OrderedDict[int, Int16Decoder] = OrderedDict()
        self._decoders_lock = threading.Lock()

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

    @property
    def is_open(self) -> bool:
        """This process holds an open HDF5 handle (opened by the first read)."""
        return self._arrays.is_open

    def close(self) -> None:
        """Close this process's handle (reopened on next use)."""
        self._arrays.close()

    @property
    def read_dtype(self) -> np.dtype[Any]:
        """dtype of the images readers get: float32 for float32 stores, else float16."""
        return np.dtype(np.float32 if self.image_dtype == "float32" else np.float16)

    def direct_readers(self) -> tuple[ChunkReader, ChunkReader] | None:
        """This process's direct chunk readers of ``/images`` and ``/labels``
        (:mod:`.chunks`), or None where reads go through HDF5 (filters not supported, or
        ``BRAINTSEG_DIRECT_READS=0``)."""
        return self._arrays.direct_readers()

    def chunk_counts(self) -> tuple[int, int]:
        """Chunks in the grids of ``/images`` and ``/labels``."""
        return self._arrays.chunk_counts()

    def share_verified(self, images: NDArray[np.uint8], labels: NDArray[np.uint8]) -> bool:
        """Keep the direct readers' verified-chunk tables in ``images`` / ``labels`` (one byte
        a chunk, see :meth:`chunk_counts`; shared memory of the reader processes of one
        training); False where reads go through HDF5 (nothing to share)."""
        return self._arrays.share_verified(images, labels)

    def _volume(self, i: int, which: int, axis: int | None, start: int = 0, stop: int = 0,
                first: bool = True, out: NDArray[Any] | None = None) -> NDArray[Any]:
        """Case ``i`` of ``/images`` (``which`` 0) or ``/labels`` (1); see
        :meth:`StoreArrays.volume`."""
        return self._arrays.volume(f"case {self.case_ids[i]}", i, which, axis, start, stop,
                                   first, out)

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
        return self._arrays.rows(f"case {self.case_ids[i]}", start, stop)

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


def open_store(path: Path) -> SliceStore:
    """Open a store read-only; DataError if missing, not a store, or another schema version."""
    return SliceStore(Path(path))
