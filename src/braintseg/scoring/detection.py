"""Slice figures of ``evaluate`` for 2D data sets (numpy/scipy only): Dice from pixel counts,
slice-level detection, ROC.

* :func:`dice`: ``2|T∩P| / (|T| + |P|)`` from counts; **1 when truth and prediction are both
  empty**.
* :func:`detection`: a slice is truth positive when its mask has any tumour pixel, predicted
  positive as the caller decides; accuracy, sensitivity (NaN without positive slices),
  specificity (NaN without negative slices), confusion matrix ``tp, fp, fn, tn``, and the ROC AUC
  of a slice score, ties counted half (Mann-Whitney).
* :func:`roc_points`: the ROC curve over every distinct threshold; :func:`better_score` picks the
  slice score with the higher AUC (then accuracy).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["better_score", "detection", "dice", "roc_auc", "roc_points"]


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
    """Slice-level detection figures: ``{"accuracy", "sensitivity", "specificity", "auc",
    "confusion": {"tp", "fp", "fn", "tn"}}`` of the predicted positives ``pred_pos (S,) bool``
    and the ROC AUC of ``scores (S,)`` against the truth positives ``truth_pos (S,) bool``."""
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


def better_score(derived: dict[str, Any], head: dict[str, Any]) -> str:
    """``head``, ``derived`` or ``equal``: the higher AUC, then the higher accuracy."""
    def key(d: dict[str, Any]) -> tuple[float, float]:
        return tuple(-1.0 if d[k] is None or math.isnan(d[k]) else float(d[k])  # type: ignore[return-value]
                     for k in ("auc", "accuracy"))

    a, b = key(derived), key(head)
    return "equal" if a == b else ("head" if b > a else "derived")
