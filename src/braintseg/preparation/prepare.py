"""``braintseg prepare``: BraTS NIfTI case folders → one PyTables store + folds JSON.

Flow: check the output (parent folders, writable: a probe file; remove stale temporaries of
killed runs) → find cases (exact suffixes) → an existing store made from the very same input
files and config is kept as it is (a rerun after a kill succeeds) → validate the crop box
against every case's header (before any heavy work; ``auto`` first reads every case to find the
nonzero bounding box) → worker processes (:mod:`braintseg.workers`) load, check, normalise and
crop one case each → the parent appends cases in case-id order to a temporary store → folds →
the files beside the store ``<stem>.h5`` (``<stem>.folds.json``, ``<stem>.config.yaml`` and, with
skipped cases, ``<stem>.skipped.txt``; each written atomically) → the store is renamed into place
last.  A kill at any instant leaves either no store or a complete store with its files (their
texts are also kept inside the store and rewritten by a rerun).

Every error, in a worker or here, is one :class:`DataError` naming the case and file (or the
output path and the system's reason, e.g. "No space left on device").

Test hook: ``BRAINTSEG_PREPARE_KILL_AT=<point>`` makes the process SIGKILL itself at that point
(:data:`KILL_POINTS`), so crash tests can stop it at exact places.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from braintseg import __version__
from braintseg.atomic import atomic_write_text, remove_stale_temporaries
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
from braintseg.sources.brats import CaseFiles, header_to_hex, load_case, read_header, scan_cases
from braintseg.store.codec import encode_int16
from braintseg.store.write import PreparedCase, StoreWriter
from braintseg.workers import imap_bounded, loader_pool

logger = logging.getLogger(__name__)

Failure = tuple[str, str]  # (case id, message)
#: the files written beside the store, in the order they are written (the store comes last)
SIDECARS = (".skipped.txt", ".config.yaml", ".folds.json")
#: where ``BRAINTSEG_PREPARE_KILL_AT`` may stop the process (crash tests)
KILL_POINTS = ("scanned", "appended", "closed", "sidecars", "renamed")


def sidecar(store: Path, suffix: str) -> Path:
    """``<store stem><suffix>`` beside the store, e.g. ``sidecar(p, ".skipped.txt")``."""
    return store.with_name(f"{store.stem}{suffix}")


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


def _kill_point(name: str) -> None:
    """Crash-test hook: SIGKILL this process at ``name`` when BRAINTSEG_PREPARE_KILL_AT says so."""
    if os.environ.get("BRAINTSEG_PREPARE_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


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


def _sidecar_texts(cfg: Config, folds: Folds | None, failures: Iterable[Failure]
                   ) -> dict[str, str | None]:
    """Suffix → text of each file beside the store (None: no such file for this store)."""
    lines = [f"{cid}\t{msg}" for cid, msg in failures]
    return {
        ".skipped.txt": ("# case_id<TAB>reason: cases skipped by braintseg prepare "
                         "--skip-invalid\n" + "\n".join(lines) + "\n") if lines else None,
        ".config.yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False),
        ".folds.json": folds.to_json() if folds is not None else None,
    }


def write_sidecars(output: Path, texts: dict[str, str | None]) -> None:
    """Write (atomically) or remove each file beside the store, in :data:`SIDECARS` order."""
    for suffix in SIDECARS:
        path, text = sidecar(output, suffix), texts.get(suffix)
        if text is None:
            try:
                path.unlink(missing_ok=True)  # e.g. an --overwrite'n store's old folds
            except OSError as exc:
                raise DataError(f"cannot remove {path} ({exc.strerror})") from None
        else:
            atomic_write_text(path, text)


def _write(cfg: Config, root: Path, output: Path, cases: list[CaseFiles], box: tuple[int, ...],
           pool: tuple[Executor, int], skip: bool, failures: list[Failure],
           fingerprint: str) -> tuple[Path, Folds | None]:
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
                _kill_point("appended")
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
        texts = _sidecar_texts(cfg, folds, failures)
        info = {"crop_box": list(box), "modalities": list(MODALITIES),
                "config": to_dict(cfg), "source_root": str(root.resolve()),
                "braintseg_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "input_fingerprint": fingerprint, "sidecars": texts}

        def beside() -> None:  # the store is complete under its temporary name
            _kill_point("closed")
            write_sidecars(output, texts)
            _kill_point("sidecars")

        path = writer.finish(folds, info, before_rename=beside)
    _kill_point("renamed")
    if failures:
        logger.warning("skipped %d invalid case(s); see %s", len(failures),
                       sidecar(output, ".skipped.txt"))
    return path, folds


def _input_files(case: Any) -> list[tuple[str, Path]]:
    """``[(key, path), ...]`` of a BraTS case (modalities, seg) or a slice patient (slices,
    masks)."""
    if hasattr(case, "slice_ids"):  # data.slices.SliceFiles
        masks = case.masks or ()
        return ([(f"image {s}", p) for s, p in zip(case.slice_ids, case.images, strict=True)]
                + [(f"mask {s}", p) for s, p in zip(case.slice_ids, masks, strict=True)])
    return sorted({**case.images, **({"seg": case.seg} if case.seg else {})}.items())


def input_fingerprint(cfg: Config, root: Path, cases: Sequence[Any],
                      problems: Sequence[Failure], options: dict[str, Any],
                      extra: Sequence[Path] = ()) -> str:
    """SHA-256 over the config, the options, and every input file's path, size and mtime
    (``cases``: BraTS :class:`CaseFiles` or slice patients; ``extra``: other files read, such as
    a patient table or a folds file)."""
    entries = [(c.case_id, key, p) for c in cases for key, p in _input_files(c)]
    files = []
    for cid, key, p in [*entries, *(("", "extra", Path(e)) for e in extra)]:
        try:
            st = os.stat(p)
            files.append([cid, key, str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([cid, key, str(p), None, None])
    text = json.dumps({"config": to_dict(cfg), "root": str(root.resolve()), "options": options,
                       "files": files, "problems": [list(p) for p in problems]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _kept_store(output: Path, fingerprint: str) -> bool:
    """True when ``output`` is a complete store made from the same input and config (its
    files beside it are rewritten from the copies inside it)."""
    from braintseg.store.read import open_store

    try:
        with open_store(output) as store:
            header = store.header
    except DataError:
        return False
    if header.get("input_fingerprint") != fingerprint:
        return False
    write_sidecars(output, header.get("sidecars", {}))
    logger.info("%s is already prepared from these input files with this config; kept it "
                "(use --overwrite to prepare it again)", output)
    return True


def check_output(output: Path) -> None:
    """Before any work: ``output`` can be created (no file where a folder must be, the nearest
    existing folder writable: a probe file), and stale temporaries of killed runs are removed.

    Raises:
        DataError: naming the path at fault and the system's reason.
    """
    if output.is_dir():
        raise DataError(f"output {output} is a folder; expected a store file path like store.h5")
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        if os.path.lexists(folder):  # a dangling symlink
            raise DataError(f"cannot create {output}: {folder} is a broken link")
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(f"cannot create {output}: {folder} is a file, not a folder")
    probe = folder / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{output.name}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"output folder {folder} is not writable ({exc.strerror})") from None
    if folder == output.parent:
        remove_stale_temporaries(folder, {output.name, *(sidecar(output, s).name
                                                          for s in SIDECARS)})


@contextlib.contextmanager
def _output_folder(output: Path) -> Iterator[None]:
    """Create the store's folder; on failure remove the folders created here (when empty)."""
    missing = [p for p in output.parents if not p.exists()]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the output folder {output.parent} "
                        f"({exc.strerror})") from None
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def run_prepare(cfg: Config, input_dir: Path, output: Path, *, workers: int | None = None,
                overwrite: bool = False, skip_invalid: bool = False,
                require_labels: bool = True, fmt: str | None = None,
                folds_from: Path | None = None, validation_cases: Path | None = None) -> Path:
    """Prepare a store from the BraTS case folders below ``input_dir`` (or a 2D slice data set:
    the format is detected by layout, see :mod:`braintseg.sources.registry`, and slice formats go
    to :func:`braintseg.preparation.slices.run_prepare_slices`).

    Args:
        cfg: resolved config (``data.*`` and ``store.*`` used; ``model.levels`` sets the crop
            divisibility ``2**levels``).
        input_dir: BraTS root: case folders anywhere below it (nested HGG/LGG or flat).
        output: the ``.h5`` store to write (atomically: temporary name, then rename).
        workers: processes that load and normalise cases (default: all cores).
        overwrite: replace an existing store (without it, an existing store prepared from the
            same input files and config is kept and its path returned; any other is refused).
        skip_invalid: skip bad cases with a warning and list them in ``<stem>.skipped.txt``.
        require_labels: every case needs a seg file (False: inference-only store allowed).
        fmt: ``brats``, ``lgg`` or ``figshare`` to force a reader (None: detect).
        folds_from: figshare ``cvind.mat`` (the data set's official patient-level split).
        validation_cases: a file of patient ids (one a line) forming fold 0's validation set.

    Returns:
        The store path.

    Raises:
        DataError, ConfigError: bad input (one line naming the case/file/key); no store is left.
    """
    output, root = Path(output), Path(input_dir)
    check_output(output)
    from braintseg.sources.registry import detect_format

    fmt = detect_format(root, fmt)
    if fmt != "brats":
        from braintseg.preparation.slices import run_prepare_slices

        return run_prepare_slices(cfg, root, output, fmt, workers=workers, overwrite=overwrite,
                                  skip_invalid=skip_invalid, require_labels=require_labels,
                                  folds_from=folds_from, validation_cases=validation_cases)
    if folds_from is not None or validation_cases is not None:
        raise ConfigError("--folds-from and --validation-cases apply to 2D slice data sets; "
                          "BraTS folds come from data.n_folds / data.seed")
    if cfg.data.normalization == "slice":
        raise ConfigError("data.normalization: slice applies to 2D slice data sets; BraTS "
                          "volumes take zscore or none")
    cases, problems = scan_cases(root, require_labels)
    options = {"skip_invalid": skip_invalid, "require_labels": require_labels}
    fingerprint = input_fingerprint(cfg, root, cases, problems, options)
    if output.exists() and not overwrite:
        if _kept_store(output, fingerprint):
            return output
        raise DataError(f"store {output} already exists; use --overwrite to replace it")
    _kill_point("scanned")
    failures: list[Failure] = []
    for cid, msg in problems:
        if not skip_invalid:
            raise DataError(msg)
        failures.append((cid, msg))
    if cases and all(c.seg is not None for c in cases):  # fold feasibility, before any work
        d = cfg.data
        make_folds([c.case_id for c in cases], {c.case_id: c.grade for c in cases},
                   d.n_folds, d.seed, d.holdout_fraction)
    workers = max(1, min(workers or os.cpu_count() or 1, len(cases) or 1))
    start = time.perf_counter()
    with loader_pool(workers) as pool, _output_folder(output):  # pool first: no HDF5 file open
        box, cases = _resolve_box(cfg, cases, pool, skip_invalid, failures)
        if not cases:
            raise DataError(f"no valid cases left to prepare under {root}")
        path, folds = _write(cfg, root, output, cases, box, pool, skip_invalid, failures,
                             fingerprint)
    elapsed = time.perf_counter() - start
    n = len(cases) - sum(1 for cid, _ in failures if cid in {c.case_id for c in cases})
    logger.info("wrote %s: %d cases, crop %s, %.1f s (%.2f s/case, %d workers)%s",
                path, n, list(box), elapsed, elapsed / max(n, 1), workers,
                f", {len(folds.folds)} folds" if folds else "")
    return path
