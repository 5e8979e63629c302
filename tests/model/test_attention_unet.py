"""The attention-guided U-Net: exact size, outputs, mixed precision, save/load, bad input, fit."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from braintseg.config import ModelConfig, TrainConfig
from braintseg.errors import ConfigError
from braintseg.model import ResidualUnit, SqueezeExcite, build_model
from braintseg.training.losses import build_loss
from braintseg.training.metrics import build_metrics

TINY = ModelConfig(start_channels=4, levels=2)


def _images(n=2, shape=(32, 32, 4), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(dtype)


@pytest.fixture
def bf16_policy():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def test_default_network_has_the_original_parameter_count():
    model = build_model(ModelConfig(), (192, 152, 4))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert model.count_params() == 10_245_764
    assert trainable == 10_239_108
    # 6,656 non-trainable = BN moving mean + variance over 3,328 normalised channels
    assert model.get_layer("stem").kernel.shape == (2, 2, 4, 64)
    assert model.get_layer("bottleneck").filters == 512
    assert model.output.shape == (None, 192, 152, 4)


def test_layout_follows_levels_and_start_channels():
    model = build_model(ModelConfig(start_channels=8, levels=3), (32, 32, 4))
    assert model.get_layer("stem").filters == 8  # the stem follows start_channels
    assert [model.get_layer(f"down{i}").filters for i in range(3)] == [16, 32, 64]
    assert [model.get_layer(f"dec{i}").filters for i in range(3)] == [8, 16, 32]
    assert all(model.get_layer(f"dec{i}").projection for i in range(3))
    assert not model.get_layer("enc0").projection and not model.get_layer("bottleneck").projection
    assert isinstance(model.get_layer("se0"), SqueezeExcite)
    assert model.get_layer("se2").ratio == 8
    assert model.get_layer("input_noise").stddev == pytest.approx(0.01)


def test_no_noise_layer_when_stddev_is_zero():
    model = build_model(dataclasses.replace(TINY, noise_stddev=0.0), (32, 32, 4))
    assert "input_noise" not in [layer.name for layer in model.layers]


def test_classes_output_is_a_float32_softmax_for_float16_input():
    model = build_model(TINY, (32, 48, 4))
    probs = keras.ops.convert_to_numpy(model(_images(3, (32, 48, 4), np.float16)))
    assert probs.shape == (3, 32, 48, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    assert probs.min() >= 0.0


def test_regions_output_is_three_float32_sigmoids():
    model = build_model(dataclasses.replace(TINY, output="regions"), (32, 32, 4))
    probs = keras.ops.convert_to_numpy(model(_images()))
    assert probs.shape == (2, 32, 32, 3) and probs.dtype == np.float32
    assert 0.0 < probs.min() and probs.max() < 1.0
    assert np.abs(probs.sum(axis=-1) - 1.0).max() > 1e-3  # independent sigmoids, not a softmax


def test_float32_head_under_mixed_bfloat16(bf16_policy):
    model = build_model(TINY, (32, 32, 4))
    assert model.get_layer("enc0").compute_dtype == "bfloat16"
    assert model.get_layer("enc0").conv1.compute_dtype == "bfloat16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    probs = keras.ops.convert_to_numpy(model(_images(dtype=np.float16)))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_save_and_safe_load_give_identical_predictions(tmp_path, norm):
    cfg = dataclasses.replace(TINY, norm=norm, dropout=0.1)
    model = build_model(cfg, (32, 32, 4))
    x = _images()
    # one training step so batch-norm statistics and weights differ from their initial values
    model.compile(optimizer="sgd", loss=build_loss(TrainConfig(), cfg))
    model.fit(x, np.zeros((2, 32, 32), np.uint8), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("enc1"), ResidualUnit)
    assert loaded.get_layer("enc1").norm == norm
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_shape_not_divisible_by_two_to_the_levels_is_a_config_error():
    with pytest.raises(ConfigError, match=r"input shape \(36, 32, 4\).*divisible by .* = 8"):
        build_model(ModelConfig(start_channels=4, levels=3), (36, 32, 4))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "resnet"}, "model.name must be one of attention_unet, unet; received 'resnet'"),
        ({"norm": "layer"}, "model.norm must be one of batch, group, instance"),
        ({"output": "logits"}, "model.output must be one of classes, regions, binary"),
        ({"noise_stddev": -1.0}, "model.noise_stddev >= 0"),
    ],
)
def test_bad_model_config_is_a_config_error(change, message):
    with pytest.raises(ConfigError, match=message):
        build_model(dataclasses.replace(TINY, **change), (32, 32, 4))


def test_train_step_with_integer_labels_and_region_dice_metrics():
    keras.utils.set_random_seed(0)
    model = build_model(TINY, (32, 32, 4))
    model.compile(
        optimizer=keras.optimizers.SGD(0.008, momentum=0.9),
        loss=build_loss(TrainConfig(), TINY),
        metrics=build_metrics(TINY),
    )
    before = [w.copy() for w in model.get_weights()]
    x = _images(4)
    y = np.random.default_rng(1).integers(0, 4, size=(4, 32, 32)).astype(np.uint8)
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0, validation_data=(x, y))
    logs = {k: v[-1] for k, v in history.history.items()}
    assert np.isfinite(logs["loss"]) and np.isfinite(logs["val_loss"])
    assert {"val_dice_wt", "val_dice_tc", "val_dice_et", "val_dice_mean"} <= set(logs)
    assert 0.0 <= logs["val_dice_et"] <= 1.0
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True)]
    assert sum(changed) > len(changed) // 2
