"""Pictures of 2D slice predictions for ``report`` (the ``slices`` strategy; no Keras).

Per patient ``<patient>_montage.png``: its slices with tumour (in truth or prediction; up to
:data:`MAX_SLICES`, evenly chosen) on the FLAIR channel (the channel named ``flair``: LGG
channel 1, BRATS 2013 channel 0; else the first, figshare's only one), truth contour green,
prediction contour red.  ``roc.png``: the slice-level ROC curve of the slice score (from
``metrics.json`` when ``evaluate`` ran, else computed here by
:func:`braintseg.scoring.evaluate.run_evaluate`, which writes ``metrics.*`` into the output
folder).  :func:`plot_predictions` draws both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from braintseg.errors import DataError
from braintseg.reporting.figures import figure, save_png

__all__ = ["plot_patient", "plot_predictions", "plot_roc"]
MAX_SLICES = 12
COLUMNS = 6


def _flair(image: np.ndarray, channels: tuple[str, ...]) -> np.ndarray:
    """The FLAIR channel of ``image (H, W, C)`` (named in ``channels``), else its first."""
    return image[..., channels.index("flair") if "flair" in channels else 0]


def plot_patient(case: Any, preds: dict[str, Path], out: Path, dice: float | None) -> Path:
    """One patient's montage (see the module docstring)."""
    from braintseg.scoring.slices import read_pred

    masks = case.masks or [np.zeros(im.shape[:2], np.uint8) for im in case.images]
    pred = [read_pred(preds[s], m.shape) for s, m in zip(case.files.slice_ids, masks,
                                                          strict=True)]
    show = [k for k in range(len(masks)) if masks[k].any() or pred[k].any()]
    if not show:
        show = [len(masks) // 2]
    if len(show) > MAX_SLICES:
        show = [show[i] for i in np.linspace(0, len(show) - 1, MAX_SLICES).round().astype(int)]
    cols = min(COLUMNS, len(show))
    rows = math.ceil(len(show) / cols)
    fig = figure(2.2 * cols, 2.3 * rows + 0.4)
    title = case.case_id + (f"  (patient Dice {dice:.3f})" if dice is not None else "")
    fig.suptitle(f"{title}: truth green, prediction red", fontsize=9)
    for j, k in enumerate(show):
        ax = fig.add_subplot(rows, cols, j + 1)
        img = _flair(np.asarray(case.images[k], np.float32), case.channels)
        ax.imshow(img, cmap="gray", interpolation="nearest")
        if masks[k].any():
            ax.contour(masks[k] > 0, levels=[0.5], colors=["#00e000"], linewidths=0.8)
        if pred[k].any():
            ax.contour(pred[k], levels=[0.5], colors=["#ff2020"], linewidths=0.8)
        ax.set_title(case.files.slice_ids[k].rsplit("_", 1)[-1], fontsize=7)
        ax.set_axis_off()
    return save_png(fig, out)


def plot_roc(roc: dict[str, list], auc: float | None, out: Path,
             head: tuple[dict[str, list], float | None] | None = None) -> Path:
    """The slice-level ROC curve PNG (and the classification head's, when given)."""
    fig = figure(4, 4)
    ax = fig.add_subplot(1, 1, 1)
    curves = [(roc, auc, "#c03030", "max tumour probability" if head else "")]
    if head is not None:
        curves.append((head[0], head[1], "#3050c0", "classification head"))
    for points, area, colour, name in curves:
        text = f"AUC {area:.3f}" if area is not None else "AUC n/a"
        ax.plot(points["fpr"], points["tpr"], color=colour, lw=1.5,
                label=f"{name}: {text}" if name else text)
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("1 - specificity (slices)")
    ax.set_ylabel("sensitivity (slices)")
    ax.set_title("slice-level tumour detection", fontsize=9)
    ax.legend(loc="lower right")
    return save_png(fig, out)


def plot_predictions(pred_dir: Path, truth: Path, out_dir: Path) -> list[Path]:
    """Montages per predicted patient and ``roc.png``; returns the PNGs written.

    Raises:
        DataError: ``truth`` is not a folder (a store holds no images), or the scoring's errors.
    """
    from braintseg.scoring.evaluate import run_evaluate
    from braintseg.scoring.slices import find_predictions
    from braintseg.sources.registry import detect_format, source

    pred_dir, truth, out_dir = Path(pred_dir), Path(truth), Path(out_dir)
    if not truth.is_dir():
        raise DataError(f"report: -t {truth} must be the slice folder (LGG patient folders or "
                        "figshare .mat files) with the images")
    preds = find_predictions(pred_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = pred_dir / "metrics.json"
    result = (json.loads(metrics.read_text()) if metrics.is_file()
              else run_evaluate(pred_dir, truth, out_dir / "metrics.csv"))
    dices = {r["case"]: r["dice"] for r in result.get("cases", [])}
    rd = source(detect_format(truth))
    written = []
    for files in rd.find_cases(truth, require_labels=False):
        if not any(s in preds for s in files.slice_ids):
            continue
        case = rd.load_case(files)
        written.append(plot_patient(case, preds, out_dir / f"{files.case_id}_montage.png",
                                    dices.get(files.case_id)))
    head = ((result["roc_head"], result["summary"]["detection_head"]["auc"])
            if "roc_head" in result else None)
    written.append(plot_roc(result["roc"], result["summary"]["detection"]["auc"],
                            out_dir / "roc.png", head))
    return written
