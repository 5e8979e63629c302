"""Writing the PyTables volume store (schema 2; version 1 has the same layout), described in
:mod:`braintseg.store.read`, which reads it (and re-exports everything here)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tables
from numpy.typing import NDArray

from braintseg.atomic import commit
from braintseg.data.folds import Folds
from braintseg.data.preprocess import VIEW_AXIS
from braintseg.errors import ConfigError, DataError

#: 2 added slice stores (``layout: slices``, :mod:`braintseg.store.slice_writer`); the
#: volume layout is that of version 1, which still opens
SCHEMA_VERSION = 2
#: versions :class:`braintseg.store.read.SliceStore` opens
READABLE_VERSIONS = (1, 2)
#: edge of the cubic chunks (chosen by scripts/bench_prepare.py --layouts)
CHUNK_EDGE = 16
#: label chunks are cubes of ``LABEL_CHUNK_SCALE * CHUNK_EDGE``
LABEL_CHUNK_SCALE = 2

@dataclass
class PreparedCase:
    """One cropped, normalised case ready to append.

    Attributes:
        images: ``(X, Y, Z, C)`` in the store dtype (int16: clipped source intensities, and
            ``meta["normalization"]`` holds the statistics used on read).
        labels: ``(X, Y, Z)`` uint8 or None.
        meta: JSON-serialisable per-case metadata.
    """

    case_id: str
    images: NDArray[Any]
    labels: NDArray[np.uint8] | None
    meta: dict[str, Any] = field(default_factory=dict)


def make_filters(compression: str, complevel: int, fletcher32: bool = True) -> tables.Filters:
    """``"blosc:lz4"``, ``"blosc2:zstd"``, ``"zlib"``, ``"none"``; ``+bitshuffle`` optional.

    ``fletcher32``: HDF5's Fletcher-32 checksum on every chunk (checked on each read, before
    decompression), so a damaged byte in the store is an error instead of a wrong voxel.

    Raises:
        ConfigError: unknown compressor (names ``store.compression`` and the valid ones).
    """
    lib, _, opt = compression.partition("+")
    if lib == "none":
        return tables.Filters(complevel=0, fletcher32=fletcher32)
    valid = sorted(tables.filters.all_complibs)
    if lib not in valid or opt not in ("", "bitshuffle"):
        raise ConfigError(f"store.compression must be one of {valid} (optionally +bitshuffle); "
                          f"received {compression!r}")
    return tables.Filters(complevel=complevel, complib=lib, shuffle=not opt,
                          bitshuffle=bool(opt), fletcher32=fletcher32)


def write_failure(path: Path, exc: BaseException) -> DataError:
    """``cannot write <path> (No space left on device)``, as atomic writes say it: the system's
    reason from an OSError or from the ``errno = N`` inside an HDF5 error."""
    errno = getattr(exc, "errno", None)
    found = re.search(r"errno = (\d+)", str(exc))
    if not isinstance(errno, int) and found:
        errno = int(found.group(1))
    reason = os.strerror(errno) if isinstance(errno, int) and errno else type(exc).__name__
    return DataError(f"cannot write {path} ({reason})")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """HDF5 and OS write errors inside the block become :func:`write_failure` (one line)."""
    try:
        yield
    except (tables.HDF5ExtError, OSError) as exc:
        raise write_failure(path, exc) from None


class StoreWriter:
    """Append cases to a new store under a temporary name; ``finish`` renames it into place.

    Use as a context manager: leaving the block without ``finish`` deletes the temporary file.
    Write errors (a full disk, a vanished folder) become one :class:`DataError` naming the store.
    """

    def __init__(self, path: Path, volume_shape: tuple[int, int, int], n_channels: int,
                 compression: str = "blosc:lz4", complevel: int = 5, dtype: str = "float16",
                 expected_cases: int = 100, chunk_edge: int = CHUNK_EDGE,
                 checksum: bool = True) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(
            f".{self.path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.shape, self.n_channels = tuple(volume_shape), n_channels
        self.filters = make_filters(compression, complevel, checksum)
        self.dtype, self.expected, self.edge = np.dtype(dtype), max(expected_cases, 1), chunk_edge
        self.case_ids: list[str] = []
        self.metas: list[dict[str, Any]] = []
        self._h: tables.File | None = None

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return writing(self.path)

    def __enter__(self) -> StoreWriter:
        try:
            with self._writing():
                self._create()
        except BaseException:  # e.g. a full disk: close and remove the partial file
            self.__exit__(None, None, None)
            raise
        return self

    def _create(self) -> None:
        h = self._h = tables.open_file(str(self.tmp), "w")
        h.root._v_attrs.schema_version = SCHEMA_VERSION
        h.root._v_attrs.complete = False
        e, shp = self.edge, self.shape
        chunk = tuple(min(e, s) for s in shp)
        h.create_earray("/", "images", tables.Atom.from_dtype(self.dtype),
                        (0, *shp, self.n_channels), filters=self.filters,
                        chunkshape=(1, *chunk, self.n_channels), expectedrows=self.expected)
        # labels: 1 byte a voxel, so cubes of twice the edge (8x fewer chunks: half the chunk
        # index bytes and per-chunk read overhead; the next block of slices finds them cached)
        h.create_earray("/", "labels", tables.UInt8Atom(), (0, *shp), filters=self.filters,
                        chunkshape=(1, *(min(LABEL_CHUNK_SCALE * e, s) for s in shp)),
                        expectedrows=self.expected)
        h.create_group("/", "tumour")
        small = tables.Filters(complevel=5, complib="zlib", fletcher32=self.filters.fletcher32)
        for view, axis in VIEW_AXIS.items():
            h.create_earray("/tumour", view, tables.Int32Atom(), (0, shp[axis]), filters=small,
                            chunkshape=(16, shp[axis]))
        h.create_vlarray("/", "case_meta", tables.VLStringAtom(),
                         filters=tables.Filters(complevel=5, complib="zlib"))  # VL: no checksum

    def append(self, case: PreparedCase) -> None:
        """Write one case: images, labels (zeros when None), tumour counts, metadata."""
        h = self._h
        if h is None:
            raise RuntimeError("StoreWriter.append outside its with-block")
        if case.images.shape != (*self.shape, self.n_channels):
            raise DataError(f"case {case.case_id}: cropped shape {case.images.shape} differs "
                            f"from the store's {(*self.shape, self.n_channels)}")
        stats = case.meta.get("normalization", ())
        if self.dtype == np.int16 and (case.images.dtype != np.int16
                                       or len(stats) != self.n_channels):
            raise DataError(f"case {case.case_id}: an int16 store takes int16 source intensities "
                            f"with meta['normalization'] per channel; received {case.images.dtype}")
        labels = case.labels if case.labels is not None else np.zeros(self.shape, np.uint8)
        meta = dict(case.meta, case_id=case.case_id, has_labels=case.labels is not None)
        tumour = labels > 0
        with self._writing():
            h.root.images.append(np.asarray(case.images, self.dtype)[None])
            h.root.labels.append(labels[None])
            for view, axis in VIEW_AXIS.items():
                other = tuple(a for a in range(3) if a != axis)
                counts = tumour.sum(axis=other, dtype=np.int32)
                getattr(h.root.tumour, view).append(counts[None])
            h.root.case_meta.append(json.dumps(meta).encode())
        self.case_ids.append(case.case_id)
        self.metas.append(meta)

    def finish(self, folds: Folds | None, info: dict[str, Any],
               before_rename: Callable[[], object] | None = None) -> Path:
        """Write the store header, close, call ``before_rename()`` (e.g. write the files that
        belong beside the store), rename onto ``path`` (replacing it); return path."""
        h = self._h
        if h is None:
            raise RuntimeError("StoreWriter.finish outside its with-block")
        header = {
            "schema_version": SCHEMA_VERSION, "case_ids": self.case_ids,
            "volume_shape": list(self.shape), "n_channels": self.n_channels,
            "image_dtype": self.dtype.name,
            "grades": {m["case_id"]: m.get("grade") for m in self.metas},
            "conventions": {m["case_id"]: m.get("convention") for m in self.metas},
            "has_labels": all(m["has_labels"] for m in self.metas),
            "folds": folds.folds if folds else [], "holdout": folds.holdout if folds else [],
            "folds_seed": folds.seed if folds else None, **info,
        }
        with self._writing():
            h.root._v_attrs.braintseg_json = json.dumps(header)
            h.root._v_attrs.complete = True
            self._h = None
            h.close()  # flushes: a full disk shows here at the latest
        if before_rename is not None:
            before_rename()
        with self._writing():
            commit(self.tmp, self.path)  # fsync, rename, fsync the folder
        return self.path

    def __exit__(self, *exc: object) -> None:
        h, self._h = self._h, None
        if h is not None:
            with contextlib.suppress(tables.HDF5ExtError, OSError):  # e.g. a full disk
                h.close()
        self.tmp.unlink(missing_ok=True)
