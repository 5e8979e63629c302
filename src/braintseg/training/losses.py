"""Training losses on integer label maps, written with ``keras.ops`` only (any Keras backend).

Conventions:
    ``y_true``: integer label map ``(B, H, W)`` (uint8/int32; a trailing axis of size 1 is also
    accepted) in the internal convention 0 background, 1 NCR/NET, 2 edema, 3 ET.  One-hot and
    region masks are made inside the loss; labels outside 0..3 count as no class at all.
    ``y_pred``: float32 probabilities ``(B, H, W, 4)`` (softmax, ``output: classes``) or
    ``(B, H, W, 3)`` (sigmoids WT/TC/ET, ``output: regions``).
    Regions: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
from keras import ops

from braintseg.config import ModelConfig, TrainConfig
from braintseg.errors import ConfigError
from braintseg.training.distribute import batch_mean, batch_sum

logger = logging.getLogger(__name__)

N_CLASSES = 4
#: (4 classes, 3 regions): REGION_MATRIX[c, r] = 1 when class c belongs to region r (WT, TC, ET)
REGION_MATRIX: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0),  # background
    (1.0, 1.0, 0.0),  # NCR/NET: WT, TC
    (1.0, 0.0, 0.0),  # edema: WT
    (1.0, 1.0, 1.0),  # ET: WT, TC, ET
)


def labels_to_onehot(y_true: Any, ndim_pred: int = 4, n_classes: int = N_CLASSES) -> Any:
    """Integer labels ``(B, H, W)`` (or ``(B, H, W, 1)``) → float32 one-hot
    ``(B, H, W, n_classes)`` (4 BraTS classes; 2 for ``output: binary``)."""
    labels = ops.convert_to_tensor(y_true)
    if len(labels.shape) == ndim_pred:
        labels = ops.squeeze(labels, axis=-1)
    return ops.one_hot(ops.cast(labels, "int32"), n_classes, dtype="float32")


def onehot_to_regions(onehot: Any) -> Any:
    """One-hot classes ``(..., 4)`` → float32 region masks ``(..., 3)`` WT, TC, ET."""
    return ops.matmul(onehot, ops.convert_to_tensor(REGION_MATRIX, dtype="float32"))


def generalized_dice(onehot: Any, probs: Any, epsilon: float = 1e-7) -> Any:
    """Generalised Dice score (Sudre et al. 2017, arXiv:1707.03237) over a whole batch.

    ``GD = 2 Σ_c w_c Σ r_c p_c / Σ_c w_c Σ (r_c + p_c)``, ``w_c = 1 / (Σ r_c)²``, sums over
    all pixels of the batch.  Sums are taken as means (fractions of the batch's pixels); the
    ratio is unchanged by that common scale, but the weights stay in float32 range.  A class
    absent from the batch (``Σ r_c = 0``, where the weight would be infinite) gets the largest
    weight of the present classes, as MONAI's GeneralizedDiceLoss does, so predicting it is
    still penalised but cannot swamp the score.

    Args:
        onehot: float32 one-hot targets ``(B, H, W, K)``.
        probs: float32 probabilities ``(B, H, W, K)``.
        epsilon: guards the denominator.

    Returns:
        Scalar float32 in ``[0, 1]``.
    """
    onehot = ops.convert_to_tensor(onehot, dtype="float32")
    probs = ops.convert_to_tensor(probs, dtype="float32")
    axes = tuple(range(len(onehot.shape) - 1))
    ref = batch_mean(onehot, axes)  # the global batch's means, also split over replicas
    pred = batch_mean(probs, axes)
    inter = batch_mean(onehot * probs, axes)
    present = ref > 0
    weights = ops.where(present, 1.0 / ops.maximum(ops.square(ref), epsilon**2), 0.0)
    weights = ops.where(present, weights, ops.max(weights))
    num = 2.0 * ops.sum(weights * inter)
    den = ops.sum(weights * (ref + pred))
    return num / ops.maximum(den, epsilon)


def _check_number(name: str, value: Any, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"{name} must be a number >= {low}; received {value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="braintseg")
class GeneralizedDiceCE(keras.losses.Loss):
    """``(1 − generalised Dice) + ce_weight × categorical cross-entropy`` (the original's loss).

    The Dice term is one number per batch (see :func:`generalized_dice`); the cross-entropy is
    per pixel.  ``call`` returns ``(B, H, W)`` = Dice term + ce_weight × CE, so the default
    mean reduction gives ``1 − GD + ce_weight × mean CE``.

    Args:
        ce_weight: weight of the cross-entropy (>= 0; the original: 1.25).
        epsilon: clip of the probabilities in the log and Dice denominator guard (> 0).

    Inputs: ``y_true`` int labels ``(B, H, W)`` 0..3; ``y_pred`` float32 softmax ``(B, H, W, 4)``.
    """

    def __init__(
        self, ce_weight: float = 1.25, epsilon: float = 1e-7, name: str = "gdl_ce", **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.ce_weight = _check_number("ce_weight", ce_weight)
        self.epsilon = _check_number("epsilon", epsilon)
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0; received {epsilon!r}")

    def call(self, y_true: Any, y_pred: Any) -> Any:
        probs = ops.cast(y_pred, "float32")
        onehot = labels_to_onehot(y_true, len(probs.shape), int(probs.shape[-1]))
        dice_loss = 1.0 - generalized_dice(onehot, probs, self.epsilon)
        clipped = ops.clip(probs, self.epsilon, 1.0 - self.epsilon)
        ce = -ops.sum(onehot * ops.log(clipped), axis=-1)
        return dice_loss + self.ce_weight * ce

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(ce_weight=self.ce_weight, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="braintseg")
class DiceCE(keras.losses.Loss):
    """``(1 − mean soft Dice of the foreground classes) + ce_weight × cross-entropy``.

    The soft Dice of class c over the whole batch: ``(2 Σ r_c p_c + s) / (Σ r_c + Σ p_c + s)``
    (sums in pixels, ``s = smooth``), averaged over the classes 1..K−1 (background left out).
    With a 2-class softmax (``output: binary``) this is the tumour Dice + binary cross-entropy
    (the 2-class categorical CE equals the BCE of the tumour probability).

    Args:
        ce_weight: weight of the cross-entropy (>= 0).
        smooth: added to numerator and denominator (> 0; default 1 pixel).
        epsilon: clip of the probabilities in the log (> 0).

    Inputs: ``y_true`` int labels ``(B, H, W)``; ``y_pred`` float32 softmax ``(B, H, W, K)``.
    """

    def __init__(self, ce_weight: float = 1.0, smooth: float = 1.0, epsilon: float = 1e-7,
                 name: str = "dice_ce", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.ce_weight = _check_number("ce_weight", ce_weight)
        self.smooth = _check_number("smooth", smooth)
        self.epsilon = _check_number("epsilon", epsilon)
        if self.smooth <= 0 or self.epsilon <= 0:
            raise ValueError(f"smooth and epsilon must be > 0; received {smooth!r}, {epsilon!r}")

    def call(self, y_true: Any, y_pred: Any) -> Any:
        probs = ops.cast(y_pred, "float32")
        onehot = labels_to_onehot(y_true, len(probs.shape), int(probs.shape[-1]))
        axes = tuple(range(len(probs.shape) - 1))
        inter = batch_sum(onehot * probs, axes)[1:]
        total = batch_sum(onehot, axes)[1:] + batch_sum(probs, axes)[1:]
        dice = (2.0 * inter + self.smooth) / (total + self.smooth)
        clipped = ops.clip(probs, self.epsilon, 1.0 - self.epsilon)
        ce = -ops.sum(onehot * ops.log(clipped), axis=-1)
        return (1.0 - ops.mean(dice)) + self.ce_weight * ce

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(ce_weight=self.ce_weight, smooth=self.smooth, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="braintseg")
class RegionDiceLoss(keras.losses.Loss):
    """Soft Dice loss on the BraTS regions WT (1,2,3), TC (1,3), ET (3) for sigmoid outputs.

    Per region r, over the whole batch: ``D_r = (2 Σ p t + smooth) / (Σ p + Σ t + smooth)``
    (sums in pixels); the loss is ``1 − mean_r D_r``, a scalar.  ``smooth`` keeps a region
    that is absent from the batch finite: it scores 1 when nothing is predicted and decays as
    predicted mass grows.

    Args:
        smooth: added to numerator and denominator (> 0; default 1 pixel).

    Inputs: ``y_true`` int labels ``(B, H, W)`` 0..3; ``y_pred`` float32 sigmoids
    ``(B, H, W, 3)`` in the order WT, TC, ET.
    """

    def __init__(self, smooth: float = 1.0, name: str = "region_dice", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.smooth = _check_number("smooth", smooth)
        if self.smooth <= 0:
            raise ValueError(f"smooth must be > 0; received {smooth!r}")

    def call(self, y_true: Any, y_pred: Any) -> Any:
        probs = ops.cast(y_pred, "float32")
        target = onehot_to_regions(labels_to_onehot(y_true, len(probs.shape)))
        axes = tuple(range(len(probs.shape) - 1))
        inter = batch_sum(target * probs, axes)  # the global batch's sums
        total = batch_sum(target, axes) + batch_sum(probs, axes)
        dice = (2.0 * inter + self.smooth) / (total + self.smooth)
        return 1.0 - ops.mean(dice)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(smooth=self.smooth)
        return config


def build_loss(train_cfg: TrainConfig, model_cfg: ModelConfig) -> keras.losses.Loss:
    """The segmentation loss for a model config: ``train.loss`` :class:`GeneralizedDiceCE`
    (``gdl_ce``) or :class:`DiceCE` (``dice_ce``), ``ce_weight`` from ``train.ce_weight``, for
    ``output: classes`` or ``binary``; :class:`RegionDiceLoss` for ``regions``."""
    if model_cfg.output in ("classes", "binary"):
        if train_cfg.ce_weight < 0:
            raise ConfigError(f"train.ce_weight must be >= 0; received {train_cfg.ce_weight}")
        if train_cfg.loss == "dice_ce":
            return DiceCE(ce_weight=train_cfg.ce_weight)
        return GeneralizedDiceCE(ce_weight=train_cfg.ce_weight)
    if model_cfg.output == "regions":
        return RegionDiceLoss()
    raise ConfigError(f"model.output must be classes or regions; received {model_cfg.output!r}")


def build_head_loss(model_cfg: ModelConfig) -> keras.losses.Loss:
    """The classification head's loss: binary cross-entropy (``tumour``, targets ``(B, 1)``
    0/1) or sparse categorical cross-entropy (``tumour_type``, targets ``(B,)`` 0..2)."""
    if model_cfg.classification_head == "tumour_type":
        return keras.losses.SparseCategoricalCrossentropy(name="head_ce")
    return keras.losses.BinaryCrossentropy(name="head_bce")
