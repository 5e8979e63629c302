"""Input cases for predict: NIfTI case folders (normalised exactly as ``prepare`` does) or a store.

Every case becomes a :class:`CaseInput`: the cropped, normalised ``(X', Y', Z', C)`` float16
images on the training crop box, plus what is needed to write the result in the source geometry
(original shape, affine, NIfTI header, label convention).  Cases are *planned* first (cheap:
headers only) so that every bad input is reported before anything is predicted or written.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.config import DataConfig, output_name
from braintseg.data.ids import unsafe
from braintseg.errors import ConfigError, DataError
from braintseg.sources.brats import find_cases, header_from_hex, read_header
from braintseg.store.read import open_store

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int, int, int]


@dataclass
class CaseInput:
    """One case ready for the network.

    Attributes:
        images: ``(X', Y', Z', C)`` float16, C-contiguous, normalised, cropped to ``box``.
        box: crop box on the source grid.  shape: source ``(X, Y, Z)``.
        affine: ``(4, 4)`` float64 source voxel-to-world.  header: source ``Nifti1Header``.
        convention: ``brats2018`` ({0,1,2,4}) or ``brats2023`` ({0,1,2,3}).
        seconds: time spent reading and normalising.
        format: the source that writes the prediction back
            (:meth:`braintseg.sources.base.Source.write_prediction`; ``brats``).
    """

    case_id: str
    images: NDArray[np.float16]
    box: Box
    shape: tuple[int, int, int]
    affine: NDArray[np.float64]
    header: Any
    convention: str
    seconds: float
    format: str = "brats"


@dataclass(frozen=True)
class CasePlan:
    """A case found and checked (headers only); ``load()`` reads and normalises it;
    ``close()`` releases the input (the store's HDF5 handle) once every case is done."""

    case_id: str
    load: Callable[[], CaseInput]
    close: Callable[[], None] = lambda: None


def check_case_id(case_id: str, pattern: str, out_dir: Path) -> Path:
    """The output path for ``case_id``; DataError if it would leave ``out_dir``.

    Raises:
        DataError: the id is empty, ``.``/``..``, contains a path separator or ``..``, or the
            resulting name is not directly inside ``out_dir``.
    """
    bad = unsafe(case_id)
    name = output_name(pattern, case_id)
    target = out_dir / name
    if bad or target.parent != out_dir or target.name.startswith("."):
        raise DataError(f"case id {case_id!r} would write outside {out_dir} "
                        f"({name!r}); expected a plain file name")
    return target


def _check_grid(case_id: str, shape: Sequence[int], box: Box, where: str) -> None:
    if len(shape) != 3 or any(box[2 * a + 1] > shape[a] for a in range(3)):
        raise DataError(
            f"case {case_id}: volume shape {tuple(shape)} ({where}) does not contain the "
            f"training crop box {list(box)}; expected at least "
            f"{tuple(box[2 * a + 1] for a in range(3))}"
        )


def _load_nifti(files: Any, root: Path, box: Box, data: DataConfig) -> CaseInput:
    from braintseg.preparation.volumes import (
        prepare_case,  # the very function prepare uses per case
    )

    start = time.perf_counter()
    files = dataclasses.replace(files, seg=None)  # labels are not needed: do not read them
    prepared = prepare_case(files, root, box, data, "float16", skip=False)
    assert not isinstance(prepared, tuple)  # noqa: S101 - skip=False raises instead
    meta = prepared.meta
    header = header_from_hex(meta["header_hex"])
    return CaseInput(files.case_id, np.ascontiguousarray(prepared.images, np.float16), box,
                     tuple(meta["original_shape"]), np.asarray(meta["affine"], np.float64),
                     header, files.convention, time.perf_counter() - start)


def nifti_plans(root: Path, box: Box, data: DataConfig, cases: list[str] | None) -> list[CasePlan]:
    """Case folders below ``root`` (or ``root`` itself), checked against the crop box.

    Raises:
        DataError: no cases, a missing modality, unknown ``cases``, or a volume that does not
            contain the crop box.
    """
    found = find_cases(root, require_labels=False)
    if cases is not None:
        by_id = {f.case_id: f for f in found}
        unknown = [c for c in cases if c not in by_id]
        if unknown:
            raise DataError(f"--cases {unknown} not found under {root}; available: "
                            f"{sorted(by_id)[:10]}")
        found = [by_id[c] for c in cases]
    plans = []
    for files in found:
        shape, _ = read_header(files.images["flair"], files.case_id)
        _check_grid(files.case_id, shape, box, files.images["flair"].name)
        plans.append(CasePlan(files.case_id, lambda f=files: _load_nifti(f, root, box, data)))
    return plans


def _load_store(store: Any, index: int, box: Box) -> CaseInput:
    start = time.perf_counter()
    meta = store.case_meta(index)
    images, _ = store.read_case(index)
    return CaseInput(store.case_ids[index], np.ascontiguousarray(images, np.float16), box,
                     tuple(meta["original_shape"]), np.asarray(meta["affine"], np.float64),
                     header_from_hex(meta["header_hex"]), meta["convention"],
                     time.perf_counter() - start, str(meta.get("format", "brats")))


def store_plans(path: Path, box: Box, n_channels: int, cases: list[str] | None,
                fold: int | None) -> list[CasePlan]:
    """Cases of a store (all, ``cases``, or fold ``fold``'s validation cases).

    Raises:
        DataError: not a store, unknown case ids or fold, or a store whose crop box / channel
            count differs from the runs'.
    """
    store = open_store(path)
    if list(store.crop_box) != list(box) or store.n_channels != n_channels:
        raise DataError(
            f"store {path} has crop box {list(store.crop_box)} and {store.n_channels} channels; "
            f"the runs expect {list(box)} and {n_channels} (prepare it with the runs' config)"
        )
    if fold is not None:
        ids = store.fold_cases(fold)[1]
        if cases is not None:
            ids = [c for c in ids if c in set(cases)]
    else:
        ids = list(store.case_ids) if cases is None else list(cases)
    plans = []
    for case_id in ids:
        i = store.index_of(case_id)
        _check_grid(case_id, store.case_meta(i)["original_shape"], box, str(path))
        plans.append(CasePlan(case_id, lambda i=i: _load_store(store, i, box), store.close))
    return plans


def plan_cases(input_path: Path, box: Box, n_channels: int, data: DataConfig,
               cases: list[str] | None, fold: int | None) -> list[CasePlan]:
    """Dispatch on the input: a store file (``.h5``/``.hdf5``) or a folder of cases.

    Raises:
        DataError / ConfigError: missing input, ``--fold`` with NIfTI input, no cases selected.
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise DataError(f"input {input_path} does not exist; expected a folder of BraTS cases, "
                        "one case folder or a store (.h5)")
    if input_path.is_file():
        plans = store_plans(input_path, box, n_channels, cases, fold)
    else:
        if fold is not None:
            raise ConfigError(f"--fold {fold} needs a store input; {input_path} is a folder "
                              "(use --cases to pick NIfTI cases)")
        if n_channels != 4:
            raise DataError(f"runs expect {n_channels} channels; NIfTI cases have 4 modalities")
        plans = nifti_plans(input_path, box, data, cases)
    if not plans:
        raise DataError(f"no cases selected from {input_path} (--cases/--fold picked none)")
    return plans
