"""The ``volumes`` layout of ``prepare``: BraTS NIfTI case folders → one volume store.

Flow (inside the stage, :mod:`braintseg.preparation.layout`): find cases (exact suffixes) →
scan problems fail or are skipped → fold feasibility → validate the crop box against every
case's header (before any heavy work; ``auto`` first reads every case to find the nonzero
bounding box) → worker processes (:mod:`braintseg.workers`) load, check, normalise and crop one
case each (:func:`prepare_case`) → the parent appends cases in case-id order to a temporary store
(:class:`braintseg.store.write.StoreWriter`: ``/images (N, X, Y, Z, 4)`` in ``store.dtype``,
``/labels (N, X, Y, Z)`` uint8 {0, 1, 2, 3}) → folds → the sidecars →
the store is renamed into place last.

Every error, in a worker or here, is one :class:`DataError` naming the case and file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from braintseg import __version__
from braintseg.config import MODALITIES, Config, DataConfig, to_dict
from braintseg.data.folds import Folds, make_folds
from braintseg.data.preprocess import (
    apply_normalization,
    auto_crop_box,
    crop,
    nonzero_box,
    normalization_stats,
    validate_box,
)
from braintseg.errors import BraintsegError, ConfigError, DataError
from braintseg.log import progress
from braintseg.preparation.layout import Job
from braintseg.preparation.output import (
    Failure,
    input_fingerprint,
    kill_point,
    sidecar_texts,
    write_sidecars,
)
from braintseg.sources.brats import CaseFiles, header_to_hex, load_case, read_header, scan_cases
from braintseg.store.codec import encode_int16
from braintseg.store.write import PreparedCase, StoreWriter
from braintseg.workers import imap_bounded

logger = logging.getLogger(__name__)


def case_meta(files: CaseFiles, root: Path, loaded: Any, box: Sequence[int],
              stats: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON-serialisable metadata kept per case (geometry, header, sources, stats)."""
    hdr = loaded.header
    sources: dict[str, Path] = dict(files.images)
    if files.seg is not None:
        sources["seg"] = files.seg
    return {
        "convention": files.convention, "grade": files.grade,
        "original_shape": list(loaded.images.shape[:3]),
        "affine": np.asarray(loaded.affine).tolist(),
        "qform": np.asarray(hdr.get_qform()).tolist(), "qform_code": int(hdr["qform_code"]),
        "sform": np.asarray(hdr.get_sform()).tolist(), "sform_code": int(hdr["sform_code"]),
        "pixdim": [float(v) for v in hdr["pixdim"]], "header_hex": header_to_hex(hdr),
        "crop_box": list(box),
        "source_files": {k: str(Path(p).resolve()) for k, p in sources.items()},
        "source_relative": {k: os.path.relpath(p, root) for k, p in sources.items()},
        "normalization": stats,
    }


def _fail_or_raise(exc: BraintsegError, files: CaseFiles, skip: bool) -> Failure:
    if not skip:
        raise exc
    return (files.case_id, str(exc))


def _unexpected(files: CaseFiles, exc: Exception) -> DataError:
    """Any other error of a worker, as one line naming the case and its folder."""
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return DataError(f"case {files.case_id}: cannot prepare the files in {files.folder} "
                     f"({type(exc).__name__}: {text})")


def _stats(images: Any, data: DataConfig) -> list[dict[str, Any]]:
    if data.normalization == "zscore":
        return normalization_stats(images, data.clip_percentiles, MODALITIES)
    for c, m in enumerate(MODALITIES):
        if not images[..., c].any():
            raise DataError(f"modality '{m}' is all zero; expected a brain image")
    return [{"modality": m, "method": "none"} for m in MODALITIES]


