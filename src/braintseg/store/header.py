"""Opening a store file and checking what it claims, before any bulk read; the one-line errors
of a store that fails a read.

:func:`read_header` checks the HDF5 signature, the ``complete`` flag and ``schema_version``
(:data:`~braintseg.store.write.READABLE_VERSIONS`), then the shape of every array against the
header (``/images``, ``/labels``, the per-slice or per-view tumour tables, ``/case_meta``: one
row per case) and returns ``(header dict, case metas, tumour tables)``.  Damaged metadata may
claim billions of rows, so shapes are checked before anything is read.

Errors: every read failure of a store (:data:`READ_ERRORS`) becomes one :class:`DataError`
from :func:`damaged`: ``store X: <what> cannot be read (<why>); damaged: re-run prepare``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tables
from numpy.typing import NDArray

from braintseg.data.preprocess import VIEW_AXIS
from braintseg.errors import DataError
from braintseg.store.chunks import ChunkError
from braintseg.store.write import READABLE_VERSIONS

#: what a damaged or truncated store raises on read (each becomes one "damaged" DataError):
#: HDF5's errors (PyTables' HDF5ExtError and h5py's are RuntimeErrors, e.g. "wrong B-tree
#: signature" from the chunk index), short or failed reads, checksums and Blosc (ChunkError is
#: a ValueError), metadata that no longer parses or has the wrong type or size
READ_ERRORS = (RuntimeError, OSError, ValueError, LookupError, TypeError, MemoryError,
               tables.NoSuchNodeError, ChunkError)
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


def read_header(
    path: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, NDArray[np.int32]]]:
    """``(header, case metas, tumour tables)`` of the finished store at ``path``, every shape
    checked against the header (call under the HDF5 lock of the reader).

    The header is the root's ``braintseg_json`` plus ``schema_version``; the metas one dict a
    case (``/case_meta``); the tables ``{view: (N, S) int32}`` of a volume store, or
    ``case_index`` ``(N, 2)``, ``slice_tumour``, ``slice_class``, ``slice_shape`` of a slice store.

    Raises:
        DataError: missing, not HDF5, unfinished, another schema version, or damaged.
    """
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
        h = open_read(path)
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


def open_read(path: Path, **kwargs: Any) -> tables.File:
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
