"""Slice scoring for ``evaluate`` (the ``slices`` strategy, LGG, figshare, …): per patient and
per slice.

Predictions: ``<slice id>_mask.tif`` files anywhere below ``PRED_DIR`` (as written by
``predict``; nonzero = tumour) and, when present, ``PRED_DIR/predictions.csv`` (slice scores).
Truth: a slice-format folder (masks decoded by the format's reader) or a slice store.  A
patient with at least one predicted slice must have every slice predicted; a truth patient with
no predicted slice is a failure (status ``missing``, Dice 0, as BraTS ``evaluate`` counts a
missing case), never dropped; but predictions and truth that share no patient are an error.

Figures (stated conventions):

* **per-patient Dice** (Buda et al.'s metric): the Dice of the patient's whole stack of slices,
  ``2|T∩P| / (|T| + |P|)``; **1 when truth and prediction are both empty**, 0 when only one is;
  its mean and median over patients (missing patients included with Dice 0);
* **pooled Dice**: one Dice over every pixel of every predicted slice (the fastai metric);
  the slice figures below are over the predicted slices too (a missing patient has no score);
* **slice-level detection**: truth positive = the slice's mask has any tumour pixel; predicted
  positive = the predicted mask has any; accuracy, sensitivity (NaN without positive slices),
  specificity (NaN without negative slices), confusion matrix ``tp, fp, fn, tn``, and the ROC
  AUC of the slice score (``tumour_probability`` from ``predictions.csv``; the predicted area
  when the CSV is absent), ties counted half (Mann-Whitney) (:mod:`braintseg.scoring.detection`);
* with a ``tumour`` classification head (``head_probability`` in ``predictions.csv``): the same
  detection figures for the head (**predicted positive = head probability > 0.5**, AUC of the
  head probability) as ``detection_head``, and ``detection_better``: ``head`` or ``derived``
  (the segmentation's score), whichever has the higher AUC (then accuracy; ``equal`` on a tie);
* with a ``tumour_type`` head (``head_class`` in ``predictions.csv``) and truth classes (figshare):
  ``tumour_type_head`` = :func:`braintseg.scoring.classes.type_figures` (accuracy, 3×3 confusion,
  per-class precision / recall / specificity / F1, macro means).  ``metrics_slices.csv`` carries
  ``truth_class`` and the head columns per slice.

Strategy functions (called by :func:`braintseg.scoring.evaluate.run_evaluate`): :func:`plan`,
:func:`score`, :func:`write` (``metrics.csv`` per patient, ``metrics_slices.csv`` per slice and
``metrics.json``, summary + ROC points, in ``PRED_DIR`` or beside ``--output``),
:func:`format_summary`.  ``--shard`` does not apply (:data:`SHARDED`).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.errors import DataError
from braintseg.scoring.classes import type_figures
from braintseg.scoring.detection import better_score, detection, dice, roc_points
from braintseg.scoring.output import csv_text, nan_to_none, write_texts

logger = logging.getLogger(__name__)

__all__ = ["MASK_SUFFIX", "SHARDED", "Job", "find_predictions", "format_summary", "plan",
           "read_head", "read_pred", "read_scores", "score", "truth_patients", "write"]
MASK_SUFFIX = "_mask.tif"
#: ``evaluate --shard K/N`` is ignored for slice truth (every selected patient is scored)
SHARDED = False


def find_predictions(pred_dir: Path) -> dict[str, Path]:
    """``{slice id: <slice id>_mask.tif}`` below ``pred_dir``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder {pred_dir} does not exist")
    return {p.name[: -len(MASK_SUFFIX)]: p for p in sorted(pred_dir.rglob(f"*{MASK_SUFFIX}"))}


def read_scores(pred_dir: Path) -> dict[str, float]:
    """``{slice id: tumour_probability}`` from ``predictions.csv`` ({} when absent)."""
    path = Path(pred_dir) / "predictions.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        return {r["slice"]: float(r["tumour_probability"]) for r in rows}
    except (KeyError, ValueError) as exc:
        raise DataError(f"{path}: expected columns slice, tumour_probability ({exc})") from None


def read_head(pred_dir: Path) -> dict[str, dict[str, Any]]:
    """``{slice id: {"head_score": head_probability, "head_class": 1..3}}`` (the keys the
    ``predictions.csv`` has) from a run with a classification head; {} without head columns."""
    path = Path(pred_dir) / "predictions.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    cols = [(c, k, t) for c, k, t in (("head_probability", "head_score", float),
                                      ("head_class", "head_class", int)) if c in rows[0]]
    try:
        return {r["slice"]: {k: t(r[c]) for c, k, t in cols} for r in rows} if cols else {}
    except ValueError as exc:
        raise DataError(f"{path}: head columns must hold numbers ({exc})") from None