def prepare_case(files: CaseFiles, root: Path, box: Sequence[int], data: DataConfig,
                 dtype: str, skip: bool) -> PreparedCase | Failure:
    """Worker: load, check, normalise (whole brain), crop one case; a Failure when skipping.

    ``dtype`` int16 keeps the clipped source intensities (normalised on read, see
    :mod:`braintseg.store.codec`); float16/float32 store the normalised values.  Every error is
    a one-line DataError naming the case (and the file, where one file is at fault).
    """
    try:
        loaded = load_case(files)
        if dtype == "int16":
            stats = _stats(loaded.images, data)
            names = [f"modality '{m}' ({files.images[m].name})" for m in MODALITIES]
            images = encode_int16(crop(loaded.images, box), stats, names)
        elif data.normalization == "zscore":  # statistics over the whole brain, applied to the crop
            stats = normalization_stats(loaded.images, data.clip_percentiles, MODALITIES)
            images = apply_normalization(crop(loaded.images, box), stats, dtype)
        else:  # crop first: only the box is converted (the checks still see the whole volume)
            stats = _stats(loaded.images, data)
            images = np.ascontiguousarray(crop(loaded.images, box), dtype=dtype)
        labels = None if loaded.labels is None else np.ascontiguousarray(crop(loaded.labels, box))
        meta = case_meta(files, root, loaded, box, stats)
    except DataError as exc:
        msg = str(exc) if str(exc).startswith("case ") else f"case {files.case_id}: {exc}"
        return _fail_or_raise(DataError(msg), files, skip)
    except Exception as exc:  # noqa: BLE001 - one line for anything a worker meets
        return _fail_or_raise(_unexpected(files, exc), files, skip)
    return PreparedCase(files.case_id, images, labels, meta)


def case_box(files: CaseFiles, skip: bool) -> tuple[str, Any] | Failure:
    """Worker for ``crop: auto``: full checks, then the nonzero bounding box of the case."""
    try:
        loaded = load_case(files)
        box = nonzero_box(loaded.images)
        if box is None:
            raise DataError(f"case {files.case_id}: all modalities are zero")
        for c, m in enumerate(MODALITIES):
            if not loaded.images[..., c].any():
                raise DataError(f"case {files.case_id}: modality '{m}' "
                                f"({files.images[m].name}) is all zero")
    except DataError as exc:
        return _fail_or_raise(exc, files, skip)
    except Exception as exc:  # noqa: BLE001 - one line for anything a worker meets
        return _fail_or_raise(_unexpected(files, exc), files, skip)
    return ("ok", (files.case_id, box, loaded.images.shape[:3]))


def _case_name(files: CaseFiles) -> str:
    return f"case {files.case_id}"


def _resolve_box(cfg: Config, cases: list[CaseFiles], pool: tuple[Executor, int], skip: bool,
                 failures: list[Failure]) -> tuple[tuple[int, ...], list[CaseFiles]]:
    multiple = 2 ** cfg.model.levels
    shapes: dict[str, tuple[int, ...]] = {}
    for files in cases:
        try:
            shapes[files.case_id] = read_header(files.images["flair"], files.case_id)[0]
            if len(shapes[files.case_id]) != 3:
                shp = shapes[files.case_id]
                raise DataError(f"case {files.case_id}: {files.images['flair'].name} has "
                                f"{len(shp)}D shape {shp}; expected a 3D volume")
        except DataError as exc:
            failures.append(_fail_or_raise(exc, files, skip))
    cases = [c for c in cases if c.case_id in shapes and len(shapes[c.case_id]) == 3]
    if cfg.data.crop != "auto":
        for files in cases:
            validate_box(cfg.data.crop, shapes[files.case_id], multiple, f"case {files.case_id}")
        return tuple(cfg.data.crop), cases
    boxes, good = [], []
    fn = functools.partial(case_box, skip=skip)
    results = imap_bounded(fn, cases, *pool, describe=_case_name)
    with contextlib.closing(results):
        for files, res in zip(cases, progress(results, len(cases), "scanning (crop auto)",
                                              "case"), strict=True):
            if res[0] == "ok":
                boxes.append(res[1][1])
                good.append(files)
            else:
                failures.append(res)
    if not good:
        raise DataError("no valid cases left to prepare")
    shape = tuple(min(shapes[c.case_id][a] for c in good) for a in range(3))
    box = auto_crop_box(boxes, shape, multiple)
    for files in good:
        validate_box(box, shapes[files.case_id], multiple, f"case {files.case_id}")
    logger.info("crop auto: box %s (union of nonzero voxels over %d cases)", list(box), len(good))
    return box, good


def input_files(case: CaseFiles) -> list[tuple[str, str, Path]]:
    """``[(case id, key, path), ...]`` of a case's files (modalities and seg, by key)."""
    named = {**case.images, **({"seg": case.seg} if case.seg else {})}
    return [(case.case_id, key, p) for key, p in sorted(named.items())]


