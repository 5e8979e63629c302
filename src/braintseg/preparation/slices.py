"""The ``slices`` layout of ``prepare``: 2D slice data sets (LGG kaggle_3m TIFFs, figshare
``.mat``) → one slice store.

Flow (inside the stage, :mod:`braintseg.preparation.layout`): the format's reader finds
patients (:mod:`braintseg.sources.registry`) → fold feasibility is checked before any heavy work
→ worker processes decode one patient each, bring its slices to the store size (integer pixel
repeat, :func:`braintseg.sources.base.to_stack`) and normalise per patient and channel (z-score
over nonzero pixels after the percentile clip, the BraTS rule with the patient's stack of slices
as the volume) → the parent appends patients in id order to a slice store
(:mod:`braintseg.store.slice_writer`: ``/images (N, H, W, C)``, ``/labels (N, H, W)`` uint8) →
patient-level folds, stratified by grade (LGG) or majority tumour type (figshare), or taken from
``--folds-from cvind.mat`` or ``--validation-cases FILE`` → sidecars
(:mod:`braintseg.preparation.output`) → rename into place.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from braintseg import __version__
from braintseg.config import Config, DataConfig, to_dict
from braintseg.data.folds import Folds, make_folds
from braintseg.data.preprocess import apply_normalization, normalization_stats
from braintseg.errors import ConfigError, DataError
from braintseg.log import progress
from braintseg.preparation.layout import Job
from braintseg.preparation.output import (
    Failure,
    input_fingerprint,
    sidecar_texts,
    write_sidecars,
)
from braintseg.sources.base import SliceCase, SliceFiles, to_stack
from braintseg.sources.registry import source
from braintseg.store.slice_writer import PreparedSlices, SliceStoreWriter
from braintseg.workers import imap_bounded

logger = logging.getLogger(__name__)

RESIZE_RULE = ("integer pixel repeat (nearest neighbour) of smaller slices up to the store's "
               "slice size; predictions return by averaging probabilities over each block")


def normalise_case(case: SliceCase, size: tuple[int, int], data: DataConfig,
                   dtype: str) -> tuple[np.ndarray, np.ndarray | None, list[list[int]],
                                        list[dict[str, Any]]]:
    """``(images (S, H, W, C) dtype, masks (S, H, W) uint8 or None, source sizes, stats)``.

    Normalisation per patient and channel: ``data.normalization: zscore`` uses
    :func:`braintseg.data.preprocess.normalization_stats` on the patient's stack (nonzero pixels,
    ``data.clip_percentiles``); ``slice`` does the same on each slice alone
    (:func:`slice_normalise`); ``none`` keeps the source values (as float).
    """
    stack, masks, shapes = to_stack(case, size)
    where = f"case {case.case_id}"
    if data.normalization == "slice":
        images, stats = slice_normalise(stack, data.clip_percentiles, case.channels, dtype)
    elif data.normalization == "zscore":
        try:
            stats = normalization_stats(stack, data.clip_percentiles, case.channels)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        images = apply_normalization(stack, stats, dtype)
    else:
        stats = [{"modality": m, "method": "none"} for m in case.channels]
        images = np.ascontiguousarray(stack, dtype=dtype)
    return images, masks, shapes, stats


def slice_normalise(stack: np.ndarray, clip_percentiles: tuple[float, float],
                    channels: tuple[str, ...], dtype: str
                    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Per-slice scaling (``data.normalization: slice``): each slice and channel z-scored on its
    own nonzero pixels after the same percentile clip; a slice channel with no nonzero pixel or
    constant intensity becomes 0.  ``stack (S, H, W, C)`` → ``(S, H, W, C) dtype`` and one dict
    per channel ``{modality, method: slice, n_constant}`` (slice channels set to 0)."""
    out = np.zeros(stack.shape, dtype)
    constant = [0] * len(channels)
    for s in range(stack.shape[0]):
        for c, name in enumerate(channels):
            try:
                st = normalization_stats(stack[s, ..., c:c + 1], clip_percentiles, (name,))
            except DataError:  # empty or constant: nothing to scale
                constant[c] += 1
                continue
            out[s, ..., c] = apply_normalization(stack[s, ..., c:c + 1], st, dtype)[..., 0]
    return out, [{"modality": m, "method": "slice", "n_constant": n}
                 for m, n in zip(channels, constant, strict=True)]