def truth_patients(truth: Path) -> Iterator[tuple[str, list[str], Any, Any]]:
    """``(case id, slice ids, masks (h, w) uint8 0/1 at each slice's own size, classes (S,)
    uint8)`` per patient (a folder's patients give their ``SliceFiles`` and None instead: read
    with :func:`_load_masks` only when scored)."""
    truth = Path(truth)
    if truth.is_file():
        from braintseg.store.read import open_store

        store = open_store(truth)
        with store:
            for i, cid in enumerate(store.case_ids):
                _, labels = store.read_case(i)
                if labels is None:
                    raise DataError(f"{truth}: case {cid} has no labels")
                sizes = store.slice_sizes(i)
                masks = [lab[:: lab.shape[0] // int(h), :: lab.shape[1] // int(w)]
                         for lab, (h, w) in zip(labels, sizes, strict=True)]
                yield cid, list(store.case_meta(i)["slice_ids"]), masks, store.slice_classes(i)
        return
    from braintseg.sources.registry import detect_format, source

    rd = source(detect_format(truth))
    for files in rd.find_cases(truth, require_labels=True):
        yield files.case_id, list(files.slice_ids), files, None


def _load_masks(files: Any) -> tuple[list[NDArray[np.uint8]], NDArray[np.uint8]]:
    from braintseg.sources.registry import source

    case = source(files.format).load_case(files)
    assert case.masks is not None  # noqa: S101 - require_labels=True
    return case.masks, case.classes


def read_pred(path: Path, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """A predicted mask (nonzero = tumour); DataError when unreadable or of another size."""
    from braintseg.sources.lgg import read_image

    pred = read_image(path)
    if pred.ndim == 3:
        pred = pred[..., 0]
    if pred.shape != tuple(shape):
        raise DataError(f"{path}: prediction size {pred.shape} differs from the truth's {shape}")
    return pred > 0


@dataclass
class Job:
    """What :func:`plan` found: ``preds`` (slice id → predicted mask file) and the truth
    patients to score (``cases``; None: all); :func:`score` fills ``slice_rows`` (one row per
    scored slice, for :func:`write`)."""

    pred_dir: Path
    truth: Path
    preds: dict[str, Path]
    cases: Sequence[str] | None
    slice_rows: list[dict[str, Any]] = field(default_factory=list)


def plan(pred_dir: Path, truth: Path, cases: Sequence[str] | None,
         shard: tuple[int, int] | None = None) -> Job:
    """The predicted slices below ``pred_dir``; ``shard`` is ignored (:data:`SHARDED`).

    Raises:
        DataError: ``pred_dir`` missing or holding no ``*_mask.tif`` predictions.
    """
    preds = find_predictions(pred_dir)
    if not preds:
        raise DataError(f"{pred_dir} holds no *{MASK_SUFFIX} predictions")
    return Job(pred_dir, truth, preds, cases)


def score(job: Job, output: Path | None = None) -> dict[str, Any]:
    """Score the slice predictions against the truth (``output`` is not used): ``{"summary",
    "roc", "pred_dir", "truth", "cases": per-patient rows, ["roc_head"]}``; the per-slice rows
    go to ``job.slice_rows``.

    Raises:
        DataError: a scored patient with a slice missing, sizes that differ, unreadable files
            (each names the file), no patient with a prediction.
    """
    pred_dir, truth = job.pred_dir, job.truth
    scores_csv = read_scores(pred_dir)
    head_csv = read_head(pred_dir)
    patients, slices = _score_patients(job, scores_csv, head_csv)
    missing = [p["case"] for p in patients if p["status"] == "missing"]
    if not slices:
        raise DataError(f"no patient of {truth} has predictions in {pred_dir}")
    if missing:
        logger.warning("scored %d of %d truth patients against a prediction; %d have none in %s "
                       "and count as failures", len(patients) - len(missing), len(patients),
                       len(missing), pred_dir)
    dices = np.array([p["dice"] for p in patients])
    tpos = np.array([s["truth_area"] > 0 for s in slices])
    ppos = np.array([s["predicted_area"] > 0 for s in slices])
    slice_scores = np.array([s["score"] for s in slices], np.float64)
    pooled = dice(sum(s["intersection"] for s in slices), sum(s["truth_area"] for s in slices),
                  sum(s["predicted_area"] for s in slices))
    summary: dict[str, Any] = {
        "n_patients": len(patients), "n_scored": len(patients) - len(missing),
        "n_missing": len(missing), "missing": missing, "n_slices": len(slices),
        "dice_per_patient_mean": float(dices.mean()),
        "dice_per_patient_median": float(np.median(dices)),
        "dice_pooled": pooled,
        "detection": detection(tpos, ppos, slice_scores),
        "score": "tumour_probability (predictions.csv)" if scores_csv else "predicted_area",
        "conventions": "patient/pooled Dice 1 when truth and prediction are empty; slice "
                       "positive = any tumour pixel",
    }
    result = {"summary": nan_to_none(summary), "roc": roc_points(slice_scores, tpos),
              "pred_dir": str(pred_dir), "truth": str(truth), "cases": patients}
    if any(sl["truth_class"] > 0 for sl in slices) and all("head_class" in sl for sl in slices):
        summary["tumour_type_head"] = type_figures(
            np.array([sl["truth_class"] for sl in slices]),
            np.array([sl["head_class"] for sl in slices]))
        result["summary"] = nan_to_none(summary)
    if head_csv and all("head_score" in sl for sl in slices):
        hscore = np.array([sl["head_score"] for sl in slices], np.float64)
        summary["detection_head"] = detection(tpos, hscore > 0.5, hscore)
        summary["detection_better"] = better_score(summary["detection"],
                                                   summary["detection_head"])
        summary["score_head"] = "head_probability (predictions.csv), positive when > 0.5"
        result["summary"] = nan_to_none(summary)
        result["roc_head"] = roc_points(hscore, tpos)
    job.slice_rows = slices
    return result


def _score_patients(job: Job, scores_csv: dict[str, float], head_csv: dict[str, dict[str, Any]]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-patient rows (truth order; a patient without any predicted slice is ``missing``) and
    per-slice rows of the scored patients."""
    pred_dir, preds, cases = job.pred_dir, job.preds, job.cases
    patients, slices = [], []
    for cid, slice_ids, masks, classes in truth_patients(job.truth):
        if cases is not None and cid not in cases:
            continue
        if not isinstance(masks, list):
            masks, classes = _load_masks(masks)
        if not any(s in preds for s in slice_ids):  # a failure, as BraTS evaluate counts it
            logger.warning("patient %s: no prediction in %s; counted as a failure", cid, pred_dir)
            patients.append({"case": cid, "status": "missing", "n_slices": len(slice_ids),
                             "dice": 0.0, "truth_pixels": sum(int((m > 0).sum()) for m in masks),
                             "predicted_pixels": "", "intersection": ""})
            continue
        missing = [s for s in slice_ids if s not in preds]
        if missing:
            raise DataError(f"patient {cid}: no prediction {missing[0]}{MASK_SUFFIX} in "
                            f"{pred_dir} ({len(missing)} of {len(slice_ids)} slices missing)")
        inter = t_sum = p_sum = 0
        for sid, mask, cls in zip(slice_ids, masks, classes, strict=True):
            t = mask > 0
            p = read_pred(preds[sid], t.shape)
            i, nt, npred = int((t & p).sum()), int(t.sum()), int(p.sum())
            inter, t_sum, p_sum = inter + i, t_sum + nt, p_sum + npred
            slices.append({"case": cid, "slice": sid, "truth_area": nt, "predicted_area": npred,
                           "intersection": i,
                           "score": scores_csv.get(sid, float(npred)),
                           "truth_class": int(cls), **head_csv.get(sid, {})})
        patients.append({"case": cid, "status": "ok", "n_slices": len(slice_ids),
                         "dice": dice(inter, t_sum, p_sum), "truth_pixels": t_sum,
                         "predicted_pixels": p_sum, "intersection": inter})
    return patients, slices


def write(job: Job, result: dict[str, Any], output: Path) -> None:
    """``output`` (per patient), ``<stem>_slices.csv`` (per slice: ``job.slice_rows``) and
    ``<stem>.json`` (``result``)."""
    write_texts({output: csv_text(result["cases"]),
                 output.with_name(f"{output.stem}_slices.csv"): csv_text(job.slice_rows),
                 output.with_name(f"{output.stem}.json"): json.dumps(result, indent=1)})


def format_summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    s = result["summary"]
    d = s["detection"]

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * v:.2f} %"

    def line(label: str, d: dict[str, Any]) -> str:
        c = d["confusion"]
        return (f"{label}: accuracy {pct(d['accuracy'])}, sensitivity {pct(d['sensitivity'])}, "
                f"specificity {pct(d['specificity'])}, AUC {pct(d['auc'])} "
                f"(tp {c['tp']}, fp {c['fp']}, fn {c['fn']}, tn {c['tn']})")

    missing = s.get("missing", [])
    lines = [
        f"{s['n_patients']} patients, {s['n_slices']} slices"
        + (f"; {len(missing)} without predictions, scored as failures (Dice 0): "
           f"{', '.join(missing)}" if missing else ""),
        f"Dice per patient: mean {pct(s['dice_per_patient_mean'])}, "
        f"median {pct(s['dice_per_patient_median'])}; pooled Dice {pct(s['dice_pooled'])}",
        line("slice detection" if "detection_head" not in s
             else "slice detection (segmentation: max tumour probability)", d),
    ]
    if "detection_head" in s:
        lines += [line("slice detection (classification head)", s["detection_head"]),
                  f"better slice score: {s['detection_better']}"]
    if "tumour_type_head" in s:
        t = s["tumour_type_head"]
        recalls = ", ".join(f"{name} {pct(v['recall'])}" for name, v in t["per_class"].items())
        lines.append(f"tumour type (classification head): accuracy {pct(t['accuracy'])}, "
                     f"macro F1 {pct(t['macro_f1'])}; recall {recalls}")
    return "\n".join(lines)
