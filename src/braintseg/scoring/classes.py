"""Tumour-type figures (figshare ``tumour_type``: 1 meningioma, 2 glioma, 3 pituitary), numpy only.

:func:`type_figures` compares per-slice true and predicted classes: accuracy, a 3×3 confusion
matrix (rows truth, columns prediction), per class precision / recall (sensitivity) /
specificity / F1 / support, and their macro means (unweighted over the classes that occur in the
truth).  A ratio with a zero denominator is NaN (reported as null).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: class number → name (the figshare labels)
TYPE_NAMES: dict[int, str] = {1: "meningioma", 2: "glioma", 3: "pituitary"}


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def type_figures(truth: NDArray[np.integer], pred: NDArray[np.integer]) -> dict[str, Any]:
    """Figures for true classes ``truth (N,)`` and predicted classes ``pred (N,)``, both 1..3.

    Slices whose true class is 0 (no class) are left out; ``n`` counts the others.
    """
    truth, pred = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    keep = truth > 0
    truth, pred = truth[keep], pred[keep]
    classes = sorted(TYPE_NAMES)
    confusion = [[int(((truth == t) & (pred == p)).sum()) for p in classes] for t in classes]
    per_class: dict[str, dict[str, Any]] = {}
    for c in classes:
        tp = int(((truth == c) & (pred == c)).sum())
        fp = int(((truth != c) & (pred == c)).sum())
        fn = int(((truth == c) & (pred != c)).sum())
        tn = int(truth.size - tp - fp - fn)
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        if math.isnan(precision) or math.isnan(recall):
            f1 = math.nan
        else:
            f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        per_class[TYPE_NAMES[c]] = {"precision": precision, "recall": recall,
                                    "specificity": _ratio(tn, tn + fp), "f1": f1,
                                    "support": tp + fn}
    present = [v for v in per_class.values() if v["support"] > 0]

    def macro(key: str) -> float:
        values = [v[key] for v in present if not math.isnan(v[key])]
        return float(np.mean(values)) if values else math.nan

    return {"n": int(truth.size), "accuracy": _ratio(int((truth == pred).sum()), truth.size),
            "confusion": confusion, "labels": [TYPE_NAMES[c] for c in classes],
            "per_class": per_class, "macro_precision": macro("precision"),
            "macro_recall": macro("recall"), "macro_f1": macro("f1")}
