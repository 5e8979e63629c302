"""Data layer: NIfTI cases → preprocessing → the PyTables slice store (no Keras here).

Public API (see docs/design.md): :func:`find_cases`, :func:`load_case`, :func:`save_labels`,
:func:`normalize`, :func:`crop`, :func:`uncrop`, :func:`to_internal`, :func:`to_source`,
:class:`SliceStore`, :func:`open_store`, :func:`make_folds`.
"""

from __future__ import annotations

from braintseg.data.folds import Folds, folds_path, load_folds, make_folds
from braintseg.data.nifti import CaseFiles, LoadedCase, find_cases, load_case, save_labels
from braintseg.data.preprocess import (
    VIEW_AXIS,
    auto_crop_box,
    crop,
    normalize,
    to_internal,
    to_source,
    uncrop,
)
from braintseg.data.store import SliceStore, open_store

__all__ = [
    "VIEW_AXIS", "CaseFiles", "Folds", "LoadedCase", "SliceStore", "auto_crop_box", "crop",
    "find_cases", "folds_path", "load_case", "load_folds", "make_folds", "normalize",
    "open_store", "save_labels", "to_internal", "to_source", "uncrop",
]
