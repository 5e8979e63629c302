"""Training-time Dice metrics for the BraTS regions, stateful Keras metrics on ``keras.ops``.

Regions (internal labels 0 background, 1 NCR/NET, 2 edema, 3 ET): WT = {1, 2, 3},
TC = {1, 3}, ET = {3}.  Predictions are made hard before counting: the argmax class for a
softmax head (``output: classes``, ``y_pred (B, H, W, 4)``), ``p > 0.5`` per region for a
sigmoid head (``output: regions``, ``y_pred (B, H, W, 3)`` WT/TC/ET).  ``output: binary``
(2D slice data sets, ``y_pred (B, H, W, 2)`` softmax background/tumour, labels 0/1): the argmax
is 0/1, so "WT" (labels > 0) is the tumour; :func:`build_metrics` logs it as ``dice_tumour``
and ``dice_mean`` (its mean over that one region).  ``y_true`` is an integer
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
from braintseg.training.losses import N_CLASSES

logger = logging.getLogger(__name__)

OUTPUTS: tuple[str, ...] = ("classes", "regions", "binary")


def region_mask(labels: Any, region: int) -> Any:
    """Boolean mask ``(B, H, W)`` of region ``REGIONS[region]`` in integer labels 0..3."""
    if region == 0:  # WT = {1, 2, 3}
        return ops.logical_and(labels > 0, labels < N_CLASSES)
    if region == 1:  # TC = {1, 3}
        return ops.logical_or(ops.equal(labels, 1), ops.equal(labels, 3))
    return ops.equal(labels, 3)  # ET = {3}


def hard_regions(y_true: Any, y_pred: Any, output: str, regions: tuple[int, ...]) -> list:
    """Float32 masks ``(B, H, W)`` of targets and hard predictions for the given regions.

    Comparisons rather than one-hot/matmul keep this a cheap fused reduction on the GPU.

    Args:
        y_true: integer labels ``(B, H, W)`` (or ``(B, H, W, 1)``) 0..3.
        y_pred: probabilities ``(B, H, W, 4)`` (classes) or ``(B, H, W, 3)`` (regions).
        output: ``"classes"`` (argmax) or ``"regions"`` (threshold 0.5).
        regions: indices into ``REGIONS`` (0 WT, 1 TC, 2 ET).

    Returns:
        ``[(target, prediction), ...]`` per region, float32 ``(B, H, W)`` each.
    """
    labels = ops.convert_to_tensor(y_true)
    if len(labels.shape) == len(y_pred.shape):
        labels = ops.squeeze(labels, axis=-1)
    labels = ops.cast(labels, "int32")
    argmax = output in ("classes", "binary")
    cls = ops.cast(ops.argmax(y_pred, axis=-1), "int32") if argmax else None
    out = []
    for r in regions:
        target = ops.cast(region_mask(labels, r), "float32")
        if cls is not None:
            pred = ops.cast(region_mask(cls, r), "float32")
        else:
            pred = ops.cast(y_pred[..., r] > 0.5, "float32")
        out.append((target, pred))
    return out


def _dice(inter: Any, total: Any) -> Any:
    """``2 I / (|T| + |P|)``, and 1 where both volumes are empty."""
    safe = ops.where(total > 0, total, 1.0)
    return ops.where(total > 0, 2.0 * inter / safe, 1.0)


class _PooledDice(keras.metrics.Metric):
    """Accumulates per-region intersection and |T| + |P| (shape ``(len(regions),)``)."""

    def __init__(
        self, output: str = "classes", regions: tuple[int, ...] = (0, 1, 2), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; received {output!r}")
        self.output = output
        self._regions = tuple(regions)
        n = len(self._regions)
        state = {"shape": (n,), "initializer": "zeros", "dtype": "float32"}
        self.intersection = self.add_variable(name="intersection", **state)
        self.total = self.add_variable(name="total", **state)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Add one batch; ``sample_weight`` (``(B,)`` or ``(B, H, W)``) weights pixels."""
        w = None
        if sample_weight is not None:
            w = ops.cast(sample_weight, "float32")
            w = ops.reshape(w, (*w.shape, *([1] * (3 - len(w.shape)))))
        inters, totals = [], []
        for target, pred in hard_regions(y_true, y_pred, self.output, self._regions):
            if w is not None:
                target, pred = target * w, pred * w
            inters.append(ops.sum(target * pred))
            totals.append(ops.sum(target) + ops.sum(pred))
        self.intersection.assign_add(ops.stack(inters))
        self.total.assign_add(ops.stack(totals))

    def reset_state(self) -> None:
        self.intersection.assign(ops.zeros((len(self._regions),), "float32"))
        self.total.assign(ops.zeros((len(self._regions),), "float32"))

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
        super().__init__(
            output=output, regions=(REGIONS.index(region),), name=name or f"dice_{region}",
            **kwargs,
        )
        self.region = region

    def result(self) -> Any:
        return self._dices()[0]

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

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(regions=list(self._regions))
        return config


def build_metrics(model_cfg: ModelConfig) -> list[keras.metrics.Metric]:
    """``[dice_wt, dice_tc, dice_et, dice_mean]`` for the model's output type.

    With validation data Keras logs them as ``val_dice_wt`` … ``val_dice_mean``.
    """
    if model_cfg.output == "binary":  # one foreground: its Dice, also as dice_mean
        return [RegionDice("wt", output="binary", name="dice_tumour"),
                MeanRegionDice(output="binary", regions=(0,))]
    return [RegionDice(r, output=model_cfg.output) for r in REGIONS] + [
        MeanRegionDice(output=model_cfg.output)
    ]


def build_head_metrics(model_cfg: ModelConfig) -> list[keras.metrics.Metric]:
    """The head's metrics: accuracy (threshold 0.5, or argmax for ``tumour_type``) and, for
    ``tumour``, the ROC AUC; Keras logs them as ``classification_accuracy`` etc."""
    if model_cfg.classification_head == "tumour_type":
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
