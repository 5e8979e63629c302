"""The attention-guided 2D U-Net of the original method (``model.name: attention_unet``).

Layout for ``levels = L`` and ``start_channels = C`` (the original: L = 3, C = 64)::

    input (H, W, 4) → GaussianNoise (training only) → Conv 2×2, C
    encoder level i = 0..L-1 (channels C·2^i):
        ResidualUnit (identity shortcut) → skip_i
        Conv 2×2 stride 2, C·2^(i+1)                      (down-sampling, doubles channels)
    bottleneck: ResidualUnit, C·2^L (identity shortcut)
    decoder level i = L-1..0:
        UpSampling2D ×2 (nearest) → Conv 2×2, C·2^i → concat [skip_i, up] (2·C·2^i channels)
        → SqueezeExcite (ratio 8) → ResidualUnit C·2^i (1×1 conv shortcut, no bias)
    head: norm → PReLU → Conv 1×1 to 4 classes → softmax (float32)
          (``output: regions``: 3 channels WT/TC/ET → sigmoid, float32)

With the defaults and a ``(192, 152, 4)`` input this has 10,245,764 parameters, 10,239,108 of
them trainable (the 6,656 others are batch-norm moving statistics).  All convolutions use
"same" padding and a bias except the 1×1 shortcuts; PReLU slopes are per channel.
"""

from __future__ import annotations

import logging

import keras

from braintseg.config import ModelConfig
from braintseg.model.blocks import ResidualUnit, SqueezeExcite, make_norm

logger = logging.getLogger(__name__)

#: SE reduction ratio of the original
SE_RATIO = 8


def output_head(x: keras.KerasTensor, output: str, upsample: int = 1) -> keras.KerasTensor:
    """1×1 conv to the output channels, ``upsample``× bilinear upsampling of the logits
    (``model.downsample``), and a float32 softmax/sigmoid.

    Returns ``(B, H, W, 4)`` float32 softmax probabilities for ``output == "classes"``
    (background, NCR/NET, edema, ET), ``(B, H, W, 2)`` softmax (background, tumour) for
    ``output == "binary"``, or ``(B, H, W, 3)`` float32 sigmoids for WT/TC/ET.
    The activation is float32 even under a mixed-precision policy.
    """
    n_out, activation = {"classes": (4, "softmax"), "binary": (2, "softmax")}.get(
        output, (3, "sigmoid"))
    x = keras.layers.Conv2D(n_out, 1, padding="same", name="logits")(x)
    if upsample > 1:
        x = keras.layers.UpSampling2D(upsample, interpolation="bilinear", name="logits_up")(x)
    return keras.layers.Activation(activation, dtype="float32", name="probabilities")(x)


def input_stem(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> tuple:
    """The model input ``(H, W, C)`` (float16 or float32 data) and its noisy version, averaged
    over ``model.downsample``² pixel blocks when that is > 1 (the network then works on
    ``(H/d, W/d)``; :func:`output_head` brings its logits back to ``(H, W)``)."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if cfg.noise_stddev > 0:
        x = keras.layers.GaussianNoise(cfg.noise_stddev, name="input_noise")(x)
    if cfg.downsample > 1:
        x = keras.layers.AveragePooling2D(cfg.downsample, name="input_down")(x)
    return inputs, x


def build_attention_unet(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    """Build the attention-guided U-Net (see the module docstring for the layout).

    Args:
        cfg: model section of the config (levels, start_channels, norm, dropout, noise_stddev,
            output).  Checked by :func:`braintseg.model.build_model`.
        input_shape: ``(H, W, C)`` with H and W divisible by ``2 ** cfg.levels``.

    Returns:
        An uncompiled ``keras.Model`` mapping ``(B, H, W, C)`` float16/float32 images to float32
        probabilities ``(B, H, W, 4)`` (classes) or ``(B, H, W, 3)`` (regions).
    """
    inputs, x = input_stem(cfg, input_shape)
    unit = {"norm": cfg.norm, "dropout": cfg.dropout}
    x = keras.layers.Conv2D(cfg.start_channels, 2, padding="same", name="stem")(x)
    skips = []
    for i in range(cfg.levels):
        ch = cfg.start_channels * 2**i
        x = ResidualUnit(ch, name=f"enc{i}", **unit)(x)
        skips.append(x)
        x = keras.layers.Conv2D(2 * ch, 2, strides=2, padding="same", name=f"down{i}")(x)
    x = ResidualUnit(cfg.start_channels * 2**cfg.levels, name="bottleneck", **unit)(x)
    for i in reversed(range(cfg.levels)):
        ch = cfg.start_channels * 2**i
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{i}")(x)
        x = keras.layers.Conv2D(ch, 2, padding="same", name=f"up{i}_conv")(x)
        x = keras.layers.Concatenate(axis=-1, name=f"concat{i}")([skips[i], x])
        x = SqueezeExcite(SE_RATIO, name=f"se{i}")(x)
        x = ResidualUnit(ch, projection=True, name=f"dec{i}", **unit)(x)
    x = make_norm(cfg.norm, cfg.start_channels, name="head_norm")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="head_prelu")(x)
    outputs = output_head(x, cfg.output, cfg.downsample)
    return keras.Model(inputs, outputs, name="attention_unet")
