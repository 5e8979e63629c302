"""Pictures (PNG on a matplotlib Agg canvas; no Keras): training curves, overlays, quick looks.

* ``braintseg report RUN_DIR``: loss and WT/TC/ET Dice per epoch from ``history.csv`` (training
  solid, validation dashed) → ``training_curves.png``.
* ``braintseg report PRED_DIR -t CASES``: per predicted case a montage of axial, coronal and
  sagittal slices through the tumour centre (the slice with the most ground-truth WT voxels per
  axis, or predicted WT without ground truth): FLAIR, T1ce, ground truth on FLAIR, prediction on
  FLAIR; Dice per region in the title (``PRED_DIR/metrics.csv`` if present, else computed)
  → ``<case>_overlay.png``.
* ``braintseg show CASE_DIR``: the four modalities and the seg (if any) of one raw case.

Label colours (ITK-SNAP's defaults for BraTS): NCR/NET red, edema green, ET yellow.  Volumes are
reoriented to L-A-S (:func:`braintseg.reporting.figures.to_display`): axial and coronal slices in
radiological convention (patient's left on the right, anterior/superior up), sagittal with
anterior on the left; aspect from the voxel spacing, cropped to the brain.  Every panel carries
the patient directions at its edges (R/L, A/P, S/I) and every row its view and the slice's voxel
index in the source file (e.g. ``z = 77``).
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
    figure,
    montage,
    save_png,
    source_slices,
    to_display,
    tumour_centre,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- training curves


def read_history(path: Path) -> dict[str, NDArray[np.float64]]:
    """Columns of a Keras ``history.csv`` as float arrays; DataError if missing or empty."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"cannot read training history {path}: {exc.strerror}") from None
    if not rows:
        raise DataError(f"training history {path} has no epochs yet; expected one row per epoch")
    out = {}
    for key in rows[0]:
        try:
            out[key] = np.array([float(r[key]) if r[key] not in ("", None) else np.nan
                                 for r in rows])
        except ValueError:
            logger.debug("history column %s is not numeric; skipped", key)
    return out


