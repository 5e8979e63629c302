"""Pictures of volume predictions for ``report`` (the ``volumes`` strategy; no Keras).

``report PRED_DIR -t CASES``: per predicted case a montage of axial, coronal and sagittal slices
through the tumour centre (the slice with the most ground-truth WT voxels per axis, or predicted
WT without ground truth): FLAIR, T1ce, ground truth on FLAIR, prediction on FLAIR; Dice per
region in the title (``PRED_DIR/metrics.csv`` if present, else computed) →
``<case>_overlay.png``.  Orientation, label colours and panel letters as in
:mod:`braintseg.reporting.figures`.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.errors import DataError
from braintseg.reporting.figures import (
    REGION_COLOURS,
    montage,
    save_png,
    source_slices,
    to_display,
    tumour_centre,
)

logger = logging.getLogger(__name__)

__all__ = ["plot_case_overlay", "plot_prediction_overlays"]


def _volume(path: Path, case_id: str) -> tuple[NDArray[np.float32], NDArray[np.float64],
                                               tuple[float, ...]]:
    """``(data (X, Y, Z) float32, affine (4, 4), zooms)`` of one NIfTI file."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, np.float32)
        return data, np.asarray(img.affine, np.float64), tuple(img.header.get_zooms()[:3])
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken files
        raise DataError(f"case {case_id}: cannot read {path} ({type(exc).__name__})") from None


def _metrics_dice(pred_dir: Path) -> dict[str, dict[str, float]]:
    """``case → {region: dice}`` from ``pred_dir/metrics.csv`` (empty if absent/unreadable)."""
    path = pred_dir / "metrics.csv"
    try:
        with open(path, newline="") as f:
            return {r["case"]: {g: float(r[f"{g}_dice"]) for g in REGION_COLOURS}
                    for r in csv.DictReader(f)}
    except (OSError, KeyError, ValueError):
        return {}


def plot_case_overlay(case: Any, pred_path: Path, out: Path,
                      dice: dict[str, float] | None = None) -> Path:
    """Montage of one predicted case on its FLAIR/T1ce (see the module docstring).

    Args:
        case: the case's :class:`~braintseg.sources.brats.CaseFiles` (images, optional seg).
        pred_path: the predicted label NIfTI (either label convention).
        out: the PNG to write.
        dice: Dice per region for the title; computed when None and a seg exists.
    """
    from braintseg.scoring.regions import dice as dice_of
    from braintseg.scoring.regions import region_mask
    from braintseg.scoring.volumes import read_labels

    cid = case.case_id
    flair, affine, zooms = _volume(case.images["flair"], cid)
    t1ce = _volume(case.images["t1ce"], cid)[0]
    pred = read_labels(pred_path, cid).labels
    truth = read_labels(case.seg, cid).labels if case.seg is not None else None
    for name, arr in (("prediction", pred), ("ground truth", truth)):
        if arr is not None and arr.shape != flair.shape:
            raise DataError(f"case {cid}: {name} grid {arr.shape} differs from FLAIR grid "
                            f"{flair.shape} ({case.images['flair']})")
    shape = flair.shape
    (flair, t1ce, pred, truth), spacing = to_display([flair, t1ce, pred, truth], affine, zooms)
    centre = tumour_centre(region_mask(truth if truth is not None else pred, "wt"), flair.shape)
    if dice is None and truth is not None:
        dice = {g: dice_of(region_mask(pred, g), region_mask(truth, g)) for g in REGION_COLOURS}
    columns: list[tuple[str, Any, Any]] = [("FLAIR", flair, None), ("T1ce", t1ce, None)]
    if truth is not None:
        columns.append(("ground truth", flair, truth))
    columns.append(("prediction", flair, pred))
    scores = ("Dice " + "  ".join(f"{g.upper()} {v:.3f}" for g, v in dice.items())
              if dice else "no ground truth")
    return save_png(montage(columns, spacing, centre, f"{cid}    {scores}",
                            source_slices(affine, shape, centre)), out)


def plot_prediction_overlays(pred_dir: Path, cases_dir: Path, out_dir: Path) -> list[Path]:
    """``out_dir/<case>_overlay.png`` for every prediction in ``pred_dir`` with a case folder."""
    from braintseg.scoring.volumes import find_predictions
    from braintseg.sources.brats import scan_cases

    if not Path(cases_dir).is_dir():
        raise DataError(f"--truth {cases_dir} must be a folder of BraTS case folders (the "
                        "pictures need their FLAIR and T1ce images)")
    preds = find_predictions(pred_dir)
    found, problems = scan_cases(Path(cases_dir), require_labels=False)
    by_id = {c.case_id: c for c in found}
    skipped = sorted(set(preds) - set(by_id))
    if skipped:
        logger.warning("no case folder in %s for predictions %s; not drawn", cases_dir, skipped)
        for msg in (m for c, m in problems if c in skipped):
            logger.warning("%s", msg)
    todo = sorted(set(preds) & set(by_id))
    if not todo:
        raise DataError(f"none of the {len(preds)} predictions in {pred_dir} has a case folder "
                        f"in {cases_dir}")
    dice = _metrics_dice(Path(pred_dir))
    return [plot_case_overlay(by_id[c], preds[c], Path(out_dir) / f"{c}_overlay.png",
                              dice.get(c)) for c in todo]
