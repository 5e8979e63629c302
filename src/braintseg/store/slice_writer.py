"""Writing a *slice* store (schema version 2, ``layout: slices``) for 2D data sets.

Patients have different numbers of slices, so slices are not stored per case but in one table;
:mod:`braintseg.store.read` reads it with the same API as a volume store (the only view is
``slice``).  Layout:

* ``/images``  EArray ``(N, H, W, C)`` float16|float32 normalised, chunks ``(1, H, W, C)`` (one
  slice a chunk: any block of consecutive slices reads whole chunks and nothing else);
* ``/labels``  EArray ``(N, H, W)`` uint8 {0, 1}, chunks ``(1, H, W)``;
* ``/case_index`` EArray ``(n_cases, 2)`` int64: rows ``[start, stop)`` of each case;
* ``/slice_tumour`` EArray ``(N,)`` int32: labelled pixels per slice;
* ``/slice_class`` EArray ``(N,)`` uint8: per-slice class (``tumour_type``: 1–3; else 0);
* ``/slice_shape`` EArray ``(N, 2)`` int32: each slice's source size (before the pixel repeat
  of :func:`braintseg.sources.base.to_stack`);
* ``/case_meta`` VLArray of UTF-8 JSON (sources, slice ids, normalisation stats, …);
* root attrs ``schema_version`` 2, ``complete``, ``braintseg_json`` (header with
  ``layout: "slices"``, ``slice_shape``, case ids, conventions, grades, folds).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tables
from numpy.typing import NDArray

from braintseg.atomic import commit
from braintseg.data.folds import Folds
from braintseg.errors import ConfigError, DataError
from braintseg.store.write import SCHEMA_VERSION, make_filters, writing

LAYOUT = "slices"


@dataclass
class PreparedSlices:
    """One patient ready to append: ``images (S, H, W, C)`` normalised, ``labels (S, H, W)``
    uint8 0/1 or None, ``classes (S,)`` uint8, ``shapes (S, 2)`` source sizes."""

    case_id: str
    images: NDArray[Any]
    labels: NDArray[np.uint8] | None
    classes: NDArray[np.uint8]
    shapes: NDArray[np.int32]
    meta: dict[str, Any] = field(default_factory=dict)


class SliceStoreWriter:
    """Append patients to a new slice store under a temporary name; ``finish`` renames it.

    Use as a context manager: leaving the block without ``finish`` deletes the temporary file.
    """

    def __init__(self, path: Path, slice_shape: tuple[int, int], n_channels: int,
                 compression: str = "blosc:lz4", complevel: int = 5, dtype: str = "float16",
                 expected_slices: int = 1000) -> None:
        if dtype not in ("float16", "float32"):
            raise ConfigError(f"store.dtype must be float16 or float32 for slice data sets; "
                              f"received {dtype!r}")
        self.path = Path(path)
        self.tmp = self.path.with_name(
            f".{self.path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.shape, self.n_channels = tuple(slice_shape), n_channels
        self.filters = make_filters(compression, complevel)
        self.dtype, self.expected = np.dtype(dtype), max(expected_slices, 1)
        self.case_ids: list[str] = []
        self.metas: list[dict[str, Any]] = []
        self.n_slices = 0
        self._h: tables.File | None = None

    def __enter__(self) -> SliceStoreWriter:
        try:
            with writing(self.path):
                self._create()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _create(self) -> None:
        h = self._h = tables.open_file(str(self.tmp), "w")
        h.root._v_attrs.schema_version = SCHEMA_VERSION
        h.root._v_attrs.complete = False
        hh, ww = self.shape
        h.create_earray("/", "images", tables.Atom.from_dtype(self.dtype),
                        (0, hh, ww, self.n_channels), filters=self.filters,
                        chunkshape=(1, hh, ww, self.n_channels), expectedrows=self.expected)
        h.create_earray("/", "labels", tables.UInt8Atom(), (0, hh, ww), filters=self.filters,
                        chunkshape=(1, hh, ww), expectedrows=self.expected)
        small = tables.Filters(complevel=5, complib="zlib", fletcher32=self.filters.fletcher32)
        h.create_earray("/", "case_index", tables.Int64Atom(), (0, 2), filters=small)
        h.create_earray("/", "slice_tumour", tables.Int32Atom(), (0,), filters=small)
        h.create_earray("/", "slice_class", tables.UInt8Atom(), (0,), filters=small)
        h.create_earray("/", "slice_shape", tables.Int32Atom(), (0, 2), filters=small)
        h.create_vlarray("/", "case_meta", tables.VLStringAtom(),  # VLArrays take no checksum
                         filters=tables.Filters(complevel=5, complib="zlib"))

    def append(self, case: PreparedSlices) -> None:
        """Write one patient's slices, labels (zeros when None), counts, classes, metadata."""
        h = self._h
        if h is None:
            raise RuntimeError("SliceStoreWriter.append outside its with-block")
        n = case.images.shape[0]
        if case.images.shape[1:] != (*self.shape, self.n_channels) or n == 0:
            raise DataError(f"case {case.case_id}: slices {case.images.shape} differ from the "
                            f"store's (S>0, {self.shape[0]}, {self.shape[1]}, {self.n_channels})")
        labels = case.labels if case.labels is not None else np.zeros((n, *self.shape), np.uint8)
        meta = dict(case.meta, case_id=case.case_id, has_labels=case.labels is not None,
                    n_slices=n)
        with writing(self.path):  # a full disk: one line naming the store
            h.root.images.append(np.asarray(case.images, self.dtype))
            h.root.labels.append(labels)
            h.root.case_index.append(np.array([[self.n_slices, self.n_slices + n]], np.int64))
            h.root.slice_tumour.append((labels > 0).sum(axis=(1, 2), dtype=np.int32))
            h.root.slice_class.append(np.asarray(case.classes, np.uint8))
            h.root.slice_shape.append(np.asarray(case.shapes, np.int32).reshape(n, 2))
            h.root.case_meta.append(json.dumps(meta).encode())
        self.case_ids.append(case.case_id)
        self.metas.append(meta)
        self.n_slices += n

    def finish(self, folds: Folds | None, info: dict[str, Any],
               before_rename: Callable[[], object] | None = None) -> Path:
        """Write the header, close, call ``before_rename()`` (the files beside the store),
        rename onto ``path`` (replacing it); return the path."""
        h = self._h
        if h is None:
            raise RuntimeError("SliceStoreWriter.finish outside its with-block")
        header = {
            "schema_version": SCHEMA_VERSION, "layout": LAYOUT, "case_ids": self.case_ids,
            "slice_shape": list(self.shape), "volume_shape": [*self.shape, 0],
            "n_slices": self.n_slices, "n_channels": self.n_channels,
            "image_dtype": self.dtype.name, "crop_box": [],
            "grades": {m["case_id"]: m.get("grade") for m in self.metas},
            "conventions": {m["case_id"]: m.get("convention") for m in self.metas},
            "has_labels": all(m["has_labels"] for m in self.metas),
            "folds": folds.folds if folds else [], "holdout": folds.holdout if folds else [],
            "folds_seed": folds.seed if folds else None, **info,
        }
        with writing(self.path):
            h.root._v_attrs.braintseg_json = json.dumps(header)
            h.root._v_attrs.complete = True
            self._h = None
            h.close()
        if before_rename is not None:
            before_rename()
        commit(self.tmp, self.path)  # fsync, rename, fsync the folder
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self._h is not None:
            self._h.close()
            self._h = None
        self.tmp.unlink(missing_ok=True)
