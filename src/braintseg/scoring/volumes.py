"""BraTS scoring for ``evaluate`` (the ``volumes`` strategy): label volumes against ground truth.

Pure numpy/scipy/nibabel (never imports Keras), so it runs anywhere.

* Predictions: ``PRED_DIR/<case>.nii.gz`` (or ``.nii``; the ``predict.output_pattern`` saved in
  ``PRED_DIR/predict_config.yaml`` when present); ``*_prob.nii.gz`` probability files are ignored.
* Truth: a folder of BraTS case folders (``<case>_seg.nii.gz`` / ``<case>-seg.nii.gz``, found by
  exact suffix), a flat folder of ``<case>.nii.gz`` label files, or a store written by
  ``prepare`` (labels uncropped into the original grid with the store's ``case_meta``).
* Labels of either convention, detected per file: {0,1,2,4} (ET = 4, BraTS 2018-2021) or
  {0,1,2,3} (ET = 3, BraTS 2023+).  Regions: WT = NCR+ED+ET, TC = NCR+ET, ET.
* Per case and region: Dice, HD95 (mm, voxel spacing of the truth header), sensitivity,
  specificity, predicted/true volume in voxels and ml.  Empty masks (BraTS convention): both
  empty → Dice 1, HD95 0; exactly one empty → Dice 0, HD95
  :data:`~braintseg.scoring.regions.HD95_EMPTY`.  A truth case without a prediction is a failure
  (status ``missing``: Dice 0, HD95 ``HD95_EMPTY``, sensitivity and specificity 0), never
  dropped; but predictions and truth that share no case id at all are an error (wrong folders,
  or ``-p``/``-t`` swapped).

Strategy functions (called by :func:`braintseg.scoring.evaluate.run_evaluate`): :func:`plan`
(find predictions and truth, select cases and shard), :func:`score`, :func:`write` (the per-case
CSV, ``<stem>_summary.csv`` and ``<stem>.json`` beside it: mean, std, median, 25th/75th
percentile per metric and region; the JSON also holds the per-case rows), :func:`format_summary`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.errors import DataError
from braintseg.log import progress
from braintseg.scoring.output import csv_text, file_paths, write_texts
from braintseg.scoring.regions import (
    REGIONS,
    missing_metrics,
    nonzero_box,
    region_mask,
    region_metrics,
    summarize,
)
from braintseg.training.distribute import shard_items

logger = logging.getLogger(__name__)

__all__ = [
    "SHARDED", "Job", "Labels", "evaluate_case", "find_predictions",
    "format_summary", "plan", "read_labels", "result", "score", "to_internal_auto",
    "truth_sources", "write",
]
#: ``evaluate --shard K/N`` scores every N-th truth case (:func:`plan`)
SHARDED = True
NII = (".nii.gz", ".nii")
SEG_SUFFIXES = ("_seg", "-seg")


# --------------------------------------------------------------------------- reading labels


@dataclass
class Labels:
    """One label volume: ``labels (X, Y, Z)`` uint8 internal {0,1,2,3}, ``spacing`` mm/axis,
    ``convention`` "brats2018", "brats2023" or "either" (no ET voxel), ``source`` for messages."""

    labels: NDArray[np.uint8]
    spacing: tuple[float, float, float]
    convention: str
    source: str


def to_internal_auto(raw: NDArray[Any], where: str) -> tuple[NDArray[np.uint8], str]:
    """Detect the label convention from the values and map to internal labels.

    Values ⊆ {0,1,2,4} with a 4 → ``"brats2018"`` (4 → 3); a 3 → ``"brats2023"``; only
    {0,1,2} → ``"either"`` (both conventions agree).  ``where`` names the file in errors.
    """
    arr = np.asarray(raw)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(np.rint(arr), arr):
            raise DataError(f"{where}: labels must be whole numbers; found NaN/Inf or fractions")
    if arr.size and (arr.min() < 0 or arr.max() > 4):
        raise DataError(f"{where}: label values must be in {{0,1,2,3}} or {{0,1,2,4}}; "
                        f"received range {arr.min()}..{arr.max()}")
    small = arr.astype(np.uint8)
    counts = np.bincount(small.ravel(), minlength=5)
    if counts[3] and counts[4]:
        raise DataError(f"{where}: labels contain both 3 and 4; expected {{0,1,2,4}} (BraTS "
                        "2018-2021) or {0,1,2,3} (BraTS 2023+)")
    if counts[4]:
        small[small == 4] = 3
        return small, "brats2018"
    return small, "brats2023" if counts[3] else "either"


def read_labels(path: Path, case_id: str) -> Labels:
    """Read a label NIfTI; DataError naming the case and file if it is unreadable or not 3D."""
    from braintseg.sources.brats import load_image  # one-call (ISA-L) gunzip

    where = f"case {case_id}: {path}"
    try:
        img = load_image(Path(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken files
        raise DataError(f"{where}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim != 3:
        raise DataError(f"{where}: expected a 3D label volume; received shape {data.shape}")
    labels, convention = to_internal_auto(data, where)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Labels(labels, zooms, convention, str(path))  # type: ignore[arg-type]


def _strip_nii(name: str) -> str | None:
    return next((name[: -len(e)] for e in NII if name.endswith(e) and len(name) > len(e)), None)


def find_predictions(pred_dir: Path) -> dict[str, Path]:
    """``case id → file`` for the label files in ``pred_dir`` (``*_prob`` and hidden skipped)."""
    if not Path(pred_dir).is_dir():
        raise DataError(f"prediction folder {pred_dir} does not exist or is not a folder")
    prefix, suffix = _pattern(Path(pred_dir))
    found: dict[str, Path] = {}
    for path in sorted(Path(pred_dir).iterdir()):
        stem = _strip_nii(path.name)
        if stem is None or path.name.startswith(".") or stem.endswith("_prob"):
            continue
        if stem.startswith(prefix) and stem.endswith(suffix) and len(stem) > len(prefix + suffix):
            found[stem[len(prefix): len(stem) - len(suffix)]] = path
    return found


def _pattern(pred_dir: Path) -> tuple[str, str]:
    """Text before/after ``{case}`` in the saved ``predict.output_pattern`` (default none)."""
    import yaml

    saved = pred_dir / "predict_config.yaml"
    pattern = "{case}.nii.gz"
    if saved.is_file():
        try:
            raw = yaml.safe_load(saved.read_text()) or {}
            pattern = str(raw.get("predict", {}).get("output_pattern", pattern))
        except (yaml.YAMLError, OSError, AttributeError):
            logger.warning("cannot read %s; assuming predictions named %s", saved, pattern)
    stem = _strip_nii(pattern) or pattern
    prefix, _, suffix = stem.partition("{case}")
    return prefix, suffix


def truth_sources(truth: Path) -> dict[str, Callable[[], Labels]]:
    """``case id → loader`` for a folder of case folders / label files, or a store (.h5)."""
    truth = Path(truth)
    if truth.is_file() and truth.suffix in (".h5", ".hdf5"):
        return _store_sources(truth)
    if not truth.is_dir():
        raise DataError(f"truth {truth} does not exist; expected a folder of BraTS case folders, "
                        "a folder of <case>.nii.gz label files, or a store (.h5)")
    segs: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(truth, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            stem = _strip_nii(name)
            hit = next((s for s in SEG_SUFFIXES if stem and stem.endswith(s)), None)
            if hit and stem and len(stem) > len(hit):
                case = stem[: -len(hit)]
                if case in segs:
                    raise DataError(f"truth case {case}: two label files, {segs[case]} and "
                                    f"{Path(dirpath) / name}; expected one")
                segs[case] = Path(dirpath) / name
    if not segs:  # flat folder of <case>.nii.gz label files
        segs = {case: p for case, p in find_predictions(truth).items()}
    if not segs:
        raise DataError(f"no label files in {truth}; expected <case>/<case>_seg.nii.gz, "
                        "<case>-seg.nii.gz or <case>.nii.gz files")
    return {case: (lambda c=case, p=path: read_labels(p, c)) for case, path in segs.items()}


def _store_sources(path: Path) -> dict[str, Callable[[], Labels]]:
    from braintseg.data.preprocess import uncrop
    from braintseg.store.read import open_store

    store = open_store(path)
    if not store.has_labels:
        raise DataError(f"store {path} has no labels (prepared with --no-labels); cannot be truth")

    def load(i: int) -> Labels:
        meta = store.case_meta(i)
        _, cropped = store.read_case(i)
        if cropped is None:
            raise DataError(f"case {store.case_ids[i]}: store {path} holds no labels for it")
        full = uncrop(cropped, meta["crop_box"], meta["original_shape"])
        spacing = tuple(float(v) for v in meta["pixdim"][1:4])
        return Labels(full, spacing, meta["convention"], f"{path}:{store.case_ids[i]}")  # type: ignore[arg-type]

    return {cid: (lambda i=i: load(i)) for i, cid in enumerate(store.case_ids)
            if store.case_meta(i).get("has_labels", True)}


# --------------------------------------------------------------------------- evaluation


def evaluate_case(case_id: str, pred: Labels | None, truth: Labels) -> dict[str, Any]:
    """One CSV row: ``case, status, conventions, spacing`` and ``<region>_<metric>`` columns.

    Raises:
        DataError: prediction and truth grids differ (naming the case and both shapes).
    """
    row: dict[str, Any] = {
        "case": case_id, "status": "ok" if pred is not None else "missing",
        "truth_convention": truth.convention,
        "pred_convention": pred.convention if pred is not None else "",
        "spacing_mm": "x".join(f"{s:g}" for s in truth.spacing),
    }
    if pred is not None and pred.labels.shape != truth.labels.shape:
        raise DataError(f"case {case_id}: prediction grid {pred.labels.shape} ({pred.source}) "
                        f"differs from truth grid {truth.labels.shape} ({truth.source})")
    if pred is not None and not np.allclose(pred.spacing, truth.spacing, rtol=1e-3):
        logger.warning("case %s: prediction spacing %s differs from truth spacing %s; using the "
                       "truth's", case_id, pred.spacing, truth.spacing)
    vols = (truth.labels,) if pred is None else (truth.labels, pred.labels)
    box = nonzero_box(*vols)  # every tumour voxel of both: metrics on the crop are exact
    for region in REGIONS:
        t = region_mask(truth.labels[box], region)
        values = (missing_metrics(t, truth.spacing) if pred is None
                  else region_metrics(region_mask(pred.labels[box], region), t, truth.spacing,
                                      n_voxels=truth.labels.size))
        row.update({f"{region}_{k}": v for k, v in values.items()})
    return row


@dataclass
class Job:
    """What :func:`plan` found: ``preds`` (case → label file), ``sources`` (case → truth loader,
    the cases to score), ``extra`` (predictions without truth, warned about when scoring)."""

    pred_dir: Path
    truth: Path
    preds: dict[str, Path]
    sources: dict[str, Callable[[], Labels]]
    extra: list[str]


def plan(pred_dir: Path, truth: Path, cases: Sequence[str] | None,
         shard: tuple[int, int] | None) -> Job:
    """Predictions and truth cases to score: every truth case, or only ``cases``; of those, only
    cases ``K, K+N, …`` (sorted ids) for ``shard = (K, N)``.

    Raises:
        DataError: missing folders, unknown ``cases``, predictions and truth sharing no case id.
    """
    preds = find_predictions(pred_dir)
    sources = truth_sources(truth)
    if cases is not None:
        unknown = sorted(set(cases) - set(sources))
        if unknown:
            raise DataError(f"cases {unknown} have no labels in {truth}")
        sources = {c: sources[c] for c in cases}
    _check_overlap(preds, sources, pred_dir, truth)
    extra = sorted(set(preds) - set(sources)) if cases is None and shard is None else []
    sources = {c: sources[c] for c in shard_items(sorted(sources), shard)}
    return Job(pred_dir, truth, preds, sources, extra)


def score(job: Job, output: Path) -> dict[str, Any]:
    """Score the planned cases (a missing prediction is a failure); the result
    :func:`braintseg.scoring.evaluate.run_evaluate` returns (``files`` named after ``output``)."""
    pred_dir, truth, preds, sources = job.pred_dir, job.truth, job.preds, job.sources
    if job.extra:
        logger.warning("%d predictions have no truth in %s and are not scored: %s",
                       len(job.extra), truth, ", ".join(job.extra))
    rows = []
    for case in progress(sorted(sources), total=len(sources), desc="evaluate", unit="case"):
        pred = read_labels(preds[case], case) if case in preds else None
        if pred is None:
            logger.warning("case %s: no prediction in %s; counted as a failure", case, pred_dir)
        rows.append(evaluate_case(case, pred, sources[case]()))
    missing = [r["case"] for r in rows if r["status"] == "missing"]
    if missing:
        logger.warning("scored %d of %d truth cases against a prediction; %d have none in %s and "
                       "count as failures", len(rows) - len(missing), len(rows), len(missing),
                       pred_dir)
    return result(rows, job.extra, str(pred_dir), str(truth), output)


def result(rows: list[dict[str, Any]], extra: list[str], pred_dir: str, truth: str,
           output: Path) -> dict[str, Any]:
    """``{"n_cases", "n_scored", "n_missing", "missing", "unmatched_predictions", "pred_dir",
    "truth", "files": {"per_case", "summary_csv", "json"}, "summary": {metric: {region:
    {stat}}}, "cases": rows}`` of scored rows (:func:`evaluate_case`)."""
    missing = [r["case"] for r in rows if r["status"] == "missing"]
    return {
        "n_cases": len(rows), "n_scored": len(rows) - len(missing),
        "n_missing": len(missing), "missing": missing,
        "unmatched_predictions": extra, "pred_dir": pred_dir, "truth": truth,
        "files": file_paths(output), "summary": summarize(rows) if rows else {}, "cases": rows,
    }


def write(job: Job | None, summary: dict[str, Any], output: Path) -> None:
    """The per-case CSV ``output``, the summary CSV and the JSON (named in ``summary["files"]``);
    ``job`` is not needed (None when :func:`braintseg.scoring.evaluate.merge_shards` writes)."""
    files = summary["files"]
    stats = [{"metric": m, "region": r, **s} for m, by_region in summary["summary"].items()
             for r, s in by_region.items()]
    write_texts({output: csv_text(summary["cases"]), Path(files["summary_csv"]): csv_text(stats),
                 Path(files["json"]): json.dumps(summary, indent=1, allow_nan=True) + "\n"})
    logger.info("wrote %s, %s and %s", output, files["summary_csv"], files["json"])


def _check_overlap(preds: dict[str, Path], sources: dict[str, Any], pred_dir: Path,
                   truth: Path) -> None:
    """No truth case with a prediction is an error: nothing would be scored but failures."""
    if set(preds) & set(sources):
        return
    example = (f" (e.g. prediction {sorted(preds)[0]!r}, truth case {sorted(sources)[0]!r})"
               if preds and sources else "")
    raise DataError(
        f"predictions {pred_dir} ({len(preds)} label files) and truth {truth} "
        f"({len(sources)} cases) share no case id{example}; expected predictions named "
        "<case>.nii.gz for the truth's cases (are -p and -t swapped?)"
    )


def format_summary(summary: dict[str, Any]) -> str:
    """The table ``braintseg evaluate`` prints: mean ± std (median) per metric and region."""
    n, missing = summary["n_cases"], summary["missing"]
    head = (f"{n} case{'s' if n != 1 else ''} evaluated: {n - len(missing)} scored against a "
            f"prediction, {len(missing)} missing predictions"
            + (f" (scored as failures: {', '.join(missing)})" if missing else ""))
    lines = [head, f"{'metric':<14}" + "".join(f"{r.upper():>26}" for r in REGIONS)]
    for metric, fmt in (("dice", ".3f"), ("hd95_mm", ".2f"), ("sensitivity", ".3f"),
                        ("specificity", ".4f"), ("true_ml", ".1f"), ("pred_ml", ".1f")):
        stats = summary["summary"].get(metric, {})
        cells = [f"{s['mean']:{fmt}} ± {s['std']:{fmt}} ({s['median']:{fmt}})" if s.get("n")
                 else "n/a" for s in (stats.get(r, {}) for r in REGIONS)]
        lines.append(f"{metric:<14}" + "".join(f"{c:>26}" for c in cells))
    lines.append("mean ± std (median); per case: " + summary["files"]["per_case"])
    return "\n".join(lines)
