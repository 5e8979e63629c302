"""``braintseg evaluate`` for 2D slice predictions (LGG, figshare): per patient and per slice.

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
  when the CSV is absent), ties counted half (Mann-Whitney);
* with a ``tumour`` classification head (``head_probability`` in ``predictions.csv``): the same
  detection figures for the head (**predicted positive = head probability > 0.5**, AUC of the
  head probability) as ``detection_head``, and ``detection_better``: ``head`` or ``derived``
  (the segmentation's score), whichever has the higher AUC (then accuracy; ``equal`` on a tie);
* with a ``tumour_type`` head (``head_class`` in ``predictions.csv``) and truth classes (figshare):
  ``tumour_type_head`` = :func:`braintseg.scoring.classes.type_figures` (accuracy, 3×3 confusion,
  per-class precision / recall / specificity / F1, macro means).  ``metrics_slices.csv`` carries
  ``truth_class`` and the head columns per slice.

Writes ``metrics.csv`` (per patient), ``metrics_slices.csv`` (per slice) and ``metrics.json``
(summary + ROC points) into ``PRED_DIR`` (or beside ``--output``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.atomic import atomic_write_text
from braintseg.errors import DataError
from braintseg.scoring.classes import type_figures
from braintseg.scoring.evaluate import _check_writable

logger = logging.getLogger(__name__)

MASK_SUFFIX = "_mask.tif"


def is_slice_truth(truth: Path) -> bool:
    """True when ``truth`` is a slice store or a folder in a slice format."""
    truth = Path(truth)
    if truth.is_file():
        try:
            from braintseg.store.read import open_store

            return open_store(truth).layout == "slices"
        except DataError:
            return False
    if not truth.is_dir():
        return False
    from braintseg.sources.registry import detect_format

    try:
        return detect_format(truth) != "brats"
    except DataError:
        return False


def find_slice_predictions(pred_dir: Path) -> dict[str, Path]:
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


def better_score(derived: dict[str, Any], head: dict[str, Any]) -> str:
    """``head``, ``derived`` or ``equal``: the higher AUC, then the higher accuracy."""
    def key(d: dict[str, Any]) -> tuple[float, float]:
        return tuple(-1.0 if d[k] is None or math.isnan(d[k]) else float(d[k])  # type: ignore[return-value]
                     for k in ("auc", "accuracy"))

    a, b = key(derived), key(head)
    return "equal" if a == b else ("head" if b > a else "derived")


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


def dice(inter: int, truth: int, pred: int) -> float:
    """``2 I / (|T| + |P|)``; 1 when both are empty."""
    return 1.0 if truth + pred == 0 else 2.0 * inter / (truth + pred)


def roc_auc(scores: NDArray[np.floating], positive: NDArray[np.bool_]) -> float:
    """ROC AUC (Mann-Whitney U / (n+ n-), ties half); NaN without both classes."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_points(scores: NDArray[np.floating], positive: NDArray[np.bool_]) -> dict[str, list]:
    """``{"fpr": [...], "tpr": [...]}`` over every distinct threshold (for the ROC figure)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1] if y.size else np.zeros(0, int)
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return {"fpr": [0.0, *(fp / n_neg).tolist()], "tpr": [0.0, *(tp / n_pos).tolist()]}


def detection(truth_pos: NDArray[np.bool_], pred_pos: NDArray[np.bool_],
              scores: NDArray[np.floating]) -> dict[str, Any]:
    """Slice-level detection figures (see the module docstring)."""
    tp = int((truth_pos & pred_pos).sum())
    tn = int((~truth_pos & ~pred_pos).sum())
    fp = int((~truth_pos & pred_pos).sum())
    fn = int((truth_pos & ~pred_pos).sum())
    n = tp + tn + fp + fn

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {"accuracy": ratio(tp + tn, n), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "auc": roc_auc(scores, truth_pos),
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))  # every row's keys, in order
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def run_evaluate_slices(pred_dir: Path, truth: Path, output: Path | None = None,
                        cases: list[str] | None = None) -> dict[str, Any]:
    """Score slice predictions against ``truth``; returns the summary dict (also written).

    Raises:
        DataError: no predictions, a scored patient with a slice missing, sizes that differ,
            unreadable files (each names the file).
    """
    pred_dir, truth = Path(pred_dir), Path(truth)
    output = Path(output) if output is not None else pred_dir / "metrics.csv"
    preds = find_slice_predictions(pred_dir)
    if not preds:
        raise DataError(f"{pred_dir} holds no *{MASK_SUFFIX} predictions")
    _check_writable(output)
    scores_csv = read_scores(pred_dir)
    head_csv = read_head(pred_dir)
    patients, slices = [], []
    for cid, slice_ids, masks, classes in truth_patients(truth):
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
    score = np.array([s["score"] for s in slices], np.float64)
    pooled = dice(sum(s["intersection"] for s in slices), sum(s["truth_area"] for s in slices),
                  sum(s["predicted_area"] for s in slices))
    summary = {
        "n_patients": len(patients), "n_scored": len(patients) - len(missing),
        "n_missing": len(missing), "missing": missing, "n_slices": len(slices),
        "dice_per_patient_mean": float(dices.mean()),
        "dice_per_patient_median": float(np.median(dices)),
        "dice_pooled": pooled,
        "detection": detection(tpos, ppos, score),
        "score": "tumour_probability (predictions.csv)" if scores_csv else "predicted_area",
        "conventions": "patient/pooled Dice 1 when truth and prediction are empty; slice "
                       "positive = any tumour pixel",
    }
    result = {"summary": _nan_to_none(summary), "roc": roc_points(score, tpos),
              "pred_dir": str(pred_dir), "truth": str(truth), "cases": patients}
    if any(sl["truth_class"] > 0 for sl in slices) and all("head_class" in sl for sl in slices):
        summary["tumour_type_head"] = type_figures(
            np.array([sl["truth_class"] for sl in slices]),
            np.array([sl["head_class"] for sl in slices]))
        result["summary"] = _nan_to_none(summary)
    if head_csv and all("head_score" in sl for sl in slices):
        hscore = np.array([sl["head_score"] for sl in slices], np.float64)
        summary["detection_head"] = detection(tpos, hscore > 0.5, hscore)
        summary["detection_better"] = better_score(summary["detection"],
                                                   summary["detection_head"])
        summary["score_head"] = "head_probability (predictions.csv), positive when > 0.5"
        result["summary"] = _nan_to_none(summary)
        result["roc_head"] = roc_points(hscore, tpos)
    atomic_write_text(output, _csv_text(patients))
    atomic_write_text(output.with_name(f"{output.stem}_slices.csv"), _csv_text(slices))
    atomic_write_text(output.with_name(f"{output.stem}.json"), json.dumps(result, indent=1))
    return result


def format_slice_summary(result: dict[str, Any]) -> str:
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
