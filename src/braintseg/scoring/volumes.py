"""``braintseg evaluate``: BraTS metrics of predicted label volumes against ground truth.

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
  empty → Dice 1, HD95 0; exactly one empty → Dice 0, HD95 :data:`HD95_EMPTY`.  A truth case
  without a prediction is a failure (status ``missing``: Dice 0, HD95 :data:`HD95_EMPTY`,
  sensitivity and specificity 0), never dropped; but predictions and truth that share no case
  id at all are an error (wrong folders, or ``-p``/``-t`` swapped).

Outputs (temporary name, then rename): the per-case CSV (default ``PRED_DIR/metrics.csv``),
``<stem>_summary.csv`` and ``<stem>.json`` beside it (mean, std, median, 25th/75th percentile per
metric and region; the JSON also holds the per-case rows).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.atomic import atomic_write_text
from braintseg.errors import DataError
from braintseg.log import progress
from braintseg.scoring.regions import (
    HD95_EMPTY,
    METRICS,
    REGIONS,
    dice,
    hd95,
    missing_metrics,
    nonzero_box,
    region_mask,
    region_metrics,
    summarize,
)
from braintseg.training.distribute import shard_items, shard_suffix

logger = logging.getLogger(__name__)

__all__ = [
    "HD95_EMPTY", "METRICS", "REGIONS", "Labels", "dice", "evaluate_case", "find_predictions",
    "format_summary", "hd95", "read_labels", "region_metrics", "run_evaluate", "summarize",
    "to_internal_auto", "truth_sources",
]
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


def run_evaluate(
    pred_dir: Path, truth: Path, output: Path | None = None, cases: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Score every truth case (or only ``cases``) against the predictions in ``pred_dir``.

    Args:
        pred_dir: folder of ``<case>.nii.gz`` label files (either label convention).
        truth: folder of BraTS case folders or of ``<case>.nii.gz`` label files, or a store;
            2D slice folders and stores go to
            :func:`braintseg.scoring.slices.run_evaluate_slices`.
        output: per-case CSV (default ``pred_dir/metrics.csv``); ``<stem>_summary.csv`` and
            ``<stem>.json`` are written beside it.
        cases: evaluate only these truth case ids (default: all truth cases).
        shard: ``(K, N)``: only truth cases ``K, K+N, …`` (sorted ids); the outputs get
            ``.shard-K-of-N`` before their suffix; :func:`merge_shards` joins them.

    Returns:
        ``{"n_cases", "n_scored", "n_missing", "missing", "unmatched_predictions", "pred_dir",
        "truth", "files": {"per_case", "summary_csv", "json"},
        "summary": {metric: {region: {stat}}}, "cases": [per-case rows]}``.

    Raises:
        DataError: missing folders, prediction and truth sharing no case id, unreadable files,
            grids that differ, output not writable.
    """
    pred_dir, truth = Path(pred_dir), Path(truth)
    from braintseg.scoring.slices import is_slice_truth, run_evaluate_slices

    if is_slice_truth(truth):  # 2D slice data sets: per-patient and per-slice figures
        return run_evaluate_slices(pred_dir, truth, output,
                                   list(cases) if cases is not None else None)
    output = Path(output) if output is not None else pred_dir / "metrics.csv"
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
    output = output.with_name(f"{_stem(output)}{shard_suffix(shard)}{output.suffix}")
    _check_writable(output)
    if extra:
        logger.warning("%d predictions have no truth in %s and are not scored: %s",
                       len(extra), truth, ", ".join(extra))
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
    summary = {
        "n_cases": len(rows), "n_scored": len(rows) - len(missing),
        "n_missing": len(missing), "missing": missing,
        "unmatched_predictions": extra, "pred_dir": str(pred_dir), "truth": str(truth),
        "files": _paths(output), "summary": summarize(rows) if rows else {}, "cases": rows,
    }
    _write_outputs(summary, output)
    return summary


# --------------------------------------------------------------------------- writing


def merge_shards(output: Path) -> dict[str, Any]:
    """Join the per-shard results ``<stem>.shard-K-of-N.json`` beside ``output`` into the files
    an unsharded :func:`run_evaluate` writes (rows in case order, summary of all cases).

    Raises:
        DataError: no shard files, or shards missing or of different N (names them).
    """
    output = Path(output)
    found = sorted(output.parent.glob(f"{_stem(output)}.shard-*-of-*.json"))
    if not found:
        raise DataError(f"no shard results {_stem(output)}.shard-K-of-N.json in {output.parent}; "
                        "run evaluate --shard K/N first")
    parts = [json.loads(p.read_text()) | {"_file": p.name} for p in found]
    ns = {p["_file"].rsplit("-of-", 1)[1].split(".")[0] for p in parts}
    names = {p["_file"] for p in parts}
    n = int(next(iter(ns))) if len(ns) == 1 else 0
    want = {f"{_stem(output)}.shard-{k}-of-{n}.json" for k in range(n)}
    if len(ns) != 1 or names != want:
        raise DataError(f"shard results in {output.parent} are incomplete or mixed: found "
                        f"{sorted(names)}; expected {sorted(want) or 'one N'}")
    rows = sorted((r for p in parts for r in p["cases"]), key=lambda r: r["case"])
    missing = [r["case"] for r in rows if r["status"] == "missing"]
    summary = {
        "n_cases": len(rows), "n_scored": len(rows) - len(missing), "n_missing": len(missing),
        "missing": missing, "unmatched_predictions": [], "pred_dir": parts[0]["pred_dir"],
        "truth": parts[0]["truth"], "files": _paths(output),
        "summary": summarize(rows) if rows else {}, "cases": rows,
    }
    _write_outputs(summary, output)
    return summary


def _stem(output: Path) -> str:
    return output.name[: -len(output.suffix)] if output.suffix else output.name


def _paths(output: Path) -> dict[str, str]:
    stem = _stem(output)
    return {"per_case": str(output), "summary_csv": str(output.with_name(f"{stem}_summary.csv")),
            "json": str(output.with_name(f"{stem}.json"))}


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


def _check_writable(output: Path) -> None:
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output folder {folder} for {output.name}: "
                        f"{exc.strerror}") from None
    if output.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"cannot write metrics to {output}; expected a writable file path")


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _write_outputs(summary: dict[str, Any], output: Path) -> None:
    files = summary["files"]
    stats = [{"metric": m, "region": r, **s} for m, by_region in summary["summary"].items()
             for r, s in by_region.items()]
    atomic_write_text(output, _csv(summary["cases"]))
    atomic_write_text(Path(files["summary_csv"]), _csv(stats))
    atomic_write_text(Path(files["json"]), json.dumps(summary, indent=1, allow_nan=True) + "\n")
    logger.info("wrote %s, %s and %s", output, files["summary_csv"], files["json"])


def format_summary(summary: dict[str, Any]) -> str:
    """The table ``braintseg evaluate`` prints: mean ± std (median) per metric and region."""
    if "dice_pooled" in summary.get("summary", {}):  # 2D slice data sets
        from braintseg.scoring.slices import format_slice_summary

        return format_slice_summary(summary)
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
