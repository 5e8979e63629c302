"""The plain U-Net baseline: size from an independent count, outputs, save/load, fit, bad input."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from braintseg.config import ModelConfig, TrainConfig
from braintseg.errors import ConfigError
from braintseg.model import build_model
from braintseg.training.losses import build_loss
from braintseg.training.metrics import build_metrics

TINY = ModelConfig(name="unet", start_channels=4, levels=2)


def _images(n=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 32, 32, 4)).astype(np.float32)


def _expected_params(levels: int, start: int, in_ch: int = 4, n_out: int = 4) -> tuple[int, int]:
    """(total, non-trainable) parameters of the baseline with batch norm, counted by hand."""

    def block(cin: int, f: int) -> int:  # 2 x (conv 3x3 without bias + BN with 4 params/ch)
        return 9 * cin * f + 4 * f + 9 * f * f + 4 * f

    total, bn_channels, cin = 0, 0, in_ch
    for i in range(levels):
        total += block(cin, start * 2**i)
        bn_channels += 2 * start * 2**i
        cin = start * 2**i
    total += block(cin, start * 2**levels)
    bn_channels += 2 * start * 2**levels
    for i in reversed(range(levels)):
        ch = start * 2**i
        total += 4 * (2 * ch) * ch + ch  # up-conv 2x2 with bias
        total += block(2 * ch, ch)
        bn_channels += 2 * ch
    total += start * n_out + n_out  # 1x1 head
    return total, 2 * bn_channels


@pytest.mark.parametrize(("levels", "start"), [(2, 4), (3, 64)])
def test_parameter_count_matches_an_independent_count(levels, start):
    model = build_model(dataclasses.replace(TINY, levels=levels, start_channels=start),
                        (32, 32, 4))
    total, frozen = _expected_params(levels, start)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert model.count_params() == total
    assert trainable == total - frozen


def test_outputs_and_dropout():
    model = build_model(dataclasses.replace(TINY, dropout=0.2), (32, 32, 4))
    assert model.get_layer("enc0_dropout").rate == pytest.approx(0.2)
    probs = keras.ops.convert_to_numpy(model(_images(3).astype(np.float16)))
    assert probs.shape == (3, 32, 32, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    regions = build_model(dataclasses.replace(TINY, output="regions"), (32, 32, 4))
    assert regions.output.shape == (None, 32, 32, 3)


def test_uses_only_stock_keras_layers():
    model = build_model(TINY, (32, 32, 4))
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_save_and_safe_load_give_identical_predictions(tmp_path, norm):
    cfg = dataclasses.replace(TINY, norm=norm)
    model = build_model(cfg, (32, 32, 4))
    x = _images()
    model.compile(optimizer="sgd", loss=build_loss(TrainConfig(), cfg))
    model.fit(x, np.ones((2, 32, 32), np.uint8), epochs=1, verbose=0)
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("enc0_norm1")) is type(model.get_layer("enc0_norm1"))
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_train_step_with_integer_labels_on_region_output():
    keras.utils.set_random_seed(0)
    cfg = dataclasses.replace(TINY, output="regions")
    model = build_model(cfg, (32, 32, 4))
    model.compile(optimizer="adam", loss=build_loss(TrainConfig(), cfg),
                  metrics=build_metrics(cfg))
    y = np.random.default_rng(2).integers(0, 4, size=(4, 32, 32)).astype(np.int32)
    history = model.fit(_images(4), y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert 0.0 < history.history["loss"][0] < 1.0  # soft Dice loss lies in (0, 1)
    assert 0.0 <= history.history["dice_mean"][0] <= 1.0


def test_shape_not_divisible_is_a_config_error():
    with pytest.raises(ConfigError, match=r"input shape \(32, 30, 4\).*received 32 x 30"):
        build_model(TINY, (32, 30, 4))


@pytest.mark.parametrize("name", ["unet", "attention_unet"])
def test_downsample_works_at_a_lower_resolution_and_answers_at_the_input_size(name):
    cfg = dataclasses.replace(TINY, name=name, output="binary")
    full = build_model(cfg, (32, 32, 4))
    half = build_model(dataclasses.replace(cfg, downsample=2), (32, 32, 4))
    assert half.count_params() == full.count_params()  # same network, on 16 x 16 inside
    assert half.get_layer("input_down").output.shape == (None, 16, 16, 4)
    probs = keras.ops.convert_to_numpy(half(_images(2)))
    assert probs.shape == (2, 32, 32, 2)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    # on an image constant over 2 x 2 blocks, the logits inside are what the same weights
    # give on the small image; the output is their bilinear upsampling
    small = build_model(cfg, (16, 16, 4))
    small.set_weights(half.get_weights())
    x16 = _images(2)[:, :16, :16]
    x32 = np.repeat(np.repeat(x16, 2, axis=1), 2, axis=2)
    inner = keras.Model(half.input, half.get_layer("logits").output)
    small_logits = keras.Model(small.input, small.get_layer("logits").output)
    want = keras.ops.convert_to_numpy(small_logits(x16))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inner(x32)), want, rtol=1e-4, atol=1e-4)
    assert half.get_layer("logits_up").output.shape == (None, 32, 32, 2)

def test_downsample_is_checked():
    with pytest.raises(ConfigError, match="model.downsample must be 1, 2 or 4; received 3"):
        build_model(dataclasses.replace(TINY, downsample=3), (96, 96, 4))
    with pytest.raises(ConfigError, match=r"2\*\*model.levels x model.downsample = 8"):
        build_model(dataclasses.replace(TINY, downsample=2), (36, 36, 4))
