"""``braintseg evaluate``: predictions against ground truth, one flow for every data layout.

Pure numpy/scipy/nibabel (never imports Keras), so it runs anywhere.

The layout of the truth picks the scoring (:func:`truth_layout`): a slice store or a folder of a
``slices`` source (LGG, figshare, …) → :mod:`braintseg.scoring.slices` (per-patient and pooled
Dice, slice detection and ROC, tumour types); anything else (BraTS case folders, a folder of
``<case>.nii.gz`` label files, a volume store) → :mod:`braintseg.scoring.volumes` (WT/TC/ET
regions with HD95).  Each strategy module implements :class:`Scoring`; the flow around it is
here once: the default output ``PRED_DIR/metrics.csv``, the shard's file names, the writability
check before anything is scored, and the files written (through :mod:`braintseg.scoring.output`,
temporary name then rename).  :func:`merge_shards` joins the per-shard results of the volume
scoring; :func:`format_summary` prints either kind of result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from braintseg.errors import DataError
from braintseg.scoring import slices, volumes
from braintseg.scoring.output import check_writable, shard_output, stem

__all__ = ["SCORINGS", "Scoring", "format_summary", "merge_shards", "run_evaluate",
           "truth_layout"]


class Scoring(Protocol):
    """What a layout's scoring module supplies to :func:`run_evaluate`."""

    #: whether ``--shard K/N`` selects truth cases (else the shard is ignored)
    SHARDED: bool

    def plan(self, pred_dir: Path, truth: Path, cases: Sequence[str] | None,
             shard: tuple[int, int] | None) -> Any:
        """Find the predictions and the truth cases to score; DataError when they cannot be
        matched (nothing is written yet)."""

    def score(self, job: Any, output: Path) -> dict[str, Any]:
        """Score what :meth:`plan` found (logging cases without a prediction); the result
        :func:`run_evaluate` returns."""

    def write(self, job: Any, result: dict[str, Any], output: Path) -> None:
        """Write the per-case CSV ``output`` and the files beside it."""

    def format_summary(self, result: dict[str, Any]) -> str:
        """The lines ``braintseg evaluate`` prints."""


#: layout (``braintseg.sources.base.LAYOUTS``) → its scoring
SCORINGS: dict[str, Scoring] = {"volumes": cast(Scoring, volumes),
                                "slices": cast(Scoring, slices)}


def truth_layout(truth: Path) -> str:
    """``"slices"`` for a slice store or a folder of a ``slices`` source, else ``"volumes"``
    (also when ``truth`` is missing or unreadable: the volume scoring names the problem)."""
    from braintseg.sources.registry import detect_format, source
    from braintseg.store.read import open_store

    truth = Path(truth)
    try:
        if truth.is_file():
            return "slices" if open_store(truth).layout == "slices" else "volumes"
        if truth.is_dir():
            return "slices" if source(detect_format(truth)).LAYOUT == "slices" else "volumes"
    except DataError:
        pass
    return "volumes"


def run_evaluate(
    pred_dir: Path, truth: Path, output: Path | None = None, cases: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Score every truth case (or only ``cases``) against the predictions in ``pred_dir``.

    Args:
        pred_dir: the predictions: ``<case>.nii.gz`` label files (either label convention), or
            ``<slice id>_mask.tif`` files (+ ``predictions.csv``) for slice truth.
        truth: folder of BraTS case folders or of ``<case>.nii.gz`` label files, a slice-format
            folder (LGG, figshare), or a store (either layout).
        output: per-case CSV (default ``pred_dir/metrics.csv``); the other files are written
            beside it (``<stem>_summary.csv`` or ``<stem>_slices.csv``, and ``<stem>.json``).
        cases: evaluate only these truth case ids (default: all truth cases).
        shard: ``(K, N)``: only truth cases ``K, K+N, …`` (sorted ids; volume scoring only);
            the outputs get ``.shard-K-of-N`` before their suffix; :func:`merge_shards` joins
            them.

    Returns:
        The volume scoring's ``{"n_cases", "n_scored", "n_missing", "missing",
        "unmatched_predictions", "pred_dir", "truth", "files": {"per_case", "summary_csv",
        "json"}, "summary": {metric: {region: {stat}}}, "cases": [per-case rows]}``, or the
        slice scoring's ``{"summary", "roc", ["roc_head"], "pred_dir", "truth", "cases"}``.

    Raises:
        DataError: missing folders, prediction and truth sharing no case id, unreadable files,
            grids that differ, output not writable.
    """
    pred_dir, truth = Path(pred_dir), Path(truth)
    output = Path(output) if output is not None else pred_dir / "metrics.csv"
    scoring = SCORINGS[truth_layout(truth)]
    shard = shard if scoring.SHARDED else None
    job = scoring.plan(pred_dir, truth, list(cases) if cases is not None else None, shard)
    output = shard_output(output, shard)
    check_writable(output)
    result = scoring.score(job, output)
    scoring.write(job, result, output)
    return result


def merge_shards(output: Path) -> dict[str, Any]:
    """Join the per-shard results ``<stem>.shard-K-of-N.json`` beside ``output`` into the files
    an unsharded :func:`run_evaluate` writes (rows in case order, summary of all cases).

    Raises:
        DataError: no shard files, or shards missing or of different N (names them).
    """
    output = Path(output)
    found = sorted(output.parent.glob(f"{stem(output)}.shard-*-of-*.json"))
    if not found:
        raise DataError(f"no shard results {stem(output)}.shard-K-of-N.json in {output.parent}; "
                        "run evaluate --shard K/N first")
    parts = [json.loads(p.read_text()) | {"_file": p.name} for p in found]
    ns = {p["_file"].rsplit("-of-", 1)[1].split(".")[0] for p in parts}
    names = {p["_file"] for p in parts}
    n = int(next(iter(ns))) if len(ns) == 1 else 0
    want = {f"{stem(output)}.shard-{k}-of-{n}.json" for k in range(n)}
    if len(ns) != 1 or names != want:
        raise DataError(f"shard results in {output.parent} are incomplete or mixed: found "
                        f"{sorted(names)}; expected {sorted(want) or 'one N'}")
    rows = sorted((r for p in parts for r in p["cases"]), key=lambda r: r["case"])
    summary = volumes.result(rows, [], parts[0]["pred_dir"], parts[0]["truth"], output)
    volumes.write(None, summary, output)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The lines ``braintseg evaluate`` prints for a result of :func:`run_evaluate` (either
    layout: a slice result has ``summary["dice_pooled"]``)."""
    layout = "slices" if "dice_pooled" in summary.get("summary", {}) else "volumes"
    return SCORINGS[layout].format_summary(summary)
