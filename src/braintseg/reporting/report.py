"""``braintseg report`` and ``braintseg show``: pictures (PNG on a matplotlib Agg canvas; no Keras).

* ``braintseg report RUN_DIR``: loss and Dice per epoch from ``history.csv`` (WT/TC/ET for BraTS,
  tumour for 2D slices; training solid, validation dashed) → ``training_curves.png``.
* ``braintseg report PRED_DIR -t TRUTH``: pictures of the predictions, by the layout of the truth
  (:func:`braintseg.scoring.evaluate.truth_layout`): BraTS case folders →
  :func:`braintseg.reporting.volumes.plot_prediction_overlays` (a montage per case), a slice
  folder (LGG, figshare, …) → :func:`braintseg.reporting.slices.plot_predictions` (a montage per
  patient and the ROC curve).
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
from braintseg.reporting import slices
from braintseg.reporting.figures import (
    REGION_COLOURS,
    figure,
    montage,
    save_png,
    source_slices,
    to_display,
    tumour_centre,
)
from braintseg.reporting.volumes import plot_prediction_overlays

__all__ = ["dice_columns", "plot_history", "plot_prediction_overlays", "read_history",
           "run_report", "show_case"]

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


# --------------------------------------------------------------------------- entry points


def run_report(folder: Path, truth: Path | None = None, out_dir: Path | None = None
               ) -> list[Path]:
    """``braintseg report``: curves for a run folder, pictures for a prediction folder.

    Args:
        folder: a training run (has ``history.csv``/``config.yaml``; or its ``model.keras``)
            or a prediction folder (``<case>.nii.gz`` label files, or ``*_mask.tif`` slices).
        truth: for a prediction folder, the BraTS case folders with the images (and segs), or
            the slice folder (LGG, figshare, …) with the images and masks.
        out_dir: where the PNGs go (default: ``folder``).

    Returns:
        The PNG files written.
    """
    from braintseg.scoring.evaluate import truth_layout
    from braintseg.scoring.volumes import find_predictions
    from braintseg.training.runs import run_folder

    folder = run_folder(Path(folder))
    if not folder.is_dir():
        raise DataError(f"report: {folder} does not exist or is not a folder")
    out = Path(out_dir) if out_dir is not None else folder
    if (folder / "history.csv").is_file():
        return [plot_history(folder, out / "training_curves.png")]
    if truth is not None and truth_layout(Path(truth)) == "slices":
        return slices.plot_predictions(folder, Path(truth), out)  # montages per patient + ROC
    preds = find_predictions(folder)
    if not preds and (folder / "config.yaml").is_file():
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
