"""Slice-wise prediction of a cropped volume, flips (TTA) and averaging over runs.

Shapes: a case's images are ``(X', Y', Z', C)`` on the crop box; a run's view slices them along
``VIEW_AXIS[view]`` into ``(S, H, W, C)``; the network returns ``(S, H, W, K)`` probabilities
(K = 4 softmax classes 0 background, 1 NCR/NET, 2 edema, 3 ET; or K = 3 sigmoids WT, TC, ET),
which are moved back to ``(X', Y', Z', K)`` and summed over runs and flips.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.data.preprocess import VIEW_AXIS

logger = logging.getLogger(__name__)

#: the flips averaged by TTA: the group {identity, flip H, flip W, flip H and W}, so the
#: averaged prediction is exactly equivariant to flipping its input along H or W
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (1, 2))


def flip_averaged(model: Any) -> Any:
    """A ``keras.Model`` averaging ``model`` over :data:`TTA_FLIPS` in one compiled call.

    Input and output ``(B, H, W, ·)`` like ``model``; each flipped input's prediction is
    flipped back before the mean, all on the device (weights shared, nothing copied).
    """
    import keras

    def flip(x: Any, axes: tuple[int, ...]) -> Any:
        for axis in axes:
            x = keras.ops.flip(x, axis=axis)
        return x

    inp = keras.Input(shape=model.input_shape[1:], name="image")
    outs = []
    for axes in TTA_FLIPS:
        x = keras.layers.Lambda(flip, arguments={"axes": axes})(inp) if axes else inp
        y = model(x)
        outs.append(keras.layers.Lambda(flip, arguments={"axes": axes})(y) if axes else y)
    return keras.Model(inp, keras.layers.Average(dtype="float32")(outs), name="tta")


class SlicePredictor:
    """One loaded model with a constant batch shape (one compiled predict function).

    Args:
        model: a ``keras.Model`` mapping ``(B, H, W, C)`` float16 to ``(B, H, W, K)`` float32.
        view: the run's view (slicing axis of ``(X', Y', Z')``).
        batch_size: the largest number of network inputs per call (with ``tta``, slices per
            call = ``batch_size // 4``, each predicted with its 4 flips); the batch actually
            used is the smallest size that needs the same number of batches, and the last batch
            is zero-padded to it, so every call has the same shape (no recompilation).
        tta: average over the flips of H and W (:data:`TTA_FLIPS`) inside the compiled call.
    """

    def __init__(self, model: Any, view: str, batch_size: int, tta: bool = False) -> None:
        self.model = flip_averaged(model) if tta else model
        self.view, self.tta = view, tta
        self.batch_size = max(1, batch_size // len(TTA_FLIPS)) if tta else batch_size
        self.axis = VIEW_AXIS[view]

    def predict_slices(self, slices: NDArray[np.float16]) -> NDArray[np.float32]:
        """``(S, H, W, C)`` float16 → ``(S, H, W, K)`` float32 probabilities."""
        n = slices.shape[0]
        n_batches = math.ceil(n / self.batch_size)
        size = math.ceil(n / n_batches)
        out = None
        for b in range(n_batches):
            chunk = slices[b * size:(b + 1) * size]
            if chunk.shape[0] < size:
                pad = np.zeros((size - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            probs = np.asarray(self.model.predict_on_batch(chunk))
            if out is None:
                out = np.empty((n, *probs.shape[1:]), np.float32)
            stop = min((b + 1) * size, n)
            out[b * size:stop] = probs[: stop - b * size]
        assert out is not None  # noqa: S101 - n >= 1
        return out

    def predict_volume(self, images: NDArray[np.float16]) -> NDArray[np.float32]:
        """``(X', Y', Z', C)`` → ``(X', Y', Z', K)`` float32 (a strided view of the slices)."""
        slices = np.ascontiguousarray(np.moveaxis(images, self.axis, 0), np.float16)
        return np.moveaxis(self.predict_slices(slices), 0, self.axis)


def ensemble_volume(predictors: list[SlicePredictor],
                    images: NDArray[np.float16]) -> NDArray[np.float32]:
    """Mean of every predictor's ``(X', Y', Z', K)`` probabilities (views and folds mixed).

    Returns a C-contiguous float32 array.
    """
    total = np.ascontiguousarray(predictors[0].predict_volume(images))
    for predictor in predictors[1:]:
        total += predictor.predict_volume(images)
    if len(predictors) > 1:
        total /= len(predictors)
    return total


def probabilities_to_labels(probs: NDArray[np.floating], output: str) -> NDArray[np.uint8]:
    """``(..., K)`` probabilities → internal labels ``(...)`` uint8 {0,1,2,3}.

    ``classes``: argmax over 4 classes.  ``regions`` (WT, TC, ET sigmoids): ET > 0.5 → 3,
    else TC > 0.5 → 1, else WT > 0.5 → 2, else 0.
    """
    if output == "classes":
        return np.argmax(probs, axis=-1).astype(np.uint8)
    wt, tc, et = (probs[..., i] > 0.5 for i in range(3))
    labels = np.zeros(probs.shape[:-1], np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 3
    return labels


def uncrop_probabilities(probs: NDArray[np.floating], box: tuple[int, ...],
                         shape: tuple[int, int, int], output: str) -> NDArray[np.float32]:
    """Place ``(X', Y', Z', K)`` into the source grid ``(X, Y, Z, K)`` float32.

    Outside the crop box: class 0 has probability 1 (``classes``), all regions 0 (``regions``).
    """
    full = np.zeros((*shape, probs.shape[-1]), np.float32)
    if output == "classes":
        full[..., 0] = 1.0
    x0, x1, y0, y1, z0, z1 = box
    full[x0:x1, y0:y1, z0:z1] = probs
    return full
