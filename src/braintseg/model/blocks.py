"""Building blocks of the attention-guided U-Net: normalisation choice, residual unit, SE block.

All tensors are channel-last ``(B, H, W, C)``.  The layers are registered Keras layers with
``get_config`` so ``keras.saving.load_model(path, safe_mode=True)`` rebuilds them; they use
``keras.layers`` / ``keras.ops`` only and run on the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
from keras import ops

logger = logging.getLogger(__name__)

NORMS: tuple[str, ...] = ("batch", "group", "instance")


def norm_groups(norm: str, channels: int) -> int | None:
    """Number of groups for ``norm`` over ``channels`` channels (None for batch norm).

    ``group``: ``min(8, C)`` when it divides ``C``, else the largest divisor of ``C`` below 8
    (GroupNormalization needs groups | C).  ``instance``: ``C`` (one group per channel).
    """
    if norm == "batch":
        return None
    if norm == "instance":
        return channels
    if norm == "group":
        return max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; received {norm!r}")


def make_norm(norm: str, channels: int, **kwargs: Any) -> keras.layers.Layer:
    """A normalisation layer over the last axis of a ``(B, H, W, channels)`` tensor.

    Args:
        norm: ``"batch"`` (BatchNormalization), ``"group"`` (GroupNormalization, see
            :func:`norm_groups`) or ``"instance"`` (GroupNormalization with one group per channel).
        channels: number of channels ``C`` of the input.
        **kwargs: passed to the layer (``name``, ``dtype``).
    """
    groups = norm_groups(norm, channels)
    if groups is None:
        return keras.layers.BatchNormalization(axis=-1, **kwargs)
    return keras.layers.GroupNormalization(groups=groups, axis=-1, **kwargs)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; received {value!r}")


@keras.saving.register_keras_serializable(package="braintseg")
class ResidualUnit(keras.layers.Layer):
    """Pre-activation residual unit: (norm → PReLU → Conv 3×3) twice, added to a shortcut.

    PReLU has one slope per channel, shared over space (``shared_axes=[1, 2]``).  The 3×3
    convolutions use "same" padding and a bias (as the original).  The shortcut is the identity
    (input channels must equal ``filters``) or, with ``projection=True``, a 1×1 convolution
    without bias.  With ``dropout > 0`` a SpatialDropout2D follows the first convolution
    (active only in training).

    Args:
        filters: output channels ``F`` (> 0).
        norm: ``"batch"``, ``"group"`` or ``"instance"``.
        dropout: SpatialDropout2D rate in ``[0, 1)``.
        projection: 1×1 conv shortcut (decoder) instead of the identity (encoder, bottleneck).

    Input ``(B, H, W, C)``; output ``(B, H, W, F)``, in the layer's compute dtype.
    """

    def __init__(
        self,
        filters: int,
        norm: str = "batch",
        dropout: float = 0.0,
        projection: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"filters must be a positive int; received {filters!r}")
        _check_choice("norm", norm, NORMS)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1); received {dropout!r}")
        self.filters = filters
        self.norm = norm
        self.dropout = float(dropout)
        self.projection = bool(projection)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])
        if not self.projection and channels != self.filters:
            raise ValueError(
                f"ResidualUnit with an identity shortcut needs {self.filters} input channels; "
                f"received input shape {tuple(input_shape)}"
            )
        dt = self.dtype_policy
        conv = {"kernel_size": 3, "padding": "same", "dtype": dt}
        self.norm1 = make_norm(self.norm, channels, dtype=dt, name="norm1")
        self.act1 = keras.layers.PReLU(shared_axes=[1, 2], dtype=dt, name="prelu1")
        self.conv1 = keras.layers.Conv2D(self.filters, name="conv1", **conv)
        self.norm2 = make_norm(self.norm, self.filters, dtype=dt, name="norm2")
        self.act2 = keras.layers.PReLU(shared_axes=[1, 2], dtype=dt, name="prelu2")
        self.conv2 = keras.layers.Conv2D(self.filters, name="conv2", **conv)
        self.drop = (
            keras.layers.SpatialDropout2D(self.dropout, dtype=dt, name="dropout")
            if self.dropout > 0
            else None
        )
        self.shortcut = (
            keras.layers.Conv2D(self.filters, 1, use_bias=False, dtype=dt, name="shortcut")
            if self.projection
            else None
        )
        shape = tuple(input_shape)
        out_shape = (*shape[:-1], self.filters)
        for layer, s in ((self.norm1, shape), (self.act1, shape), (self.conv1, shape),
                         (self.norm2, out_shape), (self.act2, out_shape), (self.conv2, out_shape)):
            layer.build(s)
        if self.shortcut is not None:
            self.shortcut.build(shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = self.conv1(self.act1(self.norm1(inputs, training=training)))
        if self.drop is not None:
            x = self.drop(x, training=training)
        x = self.conv2(self.act2(self.norm2(x, training=training)))
        short = inputs if self.shortcut is None else self.shortcut(inputs)
        return ops.add(short, x)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(filters=self.filters, norm=self.norm, dropout=self.dropout,
                      projection=self.projection)
        return config


@keras.saving.register_keras_serializable(package="braintseg")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-excitation channel attention (Hu et al., arXiv:1709.01507).

    Global average pool over ``(H, W)`` → Dense ``max(1, C // ratio)`` ReLU → Dense ``C``
    sigmoid → multiply the input channel-wise.  Both dense layers have no bias and a He-normal
    initialiser, as the original.

    Args:
        ratio: channel reduction ratio (> 0; the original uses 8).

    Input and output ``(B, H, W, C)``.
    """

    def __init__(self, ratio: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < 1:
            raise ValueError(f"ratio must be a positive int; received {ratio!r}")
        self.ratio = ratio

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])
        dense = {"use_bias": False, "kernel_initializer": "he_normal", "dtype": self.dtype_policy}
        self.squeeze = keras.layers.Dense(
            max(1, channels // self.ratio), activation="relu", name="squeeze", **dense
        )
        self.excite = keras.layers.Dense(channels, activation="sigmoid", name="excite", **dense)
        self.squeeze.build((input_shape[0], 1, 1, channels))
        self.excite.build((input_shape[0], 1, 1, max(1, channels // self.ratio)))

    def call(self, inputs: Any) -> Any:
        scale = ops.mean(inputs, axis=(1, 2), keepdims=True)
        return ops.multiply(inputs, self.excite(self.squeeze(scale)))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(ratio=self.ratio)
        return config
