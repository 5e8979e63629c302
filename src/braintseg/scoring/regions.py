"""BraTS segmentation metrics on boolean masks (numpy/scipy only, no Keras).

Regions of the internal labels (0 background, 1 NCR/NET, 2 edema, 3 ET): WT = {1,2,3},
TC = {1,3}, ET = {3}.  Masks are ``(X, Y, Z)`` bool arrays; spacing is mm per axis.  Empty masks
follow the BraTS convention: both empty → Dice 1, HD95 0; exactly one empty → Dice 0,
HD95 :data:`HD95_EMPTY`.  Used by :mod:`.evaluate` and
:mod:`braintseg.reporting.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: HD95 (mm) when exactly one mask is empty: the diagonal of the 240x240x155 1-mm BraTS grid
HD95_EMPTY = 373.13
REGIONS: tuple[str, ...] = ("wt", "tc", "et")
#: internal labels (0 bg, 1 NCR/NET, 2 edema, 3 ET) making up each region
REGION_LABELS: dict[str, tuple[int, ...]] = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}
METRICS: tuple[str, ...] = (
    "dice", "hd95_mm", "sensitivity", "specificity",
    "pred_voxels", "true_voxels", "pred_ml", "true_ml",
)
STATS: tuple[str, ...] = ("mean", "std", "median", "p25", "p75", "n")


# --------------------------------------------------------------------------- metrics


def region_mask(labels: NDArray[np.uint8], region: str) -> NDArray[np.bool_]:
    """Boolean ``(X, Y, Z)`` mask of ``region`` ("wt"/"tc"/"et") in internal labels {0,1,2,3}."""
    lut = np.zeros(256, bool)
    lut[list(REGION_LABELS[region])] = True
    return lut[labels]


def nonzero_box(*volumes: NDArray[Any]) -> tuple[slice, ...]:
    """Smallest box holding every nonzero voxel of all ``volumes`` (one shape); whole if none.

    Masks cropped to it keep every metric: outside it all masks are False, which is what the
    surface erosion assumes beyond the crop.
    """
    union = np.logical_or.reduce([v != 0 for v in volumes])
    if not union.any():
        return tuple(slice(0, 1) for _ in union.shape)
    coords = [np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != ax)))
              for ax in range(union.ndim)]
    return tuple(slice(int(c[0]), int(c[-1]) + 1) for c in coords)


def dice(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """Dice ``2|P∩T| / (|P|+|T|)``; 1.0 when both masks are empty (BraTS convention)."""
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _surface(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Voxels of ``mask`` with a 6-neighbour outside it (outside the array counts as outside)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def hd95(
    pred: NDArray[np.bool_], truth: NDArray[np.bool_], spacing: Sequence[float]
) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (as MedPy / the BraTS toolkit).

    The 95th percentile of the distances from every surface voxel of ``pred`` to the surface of
    ``truth`` and from every surface voxel of ``truth`` to the surface of ``pred``, pooled;
    distances from ``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``.

    Args:
        pred, truth: boolean masks of the same shape ``(X, Y, Z)``.
        spacing: voxel size in mm per axis.

    Returns:
        0.0 when both are empty, :data:`HD95_EMPTY` when exactly one is empty.
    """
    from scipy import ndimage

    has_p, has_t = bool(pred.any()), bool(truth.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return HD95_EMPTY
    # all surface voxels lie in the union's bounding box (+1 voxel for the erosion); distances
    # between them do not depend on voxels outside it, so the transforms run on the box only
    coords = np.argwhere(pred | truth)
    lo = np.maximum(coords.min(0) - 1, 0)
    hi = np.minimum(coords.max(0) + 2, pred.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sp, st = _surface(pred[box]), _surface(truth[box])
    to_t = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    return float(np.percentile(np.concatenate([to_t, to_p]), 95))


def region_metrics(
    pred: NDArray[np.bool_], truth: NDArray[np.bool_], spacing: Sequence[float],
    n_voxels: int | None = None,
) -> dict[str, float]:
    """All :data:`METRICS` of one region; sensitivity/specificity are NaN when undefined.

    Args:
        pred, truth: boolean masks of one shape (may be a crop holding every True voxel).
        spacing: voxel size in mm per axis.
        n_voxels: voxels in the whole image when the masks are such a crop (for specificity).
    """
    tp = int(np.logical_and(pred, truth).sum())
    n_p, n_t = int(pred.sum()), int(truth.sum())
    negatives = (truth.size if n_voxels is None else n_voxels) - n_t
    ml = float(np.prod(spacing)) / 1000.0
    return {
        "dice": dice(pred, truth),
        "hd95_mm": hd95(pred, truth, spacing),
        "sensitivity": tp / n_t if n_t else float("nan"),
        "specificity": (negatives - (n_p - tp)) / negatives if negatives else float("nan"),
        "pred_voxels": n_p, "true_voxels": n_t, "pred_ml": n_p * ml, "true_ml": n_t * ml,
    }


def missing_metrics(truth: NDArray[np.bool_], spacing: Sequence[float]) -> dict[str, float]:
    """A truth region without a prediction, counted as a failure."""
    n_t = int(truth.sum())
    return {"dice": 0.0, "hd95_mm": HD95_EMPTY, "sensitivity": 0.0, "specificity": 0.0,
            "pred_voxels": float("nan"), "true_voxels": n_t, "pred_ml": float("nan"),
            "true_ml": n_t * float(np.prod(spacing)) / 1000.0}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{metric: {region: {mean, std, median, p25, p75, n}}}`` over cases (NaNs left out)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric in METRICS:
        out[metric] = {}
        for region in REGIONS:
            v = np.array([float(r[f"{region}_{metric}"]) for r in rows], np.float64)
            v = v[np.isfinite(v)]
            if v.size == 0:
                out[metric][region] = {s: (0 if s == "n" else float("nan")) for s in STATS}
                continue
            p25, median, p75 = np.percentile(v, [25, 50, 75])
            out[metric][region] = {
                "mean": float(v.mean()), "std": float(v.std()), "median": float(median),
                "p25": float(p25), "p75": float(p75), "n": int(v.size),
            }
    return out
