"""A plain 2D U-Net baseline (``model.name: unet``) with the same levels and channels.

Layout for ``levels = L`` and ``start_channels = C``::

    input (H, W, 4) → GaussianNoise (training only)
    encoder level i = 0..L-1: ConvBlock C·2^i → skip_i → MaxPool 2×2
    bottleneck: ConvBlock C·2^L
    decoder level i = L-1..0: UpSampling2D ×2 → Conv 2×2, C·2^i → concat [skip_i, up]
                             → ConvBlock C·2^i
    head: Conv 1×1 → softmax over 4 classes or sigmoid over WT/TC/ET (float32)

ConvBlock = (Conv 3×3 without bias → norm → ReLU) twice, with SpatialDropout2D between the two
convolutions when ``dropout > 0``.  Only stock Keras layers, so no custom objects are needed to
load a saved model.
"""

from __future__ import annotations

import keras

from braintseg.config import ModelConfig
from braintseg.model.attention_unet import input_stem, output_head
from braintseg.model.blocks import make_norm


def _conv_block(
    x: keras.KerasTensor, filters: int, cfg: ModelConfig, name: str
) -> keras.KerasTensor:
    for j in (1, 2):
        if j == 2 and cfg.dropout > 0:
            x = keras.layers.SpatialDropout2D(cfg.dropout, name=f"{name}_dropout")(x)
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name=f"{name}_conv{j}"
        )(x)
        x = make_norm(cfg.norm, filters, name=f"{name}_norm{j}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{j}")(x)
    return x


def build_unet(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    """Build the plain U-Net baseline (see the module docstring).

    Args:
        cfg: model section of the config (levels, start_channels, norm, dropout, noise_stddev,
            output).  Checked by :func:`braintseg.model.build_model`.
        input_shape: ``(H, W, C)`` with H and W divisible by ``2 ** cfg.levels``.

    Returns:
        An uncompiled ``keras.Model``: ``(B, H, W, C)`` float16/float32 → float32
        ``(B, H, W, 4)`` softmax (classes) or ``(B, H, W, 3)`` sigmoid (regions).
    """
    inputs, x = input_stem(cfg, input_shape)
    skips = []
    for i in range(cfg.levels):
        x = _conv_block(x, cfg.start_channels * 2**i, cfg, f"enc{i}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = _conv_block(x, cfg.start_channels * 2**cfg.levels, cfg, "bottleneck")
    for i in reversed(range(cfg.levels)):
        ch = cfg.start_channels * 2**i
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{i}")(x)
        x = keras.layers.Conv2D(ch, 2, padding="same", name=f"up{i}_conv")(x)
        x = keras.layers.Concatenate(axis=-1, name=f"concat{i}")([skips[i], x])
        x = _conv_block(x, ch, cfg, f"dec{i}")
    return keras.Model(inputs, output_head(x, cfg.output, cfg.downsample), name="unet")
