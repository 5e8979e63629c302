"""Training-time Dice metrics for the BraTS regions, stateful Keras metrics on ``keras.ops``.

Regions (internal labels 0 background, 1 NCR/NET, 2 edema, 3 ET): WT = {1, 2, 3},
TC = {1, 3}, ET = {3}.  Predictions are made hard before counting: the argmax class for a
softmax head (``output: classes``, ``y_pred (B, H, W, 4)``), ``p > 0.5`` per region for a
sigmoid head (``output: regions``, ``y_pred (B, H, W, 3)`` WT/TC/ET).  ``y_true`` is an integer
label map ``(B, H, W)``.

The metrics accumulate the intersection and the two volumes over every batch of an epoch, so
the epoch value is the Dice of the whole validation set pooled as one volume, **not** the mean
of per-batch (or per-case) Dices.  When a region is absent from both the targets and the
predictions of the whole epoch the Dice is 1.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
from keras import ops

from braintseg.config import REGIONS, ModelConfig
from braintseg.losses import N_CLASSES, labels_to_onehot, onehot_to_regions

logger = logging.getLogger(__name__)

OUTPUTS: tuple[str, ...] = ("classes", "regions")


def hard_regions(y_true: Any, y_pred: Any, output: str) -> tuple[Any, Any]:
    """Binary float32 region masks ``(B, H, W, 3)`` (WT, TC, ET) of targets and predictions.

    Args:
        y_true: integer labels ``(B, H, W)`` 0..3.
        y_pred: probabilities ``(B, H, W, 4)`` (classes) or ``(B, H, W, 3)`` (regions).
        output: ``"classes"`` (argmax) or ``"regions"`` (threshold 0.5).
    """
    ndim = len(y_pred.shape)
    target = onehot_to_regions(labels_to_onehot(y_true, ndim))
    if output == "classes":
        cls = ops.argmax(y_pred, axis=-1)
        pred = onehot_to_regions(ops.one_hot(cls, N_CLASSES, dtype="float32"))
    else:
        pred = ops.cast(ops.cast(y_pred, "float32") > 0.5, "float32")
    return target, pred


def _dice(inter: Any, total: Any) -> Any:
    """``2 I / (|T| + |P|)``, and 1 where both volumes are empty."""
    safe = ops.where(total > 0, total, 1.0)
    return ops.where(total > 0, 2.0 * inter / safe, 1.0)


class _PooledDice(keras.metrics.Metric):
    """Accumulates per-region intersection and |T| + |P| (shape (3,)) over batches."""

    def __init__(self, output: str = "classes", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; received {output!r}")
        self.output = output
        self.intersection = self.add_variable(
            shape=(len(REGIONS),), initializer="zeros", dtype="float32", name="intersection"
        )
        self.total = self.add_variable(
            shape=(len(REGIONS),), initializer="zeros", dtype="float32", name="total"
        )

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Add one batch; ``sample_weight`` (``(B,)`` or ``(B, H, W)``) weights pixels."""
        target, pred = hard_regions(y_true, y_pred, self.output)
        if sample_weight is not None:
            w = ops.cast(sample_weight, "float32")
            w = ops.reshape(w, (*w.shape, *([1] * (len(target.shape) - len(w.shape)))))
            target, pred = target * w, pred * w
        axes = tuple(range(len(target.shape) - 1))
        self.intersection.assign_add(ops.sum(target * pred, axis=axes))
        self.total.assign_add(ops.sum(target, axis=axes) + ops.sum(pred, axis=axes))

    def reset_state(self) -> None:
        self.intersection.assign(ops.zeros((len(REGIONS),), "float32"))
        self.total.assign(ops.zeros((len(REGIONS),), "float32"))

    def _dices(self) -> Any:
        """Per-region pooled Dice ``(3,)`` (variables read as tensors: JAX-safe)."""
        inter = ops.convert_to_tensor(self.intersection.value)
        return _dice(inter, ops.convert_to_tensor(self.total.value))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(output=self.output)
        return config


@keras.saving.register_keras_serializable(package="braintseg")
class RegionDice(_PooledDice):
    """Pooled hard Dice of one region over an epoch, logged as ``dice_wt``/``dice_tc``/``dice_et``.

    The epoch value is ``2 Σ|T∩P| / (Σ|T| + Σ|P|)`` over every pixel seen since the last
    reset (the Dice of the whole validation set, not a mean of batch Dices); 1 when the region
    is absent from targets and predictions alike.

    Args:
        region: ``"wt"``, ``"tc"`` or ``"et"``.
        output: ``"classes"`` (softmax ``(B, H, W, 4)``) or ``"regions"`` (sigmoid
            ``(B, H, W, 3)``).
        name: default ``f"dice_{region}"``.
    """

    def __init__(
        self, region: str = "wt", output: str = "classes", name: str | None = None, **kwargs: Any
    ) -> None:
        if region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}; received {region!r}")
        super().__init__(output=output, name=name or f"dice_{region}", **kwargs)
        self.region = region
        self._index = REGIONS.index(region)

    def result(self) -> Any:
        return self._dices()[self._index]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(region=self.region)
        return config


@keras.saving.register_keras_serializable(package="braintseg")
class MeanRegionDice(_PooledDice):
    """Mean over WT, TC, ET of the pooled epoch Dices (see :class:`RegionDice`), ``dice_mean``.

    This is the quantity ``train.monitor: val_dice_mean`` selects the best model by.

    Args:
        output: ``"classes"`` or ``"regions"``.
        name: default ``"dice_mean"``.
    """

    def __init__(
        self, output: str = "classes", name: str = "dice_mean", **kwargs: Any
    ) -> None:
        super().__init__(output=output, name=name, **kwargs)

    def result(self) -> Any:
        return ops.mean(self._dices())


def build_metrics(model_cfg: ModelConfig) -> list[keras.metrics.Metric]:
    """``[dice_wt, dice_tc, dice_et, dice_mean]`` for the model's output type.

    With validation data Keras logs them as ``val_dice_wt`` … ``val_dice_mean``.
    """
    return [RegionDice(r, output=model_cfg.output) for r in REGIONS] + [
        MeanRegionDice(output=model_cfg.output)
    ]
