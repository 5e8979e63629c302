"""Array-level preprocessing: intensity normalisation, crop boxes, label conventions, views.

Conventions (see docs/design.md):

* Volumes are in nibabel's voxel order ``(X, Y, Z)``; multichannel volumes ``(X, Y, Z, C)`` with
  channels FLAIR, T1, T1ce, T2.
* Crop box ``(x0, x1, y0, y1, z0, z1)``: start inclusive, stop exclusive, on the source grid.
* Internal labels (uint8): 0 background, 1 NCR/NET, 2 edema, 3 ET.  Source conventions:
  ``"brats2018"`` raw {0, 1, 2, 4} (ET = 4) and ``"brats2023"`` raw {0, 1, 2, 3} (ET = 3).
* Views: ``axial`` slices index z → ``(X, Y)``; ``coronal`` index y → ``(X, Z)``;
  ``sagittal`` index x → ``(Y, Z)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.errors import ConfigError, DataError

Box = tuple[int, int, int, int, int, int]

#: axis of the ``(X, Y, Z)`` volume that each view slices along
VIEW_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}

#: raw label values allowed per source convention, and the internal label of each
CONVENTIONS: dict[str, dict[int, int]] = {
    "brats2018": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
}


def view_axis(view: str) -> int:
    """Axis of ``(X, Y, Z)`` sliced by ``view``; DataError for an unknown view."""
    try:
        return VIEW_AXIS[view]
    except KeyError:
        raise DataError(f"unknown view {view!r}; expected one of {sorted(VIEW_AXIS)}") from None


# --------------------------------------------------------------------------- labels


def _lut(mapping: dict[int, int]) -> NDArray[np.uint8]:
    lut = np.full(256, 255, np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def to_internal(raw: NDArray[Any], convention: str) -> NDArray[np.uint8]:
    """Map a source label volume to internal labels {0,1,2,3} (uint8, same shape).

    Args:
        raw: integer-valued label array in the ``convention``'s values (any int/float dtype).
        convention: ``"brats2018"`` ({0,1,2,4}) or ``"brats2023"`` ({0,1,2,3}).

    Raises:
        DataError: values outside the convention (the message lists them).
    """
    mapping = CONVENTIONS[convention]
    arr = np.asarray(raw)
    if not arr.size:
        return np.zeros(arr.shape, np.uint8)
    low, high = arr.min(), arr.max()
    if low < 0 or high > 255:
        bad = sorted({int(low), int(high)} - set(mapping))
        raise DataError(f"label values {bad} outside {sorted(mapping)} ({convention})")
    small = arr.astype(np.uint8, copy=False, order="K")
    # a few byte-wide comparisons (values are small) instead of a bincount over intp indices
    present = [v for v in range(int(high) + 1) if v in (0, int(high)) or (small == v).any()]
    bad = [v for v in present if v not in mapping]
    if bad:
        raise DataError(f"label values {bad} outside {sorted(mapping)} ({convention})")
    masks = [(small == src, dst) for src, dst in mapping.items() if src != dst and src in present]
    out = small.copy(order="K") if small is arr else small
    for mask, dst in masks:
        out[mask] = dst
    return out


def to_source(internal: NDArray[Any], convention: str) -> NDArray[np.uint8]:
    """Map internal labels {0,1,2,3} back to the source convention (uint8, same shape)."""
    inverse = {dst: src for src, dst in CONVENTIONS[convention].items()}
    arr = np.asarray(internal)
    if arr.size and (arr.min() < 0 or arr.max() > 3):
        raise DataError(f"internal labels must be in 0..3; received range {arr.min()}..{arr.max()}")
    return _lut(inverse)[arr.astype(np.uint8, copy=False)]


# --------------------------------------------------------------------------- normalisation


def normalization_stats(
    images: NDArray[np.floating],
    clip_percentiles: Sequence[float] = (1.0, 99.0),
    modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"),
) -> list[dict[str, Any]]:
    """Per-channel statistics of brain (nonzero) voxels after percentile clipping.

    Args:
        images: ``(X, Y, Z, C)`` intensities; 0 marks background.
        clip_percentiles: ``(lo, hi)`` percentiles of the brain voxels to clip to.
        modalities: channel names, used in the statistics and messages.

    Returns:
        one dict per channel ``{modality, n_brain, clip_lo, clip_hi, mean, std}``.

    Raises:
        DataError: a channel has no nonzero voxel, or constant brain intensity.
    """
    stats = []
    for c, name in enumerate(modalities):
        chan = np.asarray(images[..., c], dtype=np.float32).ravel(order="K")  # memory order
        brain = chan[chan != 0]  # a copy: everything below works in place on it
        if brain.size == 0:
            raise DataError(f"modality '{name}' is all zero; expected a brain image")
        lo, hi = np.percentile(brain, clip_percentiles, overwrite_input=True)  # one partition
        np.clip(brain, lo, hi, out=brain)
        mean = float(brain.mean(dtype=np.float64))
        brain -= np.float32(mean)
        std = math.sqrt(float(np.square(brain, out=brain).mean(dtype=np.float64)))
        if not std > 0:
            raise DataError(f"modality '{name}' has constant brain intensity {mean}")
        stats.append({"modality": name, "n_brain": int(brain.size), "clip_lo": float(lo),
                      "clip_hi": float(hi), "mean": mean, "std": std})
    return stats


def apply_normalization(
    images: NDArray[np.floating], stats: Sequence[dict[str, Any]], dtype: Any = np.float32
) -> NDArray[Any]:
    """``(clip(v, lo, hi) - mean) / std`` on nonzero voxels, 0 elsewhere.

    Args:
        images: ``(X, Y, Z, C)`` (any crop of the volume the stats came from).
        stats: from :func:`normalization_stats`, one per channel.
        dtype: output dtype (float32 or float16).

    Returns:
        C-contiguous ``(X, Y, Z, C)`` array of ``dtype``.
    """
    out = np.empty(images.shape, dtype)
    for c, st in enumerate(stats):
        chan = images[..., c]
        value = np.clip(chan, st["clip_lo"], st["clip_hi"], dtype=np.float32)  # keeps memory order
        value -= st["mean"]
        value *= np.float32(1.0 / st["std"])
        np.multiply(value, chan != 0, out=value)
        out[..., c] = value
    return out


def normalize(
    images: NDArray[np.floating],
    clip_percentiles: Sequence[float] = (1.0, 99.0),
    method: str = "zscore",
    modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"),
) -> tuple[NDArray[np.float32], list[dict[str, Any]]]:
    """Per-modality z-score over brain (nonzero) voxels after percentile clipping.

    Args:
        images: ``(X, Y, Z, C)`` intensities; 0 marks background.
        clip_percentiles: ``(lo, hi)`` percentiles of the brain voxels to clip to first.
        method: ``"zscore"`` or ``"none"`` (returns the input as float32).
        modalities: channel names, used in statistics and messages.

    Returns:
        ``(normalised (X, Y, Z, C) float32, stats)``: background stays exactly 0; ``stats`` has one
        dict per channel ``{modality, n_brain, clip_lo, clip_hi, mean, std}``.

    Raises:
        DataError: a channel has no nonzero voxel, or constant brain intensity.
    """
    if method == "none":
        for c, name in enumerate(modalities):
            if not np.any(images[..., c]):
                raise DataError(f"modality '{name}' is all zero; expected a brain image")
        return (np.ascontiguousarray(images, dtype=np.float32),
                [{"modality": m, "method": "none"} for m in modalities])
    if method != "zscore":
        raise ConfigError(f"data.normalization must be 'zscore' or 'none'; received {method!r}")
    stats = normalization_stats(images, clip_percentiles, modalities)
    return apply_normalization(images, stats), stats


# --------------------------------------------------------------------------- crop boxes


def box_shape(box: Sequence[int]) -> tuple[int, int, int]:
    """``(x1 - x0, y1 - y0, z1 - z0)`` of a crop box."""
    x0, x1, y0, y1, z0, z1 = box
    return (x1 - x0, y1 - y0, z1 - z0)


def validate_box(box: Sequence[int], shape: Sequence[int], multiple: int, where: str) -> Box:
    """Check a crop box against a volume shape and the divisibility rule.

    Raises:
        ConfigError: box outside ``shape`` or a side not divisible by ``multiple``
            (message names ``where``, e.g. the case).
    """
    box = tuple(int(v) for v in box)
    for axis, name in enumerate("xyz"):
        start, stop = box[2 * axis], box[2 * axis + 1]
        if not 0 <= start < stop <= shape[axis]:
            raise ConfigError(
                f"data.crop {list(box)} is outside the volume of {where}: {name} range "
                f"{start}:{stop} must lie within 0:{shape[axis]} (shape {tuple(shape)})"
            )
        if (stop - start) % multiple:
            raise ConfigError(
                f"data.crop {list(box)}: {name} size {stop - start} is not a multiple of "
                f"{multiple} (2**model.levels)"
            )
    return box  # type: ignore[return-value]


def nonzero_box(volume: NDArray[Any]) -> Box | None:
    """Bounding box ``(x0, x1, y0, y1, z0, z1)`` of nonzero voxels of ``(X, Y, Z[, C])``.

    Returns None for an all-zero volume.
    """
    mask = np.asarray(volume) != 0
    if mask.ndim == 4:
        mask = mask.any(axis=3)
    box: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box += [int(hits[0]), int(hits[-1]) + 1]
    return tuple(box)  # type: ignore[return-value]


def union_box(boxes: Sequence[Sequence[int]]) -> Box:
    """Smallest box containing all ``boxes``."""
    arr = np.asarray(boxes, dtype=np.int64)
    return tuple(int(arr[:, i].min() if i % 2 == 0 else arr[:, i].max())  # type: ignore[return-value]
                 for i in range(6))


def auto_crop_box(boxes: Sequence[Sequence[int]], shape: Sequence[int], multiple: int) -> Box:
    """Union of per-case nonzero boxes grown (centred) to a multiple of ``multiple``.

    The grown box is shifted to stay inside ``shape``.

    Raises:
        ConfigError: the grown size does not fit in the volume (side not a multiple).
    """
    union = union_box(boxes)
    out: list[int] = []
    for axis, name in enumerate("xyz"):
        start, stop = union[2 * axis], union[2 * axis + 1]
        size = math.ceil((stop - start) / multiple) * multiple
        if size > shape[axis]:
            raise ConfigError(
                f"data.crop auto: nonzero {name} extent {stop - start} grows to {size} "
                f"(multiple of {multiple}) but the volume has only {shape[axis]} voxels along "
                f"{name}; set data.crop explicitly or lower model.levels"
            )
        new_start = start - (size - (stop - start)) // 2
        new_start = min(max(new_start, 0), shape[axis] - size)
        out += [new_start, new_start + size]
    return tuple(out)  # type: ignore[return-value]


def crop(volume: NDArray[Any], box: Sequence[int]) -> NDArray[Any]:
    """``volume[x0:x1, y0:y1, z0:z1, ...]`` (a view, no copy) for ``(X, Y, Z[, C])``."""
    x0, x1, y0, y1, z0, z1 = box
    if x1 > volume.shape[0] or y1 > volume.shape[1] or z1 > volume.shape[2]:
        raise DataError(f"crop box {list(box)} exceeds volume shape {volume.shape[:3]}")
    return volume[x0:x1, y0:y1, z0:z1]


def uncrop(
    cropped: NDArray[Any], box: Sequence[int], shape: Sequence[int], fill: float = 0
) -> NDArray[Any]:
    """Place a cropped ``(x, y, z[, ...])`` array back into a volume of ``shape[:3]``."""
    if tuple(cropped.shape[:3]) != box_shape(box):
        raise DataError(f"cropped shape {cropped.shape[:3]} does not match box {list(box)}")
    out = np.full(tuple(shape[:3]) + cropped.shape[3:], fill, dtype=cropped.dtype)
    x0, x1, y0, y1, z0, z1 = box
    out[x0:x1, y0:y1, z0:z1] = cropped
    return out