def prepare_patient(files: SliceFiles, root: Path, size: tuple[int, int], data: DataConfig,
                    dtype: str, skip: bool) -> PreparedSlices | Failure:
    """Worker: decode, check, resize and normalise one patient; a Failure when skipping."""
    try:
        case = source(files.format).load_case(files)
        images, masks, shapes, stats = normalise_case(case, size, data, dtype)
    except DataError as exc:
        if not skip:
            raise
        return (files.case_id, str(exc))
    meta = {
        "convention": files.convention, "grade": files.grade, "format": files.format,
        "channels": list(case.channels), "slice_ids": list(files.slice_ids),
        "source_relative": [os.path.relpath(p, root) for p in files.images],
        "mask_relative": ([os.path.relpath(p, root) for p in files.masks]
                          if files.masks is not None else None),
        "source_dtype": str(case.images[0].dtype), "normalization": stats, **files.extra,
    }
    return PreparedSlices(files.case_id, images, masks, case.classes,
                          np.asarray(shapes, np.int32), meta)


def read_validation_cases(path: Path, case_ids: list[str]) -> list[str]:
    """Patient ids from ``path`` (one a line; blank lines and ``#`` comments ignored).

    Raises:
        DataError: the file is missing or empty, names a slice (a slice-level split puts one
            patient on both sides and is refused), or names an unknown patient.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read validation list {path}: {exc.strerror}") from None
    ids = [ln.split("#", 1)[0].strip() for ln in lines]
    ids = [i for i in ids if i]
    known = set(case_ids)
    for i in ids:
        if i in known:
            continue
        owner = next((c for c in case_ids if i.startswith(c + "_")), None)
        if owner is not None:
            raise DataError(f"{path}: {i!r} is a slice of patient {owner}; folds are by patient "
                            "(slices of one patient on both sides leak it into validation)")
        raise DataError(f"{path}: patient {i!r} is not in the input")
    if not ids:
        raise DataError(f"{path}: no patient ids (expected one a line)")
    return sorted(set(ids))


def make_slice_folds(cfg: Config, cases: list[SliceFiles], folds_from: Path | None,
                     validation_cases: Path | None) -> Folds:
    """Patient-level folds: cvind file, explicit validation list, or stratified k-fold."""
    ids = [c.case_id for c in cases]
    grades = {c.case_id: c.grade for c in cases}
    d = cfg.data
    if folds_from is not None and validation_cases is not None:
        raise ConfigError("--folds-from and --validation-cases exclude each other; choose one")
    if folds_from is not None:
        if cases and cases[0].format != "figshare":
            raise ConfigError("--folds-from reads the figshare split cvind.mat; this input is "
                              f"{cases[0].format}")
        from braintseg.sources.figshare import folds_from_cvind, read_cvind

        return folds_from_cvind(cases, read_cvind(folds_from), str(folds_from), d.seed)
    if validation_cases is not None:
        val = read_validation_cases(validation_cases, ids)
        rest = sorted(set(ids) - set(val))
        if not rest:
            raise DataError(f"{validation_cases}: lists every patient; nothing left to train on")
        # fold 0 validates on the list; fold 1 (the others) exists so fold 0 has training cases
        return Folds([val, rest], [], 2, d.seed, 0.0, grades)
    return make_folds(ids, grades, d.n_folds, d.seed, d.holdout_fraction)


def _store_size(cases: list[SliceFiles]) -> tuple[int, int]:
    sizes = [tuple(s) for c in cases for s in c.extra.get("sizes", [])]
    if sizes and len(sizes) == sum(len(c.slice_ids) for c in cases):
        return max(sizes)  # type: ignore[return-value]
    first = source(cases[0].format).load_case(
        SliceFiles(**{**cases[0].__dict__, "slice_ids": cases[0].slice_ids[:1],
                      "images": cases[0].images[:1],
                      "masks": cases[0].masks[:1] if cases[0].masks else None}))
    return int(first.images[0].shape[0]), int(first.images[0].shape[1])


def input_files(case: SliceFiles) -> list[tuple[str, str, Path]]:
    """``[(patient id, key, path), ...]``: every slice image, then every mask."""
    masks = case.masks or ()
    return ([(case.case_id, f"image {s}", p)
             for s, p in zip(case.slice_ids, case.images, strict=True)]
            + [(case.case_id, f"mask {s}", p) for s, p in zip(case.slice_ids, masks, strict=True)])


class SliceLayout:
    """``prepare`` of a 2D slice data set (the :class:`braintseg.preparation.layout.Layout` of
    ``slices``); ``job.fmt`` is ``lgg`` or ``figshare``."""

    NOUN = "patient"

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cases: list[SliceFiles] = []
        self.problems: list[Failure] = []
        self.size = (0, 0)
        self.writer: SliceStoreWriter | None = None
        self.folds: Folds | None = None

    def scan(self) -> str:
        """Find the patients (readers without ``scan_cases`` raise on the first bad patient
        instead of listing it); the input fingerprint (the patient table and the folds or
        validation file count as inputs)."""
        job = self.job
        options = {"format": job.fmt, "skip_invalid": job.skip_invalid,
                   "require_labels": job.require_labels,
                   "folds_from": str(job.folds_from) if job.folds_from else None,
                   "validation_cases": str(job.validation_cases) if job.validation_cases else None}
        rd = source(job.fmt)
        if hasattr(rd, "scan_cases"):
            self.cases, self.problems = rd.scan_cases(job.root, job.require_labels)
        else:
            self.cases, self.problems = rd.find_cases(job.root, job.require_labels), []
        extra = [job.root / "data.csv",
                 *(Path(options[k]) for k in ("folds_from", "validation_cases") if options[k])]
        files = [f for c in self.cases for f in input_files(c)]
        return input_fingerprint(job.cfg, job.root, files, self.problems, options, extra)

    def check(self) -> list[Failure]:
        """Scan problems → failures (or the first raises); some patient left; folds possible;
        the store's slice size divisible by ``2**model.levels``."""
        job, cases = self.job, self.cases
        failures: list[Failure] = []
        for pid, msg in self.problems:
            if not job.skip_invalid:
                raise DataError(msg)
            logger.warning("skipping patient %s: %s", pid, msg)
            failures.append((pid, msg))
        if not cases:
            raise DataError(f"no patients found under {job.root} (format {job.fmt})"
                            + (" that could be used" if failures else ""))
        if all(c.masks is not None for c in cases):  # fold feasibility, before any heavy work
            make_slice_folds(job.cfg, cases, job.folds_from, job.validation_cases)
        size = self.size = _store_size(cases)
        levels = 2 ** job.cfg.model.levels
        if size[0] % levels or size[1] % levels:
            raise ConfigError(f"slices of {job.root} are {size[0]}x{size[1]}; model.levels="
                              f"{job.cfg.model.levels} needs both divisible by {levels}")
        return failures

    def write_store(self, pool: Any, failures: list[Failure], fingerprint: str) -> Path:
        """Patients through the workers into the slice store; folds; sidecars; rename."""
        job, cases, cfg, root, fmt = self.job, self.cases, self.job.cfg, self.job.root, self.job.fmt
        n_channels = len(source(fmt).CHANNELS)
        fn = functools.partial(prepare_patient, root=root, size=self.size, data=cfg.data,
                               dtype=cfg.store.dtype, skip=job.skip_invalid)
        writer = self.writer = SliceStoreWriter(
            job.output, self.size, n_channels, cfg.store.compression, cfg.store.complevel,
            cfg.store.dtype, expected_slices=sum(len(c.slice_ids) for c in cases))
        results = imap_bounded(fn, cases, *pool, describe=lambda f: f"patient {f.case_id}")
        with writer, contextlib.closing(results):
            for res in progress(results, len(cases), "prepare", "patient"):
                if isinstance(res, PreparedSlices):
                    if res.images.shape[-1] != n_channels:
                        raise DataError(f"case {res.case_id}: {res.images.shape[-1]} channels; "
                                        f"expected {n_channels} for {fmt}")
                    writer.append(res)
                else:
                    logger.warning("skipping %s", res[1])
                    failures.append(res)
            if not writer.case_ids:
                raise DataError(f"no valid patients left to prepare under {root}")
            kept = [c for c in cases if c.case_id in set(writer.case_ids)]
            labelled = all(c.masks is not None for c in cases)
            folds = (make_slice_folds(cfg, kept, job.folds_from, job.validation_cases)
                     if labelled else None)
            if folds is None:
                logger.warning("store has patients without masks: no folds (inference-only store)")
            info = {"format": fmt, "convention": cases[0].convention,
                    "channels": list(writer.metas[0]["channels"]), "resize_rule": RESIZE_RULE,
                    "config": to_dict(cfg), "source_root": str(root.resolve()),
                    "folds_source": str(job.folds_from or job.validation_cases or "make_folds"),
                    "braintseg_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "input_fingerprint": fingerprint}
            texts = sidecar_texts(cfg, folds, failures)
            info["sidecars"] = texts
            path = writer.finish(folds, info,
                                 before_rename=lambda: write_sidecars(job.output, texts))
        self.folds = folds
        return path

    def summary(self, elapsed: float, workers: int) -> str:
        """``<n> patients, <s> slices of <H>x<W>, <s> s[, <k> folds]``."""
        assert self.writer is not None  # noqa: S101 - called after write_store
        folds = f", {len(self.folds.folds)} folds" if self.folds else ""
        return (f"{len(self.writer.case_ids)} patients, {self.writer.n_slices} slices of "
                f"{self.size[0]}x{self.size[1]}, {elapsed:.1f} s{folds}")
