"""Optional post-processing of predicted label volumes (numpy/scipy only, no Keras).

Works on internal labels (uint8 ``(X, Y, Z)``: 0 background, 1 NCR/NET, 2 edema, 3 ET) and the
nested BraTS regions WT = {1, 2, 3} ⊇ TC = {1, 3} ⊇ ET = {3}.  Both steps are off by default
(``predict.min_component_size: 0``, ``predict.et_to_ncr_threshold: 0``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

logger = logging.getLogger(__name__)


def keep_large_components(mask: NDArray[np.bool_], min_size: int) -> NDArray[np.bool_]:
    """``mask`` without its components of fewer than ``min_size`` voxels (26-connected in 3D,
    8-connected for a 2D slice)."""
    if min_size <= 1 or not mask.any():
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    components, n = ndimage.label(mask, structure=structure)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[components]


def remove_small_components(labels: NDArray[np.integer], min_size: int) -> NDArray[np.uint8]:
    """Remove connected components smaller than ``min_size`` voxels, per region.

    Regions are processed outside-in so the result stays nested: a small WT component becomes
    background; a small TC component (inside kept WT) becomes edema (2); a small ET component
    (inside kept TC) becomes NCR/NET (1).

    Args:
        labels: ``(X, Y, Z)`` internal labels {0,1,2,3}.
        min_size: components with fewer voxels are removed; 0 or 1 returns a copy.

    Returns:
        ``(X, Y, Z)`` uint8 internal labels.
    """
    labels = np.asarray(labels, np.uint8)
    if min_size <= 1:
        return labels.copy()
    wt = keep_large_components(labels > 0, min_size)
    tc = keep_large_components(((labels == 1) | (labels == 3)) & wt, min_size)
    et = keep_large_components((labels == 3) & tc, min_size)
    out = np.zeros_like(labels)
    out[wt] = 2
    out[tc] = 1
    out[et] = 3
    return out


def et_to_ncr(labels: NDArray[np.integer], threshold: int) -> NDArray[np.uint8]:
    """Relabel every ET voxel (3) as NCR/NET (1) when there are fewer than ``threshold``.

    ``threshold`` 0 disables it.  A case with no ET is unchanged.
    """
    labels = np.asarray(labels, np.uint8).copy()
    et = labels == 3
    n_et = int(et.sum())
    if threshold > 0 and 0 < n_et < threshold:
        labels[et] = 1
        logger.debug("relabelled %d ET voxels as NCR (threshold %d)", n_et, threshold)
    return labels


def postprocess(labels: NDArray[np.integer], min_component_size: int = 0,
                et_to_ncr_threshold: int = 0) -> NDArray[np.uint8]:
    """Small-component removal, then the ET → NCR rule (each skipped when its setting is 0)."""
    out = remove_small_components(labels, min_component_size)
    return et_to_ncr(out, et_to_ncr_threshold)


def describe(min_component_size: int, et_to_ncr_threshold: int) -> dict[str, Any]:
    """The post-processing settings as recorded in ``predict_config.yaml``."""
    return {
        "min_component_size": min_component_size,
        "connectivity": 26,
        "et_to_ncr_threshold": et_to_ncr_threshold,
        "enabled": bool(min_component_size > 1 or et_to_ncr_threshold > 0),
    }