def plot_history(run_dir: Path, out: Path) -> Path:
    """Training curves of a run: loss, and every Dice column of ``history.csv`` per epoch
    (``dice_wt``/``dice_tc``/``dice_et`` for BraTS, ``dice_tumour`` for 2D slices; validation
    dashed; ``dice_mean`` is left out when there are per-region columns)."""
    hist = read_history(Path(run_dir) / "history.csv")
    epochs = hist.get("epoch", np.arange(len(next(iter(hist.values())))))
    epochs = epochs + 1 if epochs.min() == 0 else epochs
    fig = figure(11, 4.2)
    ax_loss, ax_dice = fig.subplots(1, 2)
    for prefix, style, tag in (("", "-", "train"), ("val_", "--", "validation")):
        if f"{prefix}loss" in hist:
            ax_loss.plot(epochs, hist[f"{prefix}loss"], style, color="black", marker=".",
                         label=tag)
        for i, region in enumerate(dice_columns(hist)):
            colour = REGION_COLOURS.get(region, f"C{(i + 4) % 10}")
            ax_dice.plot(epochs, hist[f"{prefix}dice_{region}"] if f"{prefix}dice_{region}"
                         in hist else np.full(len(epochs), np.nan), style, color=colour,
                         marker=".", label=f"{region.upper()} {tag}")
    ax_loss.set(title="loss", xlabel="epoch", ylabel="loss")
    ax_dice.set(title="Dice", xlabel="epoch", ylabel="Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"training run {_short(Path(run_dir).resolve())}: {len(epochs)} epochs "
                 "(training solid, validation dashed)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, out)


def dice_columns(hist: dict[str, NDArray[Any]]) -> list[str]:
    """The Dice names of a history (``dice_<name>`` or ``val_dice_<name>`` columns), BraTS
    regions first; ``mean`` only when it is the only one."""
    names = {k.removeprefix("val_")[len("dice_"):] for k in hist
             if k.removeprefix("val_").startswith("dice_")}
    order = [r for r in REGION_COLOURS if r in names] + sorted(names - set(REGION_COLOURS))
    return [n for n in order if n != "mean"] or [n for n in order if n == "mean"]


def _short(path: Path, limit: int = 70) -> str:
    """``path`` as text, its start elided to fit ``limit`` characters."""
    text = str(path)
    return text if len(text) <= limit else "…" + text[len(text) - limit + 1:]


# --------------------------------------------------------------------------- overlays


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
    from braintseg.scoring.evaluate import read_labels
    from braintseg.scoring.regions import dice as dice_of
    from braintseg.scoring.regions import region_mask

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
    from braintseg.scoring.evaluate import find_predictions
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


# --------------------------------------------------------------------------- entry points


def run_report(folder: Path, truth: Path | None = None, out_dir: Path | None = None
               ) -> list[Path]:
    """``braintseg report``: curves for a run folder, overlays for a prediction folder.

    Args:
        folder: a training run (has ``history.csv``/``config.yaml``; or its ``model.keras``)
            or a prediction folder (``<case>.nii.gz`` label files).
        truth: for a prediction folder, the BraTS case folders with the images (and segs).
        out_dir: where the PNGs go (default: ``folder``).

    Returns:
        The PNG files written.
    """
    from braintseg.scoring.evaluate import find_predictions
    from braintseg.training.runs import run_folder

    folder = run_folder(Path(folder))
    if not folder.is_dir():
        raise DataError(f"report: {folder} does not exist or is not a folder")
    out = Path(out_dir) if out_dir is not None else folder
    is_run = (folder / "history.csv").is_file()
    if not is_run and truth is not None:
        from braintseg.scoring.slices import is_slice_truth

        if is_slice_truth(Path(truth)):  # 2D slices: montages per patient + ROC curve
            from braintseg.reporting.slices import run_report_slices

            return run_report_slices(folder, Path(truth), out)
    preds = {} if is_run else find_predictions(folder)
    if is_run or (not preds and (folder / "config.yaml").is_file()):
        return [plot_history(folder, out / "training_curves.png")]
    if not preds:
        raise DataError(f"report: {folder} is neither a training run (history.csv, config.yaml) "
                        "nor a prediction folder (<case>.nii.gz files)")
    if truth is None:
        raise DataError(f"report: {folder} is a prediction folder; give -t CASES_DIR, the BraTS "
                        "case folders with the FLAIR/T1ce images")
    return plot_prediction_overlays(folder, Path(truth), out)


def show_case(case_dir: Path, out: Path | None = None) -> Path:
    """``braintseg show``: FLAIR, T1, T1ce, T2 (and the seg on FLAIR) of one raw case folder.

    Returns:
        The PNG written (default ``<case>_show.png`` in the current folder).

    Raises:
        DataError: not one case folder, or a modality missing (named in the message).
    """
    from braintseg.sources.brats import load_case, scan_cases

    found, problems = scan_cases(Path(case_dir), require_labels=False)
    if problems:
        raise DataError(problems[0][1])
    if len(found) != 1:
        raise DataError(f"show: expected one case folder; found {len(found)} cases under "
                        f"{case_dir} ({', '.join(c.case_id for c in found[:3])}...)")
    case = load_case(found[0])
    zooms = tuple(float(z) for z in case.header.get_zooms()[:3])
    (images, labels), spacing = to_display([case.images, case.labels], case.affine, zooms)
    names = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}
    columns: list[tuple[str, Any, Any]] = [
        (label, images[..., i], None) for i, label in enumerate(names.values())
    ]
    if labels is not None:
        columns.append(("seg on FLAIR", images[..., 0], labels))
    centre = tumour_centre(None if labels is None else labels > 0, images.shape[:3])
    shape = "x".join(str(s) for s in case.images.shape[:3])
    title = (f"{case.files.case_id}    {shape} voxels, "
             f"{'x'.join(f'{s:g}' for s in zooms)} mm, {case.files.convention}")
    target = Path(out) if out is not None else Path(f"{case.files.case_id}_show.png")
    return save_png(montage(columns, spacing, centre, title,
                            source_slices(case.affine, case.images.shape[:3], centre)), target)
