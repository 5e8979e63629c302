"""Networks: :func:`build_model` turns the ``model`` config section into a ``keras.Model``.

Importing this package imports Keras; :mod:`braintseg.cli` imports it only inside commands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras

from braintseg.config import ModelConfig
from braintseg.errors import ConfigError
from braintseg.model.attention_unet import build_attention_unet
from braintseg.model.blocks import NORMS, ResidualUnit, SqueezeExcite
from braintseg.model.head import BOTTLENECK, HEADS, add_classification_head
from braintseg.model.unet import build_unet

__all__ = ["MODELS", "ResidualUnit", "SqueezeExcite", "build_model"]

logger = logging.getLogger(__name__)

#: model.name → builder(cfg, input_shape)
MODELS: dict[str, Callable[[ModelConfig, tuple[int, int, int]], keras.Model]] = {
    "attention_unet": build_attention_unet,
    "unet": build_unet,
}
OUTPUTS: tuple[str, ...] = ("classes", "regions", "binary")


def _check(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if cfg.name not in MODELS:
        raise ConfigError(
            f"model.name must be one of {', '.join(sorted(MODELS))}; received {cfg.name!r}"
        )
    if cfg.norm not in NORMS:
        raise ConfigError(f"model.norm must be one of {', '.join(NORMS)}; received {cfg.norm!r}")
    if cfg.output not in OUTPUTS:
        raise ConfigError(
            f"model.output must be one of {', '.join(OUTPUTS)}; received {cfg.output!r}"
        )
    if cfg.classification_head not in HEADS:
        raise ConfigError(f"model.classification_head must be one of {', '.join(HEADS)}; "
                          f"received {cfg.classification_head!r}")
    if cfg.levels < 1 or cfg.start_channels < 1:
        raise ConfigError(
            "model.levels and model.start_channels must be >= 1; "
            f"received {cfg.levels} and {cfg.start_channels}"
        )
    if not 0.0 <= cfg.dropout < 1.0 or cfg.noise_stddev < 0:
        raise ConfigError(
            "model.dropout must be in [0, 1) and model.noise_stddev >= 0; "
            f"received {cfg.dropout} and {cfg.noise_stddev}"
        )
    if cfg.downsample not in (1, 2, 4):
        raise ConfigError(f"model.downsample must be 1, 2 or 4; received {cfg.downsample!r}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input shape must be (H, W, C) with positive sizes; received {shape}")
    factor = 2**cfg.levels * cfg.downsample
    if shape[0] % factor or shape[1] % factor:
        raise ConfigError(
            f"input shape {shape}: height and width must be divisible by 2**model.levels "
            f"x model.downsample = {factor} (model.levels={cfg.levels}, model.downsample="
            f"{cfg.downsample}); received {shape[0]} x {shape[1]} (adjust data.crop)"
        )
    return shape  # type: ignore[return-value]


def build_model(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    """Build the network named by ``cfg.name`` for ``(H, W, C)`` slices.

    Args:
        cfg: the ``model`` config section.
        input_shape: ``(H, W, C)``; H and W must be divisible by ``2 ** cfg.levels`` times
            ``cfg.downsample``.  C is the
            number of modalities (FLAIR, T1, T1ce, T2 → 4).

    Returns:
        An uncompiled ``keras.Model``.  Input float16 or float32 ``(B, H, W, C)`` (cast to the
        compute dtype inside, so mixed precision works); output float32 probabilities
        ``(B, H, W, 4)`` softmax over internal labels 0 background, 1 NCR/NET, 2 edema, 3 ET
        (``output: classes``) or ``(B, H, W, 3)`` sigmoids for WT, TC, ET
        (``output: regions``), or ``(B, H, W, 2)`` softmax 0 background, 1 tumour
        (``output: binary``, 2D slice data sets).  With ``classification_head`` other than
        ``none``: a dict ``{"probabilities": that output, "classification": (B, 1) sigmoid or
        (B, 3) softmax}`` (:mod:`braintseg.model.head`).

    Raises:
        ConfigError: unknown model name / norm / output, or a shape not divisible by
            ``2 ** levels``; the message names the key or shape and what was expected.
    """
    shape = _check(cfg, input_shape)
    model = MODELS[cfg.name](cfg, shape)
    model = add_classification_head(model, cfg.classification_head, BOTTLENECK[cfg.name])
    logger.debug("built %s for %s: %d parameters", cfg.name, shape, model.count_params())
    return model