class VolumeLayout:
    """``prepare`` of a BraTS NIfTI tree (the :class:`braintseg.preparation.layout.Layout` of
    ``volumes``)."""

    NOUN = "case"

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cases: list[CaseFiles] = []
        self.problems: list[Failure] = []
        self.box: tuple[int, ...] = ()
        self.written: list[CaseFiles] = []  # the cases left after the crop box checks
        self.folds: Folds | None = None
        self.failures: list[Failure] = []

    def scan(self) -> str:
        """Refuse slice-only options, find the case folders; the input fingerprint."""
        job = self.job
        if job.folds_from is not None or job.validation_cases is not None:
            raise ConfigError("--folds-from and --validation-cases apply to 2D slice data sets; "
                              "BraTS folds come from data.n_folds / data.seed")
        if job.cfg.data.normalization == "slice":
            raise ConfigError("data.normalization: slice applies to 2D slice data sets; BraTS "
                              "volumes take zscore or none")
        self.cases, self.problems = scan_cases(job.root, job.require_labels)
        options = {"skip_invalid": job.skip_invalid, "require_labels": job.require_labels}
        files = [f for c in self.cases for f in input_files(c)]
        return input_fingerprint(job.cfg, job.root, files, self.problems, options)

    def check(self) -> list[Failure]:
        """Scan problems → failures (or the first raises); folds must be possible."""
        failures: list[Failure] = []
        for cid, msg in self.problems:
            if not self.job.skip_invalid:
                raise DataError(msg)
            failures.append((cid, msg))
        cases = self.cases
        if cases and all(c.seg is not None for c in cases):  # fold feasibility, before any work
            d = self.job.cfg.data
            make_folds([c.case_id for c in cases], {c.case_id: c.grade for c in cases},
                       d.n_folds, d.seed, d.holdout_fraction)
        return failures

    def write_store(self, pool: tuple[Executor, int], failures: list[Failure],
                    fingerprint: str) -> Path:
        """Crop box, then the cases through the workers into the store; sidecars; rename."""
        job = self.job
        cfg, root, output, skip = job.cfg, job.root, job.output, job.skip_invalid
        self.failures = failures
        box, cases = _resolve_box(cfg, self.cases, pool, skip, failures)
        if not cases:
            raise DataError(f"no valid cases left to prepare under {root}")
        self.box, self.written = box, cases
        shape = (box[1] - box[0], box[3] - box[2], box[5] - box[4])
        fn = functools.partial(prepare_case, root=root, box=box, data=cfg.data,
                               dtype=cfg.store.dtype, skip=skip)
        writer = StoreWriter(output, shape, len(MODALITIES), cfg.store.compression,
                             cfg.store.complevel, cfg.store.dtype, expected_cases=len(cases))
        results = imap_bounded(fn, cases, *pool, describe=_case_name)
        with writer, contextlib.closing(results):
            for res in progress(results, len(cases), "prepare", "case"):
                if isinstance(res, PreparedCase):
                    writer.append(res)
                    kill_point("appended")
                else:
                    logger.warning("skipping %s", res[1])
                    failures.append(res)
            if not writer.case_ids:
                raise DataError(f"no valid cases left to prepare under {root}")
            labelled = [m["case_id"] for m in writer.metas if m["has_labels"]]
            folds = None
            if len(labelled) == len(writer.case_ids):
                d = cfg.data
                folds = make_folds(labelled, {m["case_id"]: m["grade"] for m in writer.metas},
                                   d.n_folds, d.seed, d.holdout_fraction)
            else:
                logger.warning("store has cases without labels: no folds (inference-only store)")
            texts = sidecar_texts(cfg, folds, failures)
            info = {"crop_box": list(box), "modalities": list(MODALITIES),
                    "config": to_dict(cfg), "source_root": str(root.resolve()),
                    "braintseg_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "input_fingerprint": fingerprint, "sidecars": texts}

            def beside() -> None:  # the store is complete under its temporary name
                kill_point("closed")
                write_sidecars(output, texts)
                kill_point("sidecars")

            path = writer.finish(folds, info, before_rename=beside)
        kill_point("renamed")
        self.folds = folds
        return path

    def summary(self, elapsed: float, workers: int) -> str:
        """``<n> cases, crop <box>, <s> s (<s> s/case, <w> workers)[, <k> folds]``."""
        ids = {c.case_id for c in self.written}
        n = len(self.written) - sum(1 for cid, _ in self.failures if cid in ids)
        folds = f", {len(self.folds.folds)} folds" if self.folds else ""
        return (f"{n} cases, crop {list(self.box)}, {elapsed:.1f} s "
                f"({elapsed / max(n, 1):.2f} s/case, {workers} workers){folds}")
