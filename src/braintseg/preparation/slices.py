"""``braintseg prepare`` for 2D slice data sets (LGG kaggle_3m TIFFs, figshare ``.mat``).

Flow: the format's reader finds patients (:mod:`braintseg.sources.registry`) → fold feasibility is
checked before any heavy work → worker processes decode one patient each, bring its slices to
the store size (integer pixel repeat, :func:`braintseg.sources.base.to_stack`) and normalise per
patient and channel (z-score over nonzero pixels after the percentile clip, the BraTS rule with
the patient's stack of slices as the volume) → the parent appends patients in id order to a
slice store (:mod:`braintseg.store.slice_writer`) → patient-level folds, stratified by
grade (LGG) or majority tumour type (figshare), or taken from ``--folds-from cvind.mat`` or
``--validation-cases FILE`` → rename into place; sidecars as for BraTS.
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
from braintseg.preparation.prepare import (
    Failure,
    _kept_store,
    _output_folder,
    _sidecar_texts,
    input_fingerprint,
    sidecar,
    write_sidecars,
)
from braintseg.sources.base import SliceCase, SliceFiles, to_stack
from braintseg.sources.registry import source
from braintseg.store.slice_writer import PreparedSlices, SliceStoreWriter
from braintseg.workers import imap_bounded, loader_pool

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


def scan(cfg: Config, root: Path, fmt: str, options: dict[str, Any]
         ) -> tuple[list[SliceFiles], list[Failure], str]:
    """``(patients, [(patient, problem)], input fingerprint)``; readers without
    ``scan_cases`` raise on the first bad patient instead of listing it."""
    rd = source(fmt)
    if hasattr(rd, "scan_cases"):
        cases, problems = rd.scan_cases(root, options["require_labels"])
    else:
        cases, problems = rd.find_cases(root, options["require_labels"]), []
    extra = [root / "data.csv",
             *(Path(options[k]) for k in ("folds_from", "validation_cases") if options[k])]
    return cases, problems, input_fingerprint(cfg, root, cases, problems, options, extra)


def run_prepare_slices(cfg: Config, input_dir: Path, output: Path, fmt: str, *,
                       workers: int | None = None, overwrite: bool = False,
                       skip_invalid: bool = False, require_labels: bool = True,
                       folds_from: Path | None = None,
                       validation_cases: Path | None = None) -> Path:
    """Prepare a slice store from ``input_dir`` in format ``fmt`` (``lgg`` or ``figshare``).

    Called by :func:`.prepare.run_prepare` after the output checks.  An existing
    store made from the same input files, options and config is kept (as for BraTS); any other
    needs ``overwrite``.  Returns the store path; DataError/ConfigError name the file, patient
    or key.
    """
    root, output = Path(input_dir), Path(output)
    options = {"format": fmt, "skip_invalid": skip_invalid, "require_labels": require_labels,
               "folds_from": str(folds_from) if folds_from else None,
               "validation_cases": str(validation_cases) if validation_cases else None}
    cases, problems, fingerprint = scan(cfg, root, fmt, options)
    if output.exists() and not overwrite:
        if _kept_store(output, fingerprint):
            return output
        raise DataError(f"store {output} already exists; use --overwrite to replace it")
    failures: list[Failure] = []
    for pid, msg in problems:
        if not skip_invalid:
            raise DataError(msg)
        logger.warning("skipping patient %s: %s", pid, msg)
        failures.append((pid, msg))
    if not cases:
        raise DataError(f"no patients found under {root} (format {fmt})"
                        + (" that could be used" if failures else ""))
    labelled = all(c.masks is not None for c in cases)
    if labelled:  # fold feasibility, before any heavy work
        make_slice_folds(cfg, cases, folds_from, validation_cases)
    size = _store_size(cases)
    levels = 2 ** cfg.model.levels
    if size[0] % levels or size[1] % levels:
        raise ConfigError(f"slices of {root} are {size[0]}x{size[1]}; model.levels="
                          f"{cfg.model.levels} needs both divisible by {levels}")
    workers = max(1, min(workers or os.cpu_count() or 1, len(cases)))
    fn = functools.partial(prepare_patient, root=root, size=size, data=cfg.data,
                           dtype=cfg.store.dtype, skip=skip_invalid)
    start = time.perf_counter()
    n_channels = len(source(fmt).CHANNELS)  # type: ignore[attr-defined]
    with loader_pool(workers) as pool, _output_folder(output):  # pool first: no HDF5 file open
        path, writer, folds = _write(cfg, root, output, fmt, cases, fn, pool, n_channels, size,
                                     labelled, failures, folds_from, validation_cases,
                                     fingerprint)
    if failures:
        logger.warning("skipped %d invalid patient(s); see %s", len(failures),
                       sidecar(output, ".skipped.txt"))
    elapsed = time.perf_counter() - start
    logger.info("wrote %s: %d patients, %d slices of %dx%d, %.1f s%s", path,
                len(writer.case_ids), writer.n_slices, size[0], size[1], elapsed,
                f", {len(folds.folds)} folds" if folds else "")
    return path


def _write(cfg: Config, root: Path, output: Path, fmt: str, cases: list[SliceFiles], fn: Any,
           pool: Any, n_channels: int, size: tuple[int, int], labelled: bool,
           failures: list[Failure], folds_from: Path | None, validation_cases: Path | None,
           fingerprint: str) -> tuple[Path, SliceStoreWriter, Folds | None]:
    writer = SliceStoreWriter(output, size, n_channels, cfg.store.compression,
                              cfg.store.complevel, cfg.store.dtype,
                              expected_slices=sum(len(c.slice_ids) for c in cases))
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
        folds = make_slice_folds(cfg, kept, folds_from, validation_cases) if labelled else None
        if folds is None:
            logger.warning("store has patients without masks: no folds (inference-only store)")
        info = {"format": fmt, "convention": cases[0].convention,
                "channels": list(writer.metas[0]["channels"]), "resize_rule": RESIZE_RULE,
                "config": to_dict(cfg), "source_root": str(root.resolve()),
                "folds_source": str(folds_from or validation_cases or "make_folds"),
                "braintseg_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "input_fingerprint": fingerprint}
        texts = _sidecar_texts(cfg, folds, failures)
        info["sidecars"] = texts
        path = writer.finish(folds, info, before_rename=lambda: write_sidecars(output, texts))
    return path, writer, folds
